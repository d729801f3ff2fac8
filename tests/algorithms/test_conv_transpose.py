"""``jaxcnn.conv_transpose``: every algorithm × grid, forward and both gradients equal
``lax.conv_transpose`` (NHWC / HWIO, fp32), including grids that split h and w (halo exchange of the
undilated input rows each block's dilated window contains)."""

from __future__ import annotations

import functools

import pytest
from jax import lax

import jaxcnn
from jaxcnn.geometry import conv_geometry, halo_plan
from tests.algorithms.cases import GRIDS, fast_algorithm, mesh_kwargs
from tests.utils import assert_close, loss_and_grads, random_inputs

# make test runs every third slow case of each sweep below; make test-sweep the rest (tests/conftest.py).
SWEEP_KEEP = 3

RTOL = 2e-5
X_SHAPE = (2, 5, 6, 8)  # N, H, W, C: uneven splits on every spatial grid
K_OUT = 6

# (strides, padding, dilation, (R, S), transpose_kernel): strides 1..3 (and non-square), SAME / VALID /
# explicit asymmetric padding, dilation 1 / 2, kernels smaller and larger than the stride.
CASES: list[tuple] = [
    (1, "SAME", 1, (3, 3), False),
    (2, "SAME", 1, (3, 3), True),
    (2, "VALID", 2, (3, 2), False),
    (3, ((1, 2), (0, 3)), 1, (4, 2), True),
    (3, "SAME", 2, (2, 3), False),
    ((2, 3), "VALID", (1, 2), (3, 3), True),
    (3, "VALID", 1, (1, 1), False),
    (2, ((0, 0), (2, 1)), 2, (5, 3), True),
]


def _case_id(case: tuple) -> str:
    s, p, d, rs, tk = case
    pad = p if isinstance(p, str) else "x".join(f"{a}-{b}" for a, b in p)
    return f"s{s}-{pad}-d{d}-k{rs[0]}x{rs[1]}{'-T' if tk else ''}".replace(" ", "").replace(",", "_")


def _params() -> list:
    """One case per (algorithm, grid), rotating through CASES; grids splitting h or w take a second.
    An algorithm's first case is fast (make test-fast), the others slow."""
    params, g = [], 0
    for alg, grids in GRIDS.items():
        first = True
        for grid in grids:
            picks = [g % len(CASES)] + ([(g + 3) % len(CASES)] if grid[1] * grid[2] > 1 else [])
            for i in picks:
                params.append(
                    pytest.param(
                        alg,
                        grid,
                        CASES[i],
                        id=f"{alg}-{'x'.join(map(str, grid))}-{_case_id(CASES[i])}",
                        marks=() if first and fast_algorithm(alg) else pytest.mark.slow,
                    )
                )
                first = False
            g += 1
    return params


@functools.cache
def _reference(strides, padding, dilation, transpose_kernel):
    def conv(x, kernel):
        return lax.conv_transpose(
            x,
            kernel,
            jaxcnn.geometry._pair(strides, "strides"),
            padding,
            rhs_dilation=jaxcnn.geometry._pair(dilation, "dilation"),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            transpose_kernel=transpose_kernel,
            precision=lax.Precision.HIGHEST,
        )

    return loss_and_grads(conv)


@pytest.mark.parametrize(("algorithm", "grid", "case"), _params())
def test_forward_and_gradients_match_lax_conv_transpose(algorithm, grid, case):
    strides, padding, dilation, (r, s), transpose_kernel = case
    mesh = jaxcnn.make_mesh(**mesh_kwargs(grid))
    channels = (K_OUT, X_SHAPE[3]) if transpose_kernel else (X_SHAPE[3], K_OUT)
    x, kernel = random_inputs(sum(grid) + 7 * r + s, X_SHAPE, (r, s, *channels))
    kw = dict(strides=strides, padding=padding, dilation=dilation, transpose_kernel=transpose_kernel)
    (_, y), (gx, gk) = loss_and_grads(
        lambda a, b: jaxcnn.conv_transpose(a, b, mesh=mesh, algorithm=algorithm, **kw)
    )(x, kernel)
    (_, y_ref), (gx_ref, gk_ref) = _reference(strides, padding, dilation, transpose_kernel)(x, kernel)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    assert_close(gk, gk_ref, RTOL, "dkernel")


@pytest.mark.parametrize("sigma", [1, 2, 3, 4])
@pytest.mark.parametrize("parts", [2, 3, 5])
def test_halo_plan_windows_cover_each_block_exactly(sigma, parts):
    """Pure geometry: with input dilation σi, every block's undilated window, dilated and padded by
    ``local_pad``, is exactly the dilated rows its ``Bo`` outputs read (so the local convolution is
    exact), for many sizes, kernels, dilations and paddings."""
    for size in (1, 4, 7):
        for kernel, dil in ((1, 1), (3, 1), (2, 3), (5, 2)):
            for pad in ((0, 0), (2, 1), (4, 5)):
                if (size - 1) * sigma + 1 + sum(pad) < dil * (kernel - 1) + 1:
                    continue  # no output
                geom = conv_geometry(
                    (1, size, 1, 1), (kernel, 1, 1, 1), 1, (pad, (0, 0)), (dil, 1), input_dilation=(sigma, 1)
                )
                dim = geom.h
                plan = halo_plan(dim, parts)
                assert plan.window >= 1 and plan.out_block % sigma == 0 and plan.out_block * parts >= dim.out
                lo_pad, hi_pad = plan.local_pad
                assert 0 <= lo_pad < sigma and 0 <= hi_pad < sigma
                assert lo_pad + (plan.window - 1) * sigma + 1 + hi_pad == dim.window(plan.out_block)
                for b in range(parts):
                    first = b * plan.in_block - plan.left + plan.start + b * plan.step  # undilated row
                    assert first * sigma - lo_pad == b * plan.out_block - dim.pad[0]


def test_input_dilation_needs_stride_one():
    with pytest.raises(ValueError, match="needs strides 1"):
        conv_geometry((1, 5, 5, 1), (3, 3, 1, 1), (2, 1), "SAME", 1, input_dilation=(2, 1))
    conv_geometry((1, 5, 5, 1), (3, 3, 1, 1), (1, 2), "SAME", 1, input_dilation=(2, 1))


def test_bad_arguments_raise():
    mesh = jaxcnn.make_mesh(n=2)
    x, kernel = random_inputs(0, X_SHAPE, (3, 3, X_SHAPE[3], K_OUT))
    kw = dict(mesh=mesh, algorithm="data", strides=2)
    with pytest.raises(ValueError, match="non-negative"):
        jaxcnn.conv_transpose(x, kernel, padding=((-1, 0), (0, 0)), **kw)
    with pytest.raises(ValueError, match="padding must be"):
        jaxcnn.conv_transpose(x, kernel, padding="FULL", **kw)
    with pytest.raises(ValueError, match="strides"):
        jaxcnn.conv_transpose(x, kernel, mesh=mesh, algorithm="data", strides=0, padding="SAME")
    with pytest.raises(ValueError, match="must equal"):
        jaxcnn.conv_transpose(x, kernel, padding="SAME", transpose_kernel=True, **kw)
    with pytest.raises(ValueError, match="does not use mesh axis"):
        jaxcnn.conv_transpose(
            x, kernel, mesh=jaxcnn.make_mesh(k=2), algorithm="data", strides=2, padding="SAME"
        )
