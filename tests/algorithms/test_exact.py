"""Every algorithm × grid × case: forward and both gradients equal single-device lax (fp32).

Tolerance: relative max error 2e-5 (reductions of at most 8·7·7 = 392 terms, accumulated in a
different order than the reference's).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from tests.algorithms.cases import CASES, GRIDS, K_OUT, X_SHAPE, case_id, fast_algorithm, mesh_kwargs
from tests.utils import assert_close, first_fast, loss_and_grads, numpy_conv, random_inputs, reference_conv

# make test runs every sixth slow case of each sweep below; make test-sweep the rest (tests/conftest.py).
SWEEP_KEEP = 6

RTOL = 2e-5

# Every case runs on every algorithm; on each algorithm's grids they alternate (grid j takes the cases
# of parity j), except the two hardest (explicit asymmetric padding with an even kernel, and a 7×7 kernel
# dilated to reach across several blocks), which run on every grid. Keeps `make test` fast.
# `make test-fast` runs the two hard cases on the first grid of each algorithm (the first of them for
# filter+replicas, and no case of the other replicated variants).
HARD = (3, 7)
PARAMS = [
    pytest.param(
        alg,
        grid,
        case,
        id=f"{alg}-{'x'.join(map(str, grid))}-{case_id(case)}",
        marks=()
        if j == 0 and i in (HARD if "+" not in alg else HARD[:1]) and fast_algorithm(alg)
        else pytest.mark.slow,
    )
    for alg, grids in GRIDS.items()
    for j, grid in enumerate(grids)
    for i, case in enumerate(CASES)
    if (i + j) % 2 == 0 or i in HARD
]


@functools.cache
def _reference_loss_and_grads(strides, padding, dilation):
    """The reference program of one case, jitted once: grids sharing a case share its compilation."""
    return loss_and_grads(
        functools.partial(reference_conv, strides=strides, padding=padding, dilation=dilation)
    )


@pytest.mark.parametrize(("algorithm", "grid", "case"), PARAMS)
def test_forward_and_gradients_match_single_device(algorithm, grid, case):
    strides, padding, dilation, (r, s) = case
    mesh = jaxcnn.make_mesh(**mesh_kwargs(grid))
    x, kernel = random_inputs(sum(grid) + r * 7 + s, X_SHAPE, (r, s, X_SHAPE[3], K_OUT))
    kw = dict(strides=strides, padding=padding, dilation=dilation)
    (_, y), (gx, gk) = loss_and_grads(lambda a, b: jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, **kw))(
        x, kernel
    )
    (_, y_ref), (gx_ref, gk_ref) = _reference_loss_and_grads(**kw)(x, kernel)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    assert_close(gk, gk_ref, RTOL, "dkernel")


@pytest.mark.parametrize(
    ("algorithm", "grid", "strides", "pads", "dilation", "rs"),
    first_fast(
        [
            ("3d", (2, 1, 1, 2, 2), (1, 1), ((1, 1), (1, 1)), (1, 1), (3, 3)),
            ("spatial", (1, 2, 2, 1, 1), (2, 3), ((0, 2), (1, 0)), (2, 1), (3, 4)),
            ("2d", (1, 2, 2, 2, 1), (2, 2), ((3, 3), (3, 3)), (1, 1), (7, 7)),
            ("2.5d", (1, 2, 1, 2, 2), (1, 2), ((0, 0), (2, 1)), (3, 2), (2, 2)),
        ],
        keep=2,
    ),
)
def test_matches_numpy_loop(algorithm, grid, strides, pads, dilation, rs):
    """An independent reference: the convolution's definition as a NumPy loop in float64."""
    mesh = jaxcnn.make_mesh(**mesh_kwargs(grid))
    x, kernel = random_inputs(7, (2, 12, 10, 4), (*rs, 4, 4))
    y = jaxcnn.conv2d(
        x, kernel, mesh=mesh, algorithm=algorithm, strides=strides, padding=pads, dilation=dilation
    )
    expected = numpy_conv(np.asarray(x), np.asarray(kernel), strides, pads, dilation)
    assert_close(y, expected, 1e-5, "y vs numpy")


@pytest.mark.parametrize(
    ("algorithm", "grid", "x_shape", "k_out"),
    first_fast(
        [
            ("3d", (1, 2, 1, 2, 2), (3, 7, 5, 5), 3),  # everything uneven at once
            ("spatial", (1, 2, 2, 1, 1), (2, 7, 7, 3), 4),  # 7×7 map on 2-way h and w splits
            ("data", (2, 1, 1, 1, 1), (3, 6, 6, 3), 4),  # 3 images on 2-way n
            ("channel", (1, 1, 1, 1, 2), (2, 6, 6, 3), 5),  # 3 input / 5 output channels on 2-way c
            ("filter", (1, 1, 1, 4, 1), (2, 6, 6, 3), 5),  # 5 output channels on 4-way k
            ("2.5d", (2, 1, 2, 1, 2), (3, 5, 9, 3), 7),
            ("2d", (1, 1, 2, 4, 1), (2, 6, 5, 6), 6),
        ]
    ),
)
def test_uneven_shapes_are_exact(algorithm, grid, x_shape, k_out):
    """Uneven shards are zero-padded internally; the result is exact (forward and gradients)."""
    mesh = jaxcnn.make_mesh(**mesh_kwargs(grid))
    x, kernel = random_inputs(3, x_shape, (3, 3, x_shape[3], k_out))
    for strides in (1, 2):
        kw = dict(strides=strides, padding="SAME")
        (_, y), (gx, gk) = loss_and_grads(
            lambda a, b, kw=kw: jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, **kw)
        )(x, kernel)
        (_, y_ref), (gx_ref, gk_ref) = loss_and_grads(lambda a, b, kw=kw: reference_conv(a, b, **kw))(
            x, kernel
        )
        assert_close(y, y_ref, RTOL, f"y stride {strides}")
        assert_close(gx, gx_ref, RTOL, f"dx stride {strides}")
        assert_close(gk, gk_ref, RTOL, f"dkernel stride {strides}")


