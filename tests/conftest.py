"""Test session setup, before JAX initialises: 8 virtual CPU devices and fast compilation.

Compilation dominates the suite, and most of it is XLA generating code that runs on arrays of a few
kilobytes. Two settings make it cheaper:

- ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (JAX's ``jax_disable_most_optimizations``: XLA backend
  optimisation level 0 and no expensive LLVM passes, as Flax's tests do) compiles 1.3-2x faster;
- ``--xla_cpu_use_fusion_emitters=false`` (XLA:CPU's older loop emitters instead of its MLIR fusion
  emitters): a third less CPU time again. ``make test`` went from 1,347 to 892 CPU-seconds (690 to 451 s
  on 2 cores, three workers) with it and, in the same run, the digits read without scikit-learn.

They change the machine code, and the older emitters leave single instructions unwrapped (XLA then
assigns temporaries a few hundred bytes differently); they never change the collectives that the meter
reads (``tests/test_measure.py::test_fast_compilation_leaves_what_the_meter_reads_unchanged`` and
``..._a_train_steps_meter_reading_unchanged`` check it, temporaries within 5%). Being environment
variables, they also reach the subprocesses tests start (``tests/fake_devices.py``, the CLIs). Run
``JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test`` for XLA's defaults (both settings off).

One persistent compilation cache per test run: ``JAX_COMPILATION_CACHE_DIR`` is a fresh temporary
directory that the xdist workers and the subprocesses tests start inherit (removed at exit by the process
that made it), so a program compiled by one test (the same config trained by several fault tests, a run
and its resumption) is loaded, not compiled again, by the next. A hit returns the executable the
compiler made for the same program and options, so no verdict depends on it. It keeps every program,
not only those that took a second to compile (JAX's default ``jax_persistent_cache_min_compile_time_secs``):
a CLI run started by a test compiles dozens of small programs (the first checkpoint's replica slices
alone are ~50), and loading them is ~2.5 s faster per run. Tests that read the compiler's own log
(``tests/runner/test_whole_step.py``) compile without it. A ``JAX_COMPILATION_CACHE_DIR`` already set
(e.g. a directory kept between runs) is used as it is. JAX writes an entry in place rather than by
renaming a finished file, so a process can read one while another writes it: it warns and compiles the
program itself (the same executable). ``PYTHONWARNINGS`` silences that one warning, which would
otherwise land on a CLI's stderr that a test reads line by line.

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

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ["XLA_FLAGS"] = " ".join(
    [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    + ["--xla_force_host_platform_device_count=8"]
    # the older CPU emitters where JAX_DISABLE_MOST_OPTIMIZATIONS is on and XLA_FLAGS does not choose
    + ["--xla_cpu_use_fusion_emitters=false"]
    * (
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
        and "--xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", "")
    )
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # 8-device meshes: see above
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the xdist controller's, inherited by the workers
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxcnn-test-compilation-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# A cache entry read while another process writes it: a warning, and a compile (see above).
os.environ["PYTHONWARNINGS"] = ",".join(
    filter(
        None, [os.environ.get("PYTHONWARNINGS"), "ignore:Error reading persistent compilation cache entry"]
    )
)
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

from _pytest.nodeid import coerce_node_id  # noqa: E402
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
    _group_on_one_worker(config, items)


def _group_on_one_worker(config, items) -> None:
    """``--dist loadgroup``: the tests marked ``xdist_group(name)`` run on one worker. pytest-xdist 3.8
    marks them by rewriting ``item._nodeid``, which pytest 9 no longer reads; this sets the node id
    pytest does read (``item._id``) to ``<id>@<name>``, the suffix xdist's scheduler groups by. Tests
    that share a run made once per test run (``tests.utils.once_per_test_run``) then wait for no other
    worker, and their worker is never idle on the lock."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
