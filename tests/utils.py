"""Shared test helpers: references, tolerances, a recompilation counter, the slow marker, work done once
per test run."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def first_fast(cases, keep: int = 1, *, one_argument: bool = False) -> list:
    """``cases`` for ``pytest.mark.parametrize``: the first ``keep`` run in ``make test-fast``, the
    others are marked ``slow`` (``make test`` runs all of them).

    Args:
      cases: tuples of arguments, or single values with ``one_argument=True``.
      keep: how many (from the front) stay unmarked.
      one_argument: the parametrization has one argument name (a tuple case is one value).
    """
    return [
        case if i < keep else pytest.param(*((case,) if one_argument else case), marks=pytest.mark.slow)
        for i, case in enumerate(cases)
    ]


def reference_conv(
    x, kernel, strides=1, padding="SAME", dilation=1, preferred_element_type=None, feature_group_count=1
):
    """Single-device ``lax.conv_general_dilated`` at highest precision (the reference)."""
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    return lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=DIMENSION_NUMBERS,
        feature_group_count=feature_group_count,
        precision=lax.Precision.HIGHEST,
        preferred_element_type=preferred_element_type,
    )


def numpy_conv(x: np.ndarray, kernel: np.ndarray, strides, pads, dilation) -> np.ndarray:
    """Direct loop over the definition Out[n,p,q,k] = Σ In[n, σp+dr-lo, σq+ds-lo, c]·Ker[r,s,c,k]."""
    n, h, w, c = x.shape
    r, s, _, k = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    (plo, phi), (qlo, qhi) = pads
    xp = np.zeros((n, h + plo + phi, w + qlo + qhi, c), np.float64)
    xp[:, plo : plo + h, qlo : qlo + w] = x
    ho = (h + plo + phi - dh * (r - 1) - 1) // sh + 1
    wo = (w + qlo + qhi - dw * (s - 1) - 1) // sw + 1
    out = np.zeros((n, ho, wo, k), np.float64)
    for p, q in itertools.product(range(ho), range(wo)):
        for a, b in itertools.product(range(r), range(s)):
            out[:, p, q] += xp[:, sh * p + dh * a, sw * q + dw * b] @ kernel[a, b]
    return out


def assert_close(actual, expected, rtol: float, what: str = "") -> None:
    """Max-abs error relative to max |expected| ≤ rtol (robust to near-zero entries)."""
    actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    expected = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(np.max(np.abs(expected)), 1e-30)
    err = np.max(np.abs(actual - expected)) / scale
    assert err <= rtol, f"{what}: relative max error {err:.3e} > {rtol:.1e}"


def leaves_by_path(tree) -> dict[str, np.ndarray]:
    """The leaves on the host as plain arrays, by path (a mismatch names the parameter or statistic;
    no mesh metadata is left to differ between trees built on different meshes)."""
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def relative_errors(actual, expected) -> dict[str, float]:
    """Per leaf, by path: ``‖a − b‖₂ / ‖b‖₂`` over the whole tensor (float64 on the host).

    A leaf whose expected norm is zero gets ``0.0`` if ``a`` is zero too, else ``inf``. Shapes and
    tree structures must match.
    """
    actual_leaves, expected_leaves = leaves_by_path(actual), leaves_by_path(expected)
    assert list(actual_leaves) == list(expected_leaves), "tree structures differ"
    errors = {}
    for path, a in actual_leaves.items():
        a, b = a.astype(np.float64), expected_leaves[path].astype(np.float64)
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        diff, norm = np.linalg.norm(a - b), np.linalg.norm(b)
        errors[path] = float(diff / norm) if norm else (0.0 if not diff else np.inf)
    return errors


def assert_trees_relatively_close(actual, expected, rtol: float, what: str = "") -> None:
    """Every leaf within ``rtol`` in relative norm (:func:`relative_errors`).

    The comparison for results that went through different reduction orders (process counts, meshes,
    placements) for more than one step: each tensor as a whole, so one element that rounding and Adam
    pushed a little further than the others does not decide the verdict, while a missing or doubled
    reduction (an error of order 1) still does. Each call site states the spread it measured.
    """
    errors = relative_errors(actual, expected)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, (
        f"{what}: {worst} relative norm error {errors[worst]:.3e} > {rtol:.1e} "
        f"({sum(e > rtol for e in errors.values())} of {len(errors)} leaves over)"
    )


def assert_same_loss_and_grads(conv, reference, x, kernel, rtol: float = 5e-5) -> None:
    """``conv(x, kernel)`` and ``reference(x, kernel)`` give the same output, the same loss
    ``Σ cos(y)`` and the same gradients w.r.t. x and the kernel (jitted), within ``rtol``."""

    def loss_and_grads(f):
        def loss(a, b):
            y = f(a, b)
            return jnp.sum(jnp.cos(y)), y

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    (value, y), (gx, gk) = loss_and_grads(conv)(x, kernel)
    (ref, y_ref), (rx, rk) = loss_and_grads(reference)(x, kernel)
    assert_close(y, y_ref, rtol, "y")
    assert_close(value, ref, rtol, "loss")
    assert_close(gx, rx, rtol, "dx")
    assert_close(gk, rk, rtol, "dkernel")


def random_inputs(seed: int, x_shape, kernel_shape, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape) / np.sqrt(np.prod(kernel_shape[:3])), dtype)
    return x, kernel


#: The event JAX records (``jax.monitoring``) each time it hands a program to XLA to compile.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
#: The event JAX records each time it loads a program from the persistent compilation cache instead
#: (tests/conftest.py gives the test run one).
PERSISTENT_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def count_compilations() -> Iterator[list[int]]:
    """Counts XLA compilations inside the block: ``with count_compilations() as n: ...; n[0]``.

    Listens to JAX's public compile events (``jax.monitoring``); a program loaded from the persistent
    compilation cache counts as compiled (it was lowered and would have been compiled without the
    cache); a program found in JAX's in-memory caches is not compiled again and not counted.
    """
    counter = [0]

    def compiled(event: str, duration_secs: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            counter[0] += 1

    def loaded(event: str, **kwargs) -> None:
        if event == PERSISTENT_CACHE_HIT_EVENT:
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(compiled)
    jax.monitoring.register_event_listener(loaded)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(compiled)
        jax.monitoring.unregister_event_listener(loaded)


def loss_and_grads(conv):
    """``jit`` of ``(x, kernel) -> ((sum(sin(conv(x, kernel))), y), (dx, dkernel))``: one program checks the
    forward value and both gradients of a convolution against a reference."""

    def loss(x, kernel):
        y = conv(x, kernel)
        return jnp.sum(jnp.sin(y)), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def once_per_test_run(tmp_path_factory, name: str, make: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """The directory ``out`` that ``make(out)`` fills, made once per test run: the first xdist worker to
    ask makes it (under a file lock in the temporary directory the workers share), the others wait for
    it and use it. A ``make`` that raises leaves nothing behind, and the next worker to ask tries again.

    For session fixtures whose work (a training run, a subprocess) several tests share: a session
    fixture alone is made once per worker, and ``xdist_group`` does not keep tests on one worker here
    (pytest-xdist 3.8 sets the group through ``item._nodeid``, which pytest 9 no longer reads).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # <basetemp>/popen-gw<i> -> <basetemp>, shared by the workers
    out = root / f"once-{name}"
    with open(root / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (out / ".made").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            make(out)
            (out / ".made").touch()
    return out