@pytest.mark.parametrize("algorithm", first_fast(["channel", "3d", "2.5d", "2d"], one_argument=True))
def test_bfloat16_inputs_with_float32_accumulation(algorithm):
    grid = {"3d": (2, 1, 1, 2, 2), "2.5d": (1, 2, 1, 2, 2), "2d": (2, 2, 1, 2, 1), "channel": (1, 1, 1, 1, 8)}
    mesh = jaxcnn.make_mesh(**mesh_kwargs(grid[algorithm]))
    x, kernel = random_inputs(5, (4, 8, 8, 16), (3, 3, 16, 8), jnp.bfloat16)
    y = jaxcnn.conv2d(x, kernel, mesh=mesh, algorithm=algorithm, preferred_element_type=jnp.float32)
    assert y.dtype == jnp.float32
    # Same bf16 inputs, exact f32 arithmetic: only summation order differs.
    expected = reference_conv(x.astype(jnp.float32), kernel.astype(jnp.float32))
    assert_close(y, expected, 1e-5, "bf16 in, f32 out")
    y16 = jaxcnn.conv2d(x, kernel, mesh=mesh, algorithm=algorithm)
    assert y16.dtype == jnp.bfloat16
    assert_close(y16, expected, 1e-2, "bf16 out (one final rounding)")
    gx, gk = jax.grad(
        lambda a, b: jnp.sum(
            jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, preferred_element_type=jnp.float32) ** 2
        ),
        argnums=(0, 1),
    )(x, kernel)
    rx, rk = jax.grad(
        lambda a, b: jnp.sum(reference_conv(a, b, preferred_element_type=jnp.float32) ** 2), argnums=(0, 1)
    )(x, kernel)
    assert gx.dtype == gk.dtype == jnp.bfloat16
    assert_close(gx, rx, 2e-2, "bf16 dx")
    assert_close(gk, rk, 2e-2, "bf16 dkernel")


def test_any_input_sharding_and_jit_reuse():
    """Inputs arriving with a foreign sharding are resharded; repeated calls do not recompile."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from tests.utils import count_compilations

    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    x0, k0 = random_inputs(11, (4, 8, 8, 8), (3, 3, 8, 8))
    expected = reference_conv(x0, k0)  # on unsharded inputs
    x = jax.device_put(x0, NamedSharding(mesh, P(None, "n", "k")))  # nothing like 3d's layout
    kernel = jax.device_put(k0, NamedSharding(mesh, P(None, None, "n")))
    step = jax.jit(lambda a, b: jaxcnn.conv2d(a, b, mesh=mesh, algorithm="3d"))
    assert_close(step(x, kernel), expected, RTOL, "resharded inputs, jit")
    assert_close(jaxcnn.conv2d(x, kernel, mesh=mesh, algorithm="3d"), expected, RTOL, "eager")
    with count_compilations() as compiled:
        for _ in range(3):
            step(x, kernel).block_until_ready()
    assert compiled[0] == 0
    half = x[:2]
    with count_compilations() as compiled:  # the counter does count: a new batch size compiles
        step(half, kernel).block_until_ready()
    assert compiled[0] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["2d", "3d"])
def test_regression_gspmd_16894_batch_and_output_channel_split_stride_2(algorithm):
    """jax#16894: GSPMD's conv with x split by batch and the kernel by output channel, stride 2,
    returned wrong values. jaxcnn must be exact for exactly those input shardings."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jaxcnn.make_mesh(n=4, k=2)
    x0, k0 = random_inputs(16894, (8, 8, 8, 64), (3, 3, 64, 32))
    kw = dict(strides=2, padding=((1, 1), (1, 1)))
    expected = reference_conv(x0, k0, **kw)
    x = jax.device_put(x0, NamedSharding(mesh, P(("n", "k"))))  # batch split over all devices
    kernel = jax.device_put(k0, NamedSharding(mesh, P(None, None, None, ("n", "k"))))  # out channels
    y = jax.jit(lambda a, b: jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, **kw))(x, kernel)
    assert_close(y, expected, RTOL, "jax#16894 shardings")
    gx, gk = jax.grad(
        lambda a, b: jnp.sum(jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, **kw) ** 2), argnums=(0, 1)
    )(x, kernel)
    rx, rk = jax.grad(lambda a, b: jnp.sum(reference_conv(a, b, **kw) ** 2), argnums=(0, 1))(x0, k0)
    assert_close(gx, rx, RTOL, "dx")
    assert_close(gk, rk, RTOL, "dkernel")
