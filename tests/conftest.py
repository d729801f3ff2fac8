"""Test session setup, before JAX initialises: 8 virtual CPU devices and fast compilation.

Compilation dominates the suite, and most of it is LLVM optimising code that runs on arrays of a few
kilobytes. ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (JAX's ``jax_disable_most_optimizations``: XLA backend
optimisation level 0 and no expensive LLVM passes, as Flax's tests do) compiles 1.3-2x faster. It only
changes the machine code: the optimised HLO that the meter reads and ``memory_analysis()`` are the same
(``tests/test_measure.py::test_fast_compilation_leaves_hlo_and_memory_unchanged`` checks it). Being an
environment variable, it also reaches the subprocesses tests start (``tests/fake_devices.py``, the CLIs).
Run ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test`` for fully optimised programs.

One persistent compilation cache per test run: ``JAX_COMPILATION_CACHE_DIR`` is a fresh temporary
directory that the xdist workers and the subprocesses tests start inherit (removed at exit by the process
that made it), so a program compiled by one test (the same config trained by several fault tests, a run
and its resumption) is loaded, not compiled again, by the next. A hit returns the executable the
compiler made for the same program and options, so no verdict depends on it. It keeps every program,
not only those that took a second to compile (JAX's default ``jax_persistent_cache_min_compile_time_secs``):
a CLI run started by a test compiles dozens of small programs (the first checkpoint's replica slices
alone are ~50), and loading them is ~2.5 s faster per run. Tests that read the compiler's own log
(``tests/runner/test_whole_step.py``) compile without it. A ``JAX_COMPILATION_CACHE_DIR`` already set
(e.g. a directory kept between runs) is used as it is.

No timing profile: ``JAXCNN_PROFILE_DIR`` is an empty temporary directory (``jaxcnn calibrate``'s profile
of this machine, if its user made one, would make ``auto`` plan by time and change what tests see).

The suite runs on the CPU platform even where there is an accelerator: its meshes need 8 devices of one
platform (a 1-GPU machine has one), and its byte counts and numerics are pinned to the CPU backend. The
Makefile sets no platform (``make train`` uses the GPU/TPU); ``tests/test_accelerator.py`` (``make
test-accelerator``) runs its smoke test on the accelerator in a subprocess without ``JAX_PLATFORMS``.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    + ["--xla_force_host_platform_device_count=8"]
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # 8-device meshes: see above
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the xdist controller's, inherited by the workers
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxcnn-test-compilation-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# No timing profile unless a test writes one: a profile this machine's user calibrated (in ~/.cache) must
# not change a verdict (auto plans by time where there is one). Tests that need one write their own.
if not os.environ.get("JAXCNN_TEST_PROFILE_DIR"):
    os.environ["JAXCNN_TEST_PROFILE_DIR"] = tempfile.mkdtemp(prefix="jaxcnn-test-profiles-")
    atexit.register(shutil.rmtree, os.environ["JAXCNN_TEST_PROFILE_DIR"], ignore_errors=True)
os.environ["JAXCNN_PROFILE_DIR"] = os.environ["JAXCNN_TEST_PROFILE_DIR"]

import jax

jax.config.update("jax_enable_x64", False)
# Start the backend now, on 8 devices: a CLI under test that finds JAX not yet started sets its own
# device count (``jaxcnn plan --measure`` wants 16), which would then hold for the rest of the worker.
assert len(jax.devices()) == 8, jax.devices()

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    """Sweeps: a module that sets ``SWEEP_KEEP = k`` runs, in ``make test``, every k-th of each test
    function's ``slow`` cases (by position: cases are listed algorithm by algorithm, so every
    algorithm keeps some); the others are marked ``sweep`` and run in ``make test-sweep`` (and
    ``pytest tests``, which selects no marker). Cases not marked ``slow`` always run."""
    seen: dict[tuple[str, str], int] = {}
    for item in items:
        keep = getattr(item.module, "SWEEP_KEEP", None)
        if not keep or item.get_closest_marker("slow") is None or not hasattr(item, "callspec"):
            continue
        key = (item.module.__name__, item.originalname)
        index = seen.get(key, 0)
        seen[key] = index + 1
        if index % keep:
            item.add_marker("sweep")
