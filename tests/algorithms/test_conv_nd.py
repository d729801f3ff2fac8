"""``jaxcnn.conv`` in 1-D and 3-D: every algorithm on 8-device grids that split depth over ``d`` (3-D) or
the length over ``w`` (1-D), forward and both gradients equal ``lax.conv_general_dilated`` with
``("NWC", "WIO", "NWC")`` / ``("NDHWC", "DHWIO", "NDHWC")`` (fp32, relative max error 2e-5); grouped
and depthwise 3-D layers; ``jaxcnn.conv_transpose`` in 1-D and 3-D against ``lax.conv_transpose``; the
errors for a wrong rank and for a mesh axis the layer's rank lacks.

Inputs have sizes the splits do not divide (zero-padded blocks), kernels include even and non-cubic
ones, strides / dilations / SAME / VALID / explicit asymmetric padding vary per case.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn.geometry import DIMENSION_NUMBERS, per_dim
from tests.utils import assert_close, first_fast, loss_and_grads, random_inputs

# make test runs every fifth slow case of each sweep below; make test-sweep the rest (tests/conftest.py).
SWEEP_KEEP = 5

RTOL = 2e-5

X_3D = (2, 7, 6, 5, 4)  # N, D, H, W, C: d=2 and w=2 leave a zero-padded block
K_3D = 6
X_1D = (4, 13, 6)  # N, W, C: w=2, 4 leave zero-padded blocks
K_1D = 5

# Grids per algorithm (8 devices each). 3-D grids split d (and h, w where the algorithm may).
GRIDS_3D: dict[str, list[dict[str, int]]] = {
    "spatial": [dict(d=2, h=2, w=2), dict(d=4, w=2)],
    "3d": [dict(d=2, k=2, c=2), dict(n=2, d=2, h=2)],
    "2d": [dict(d=2, h=2, k=2)],
    "2.5d": [dict(d=2, k=2, c=2)],
    "filter": [dict(d=2, k=4)],
    "channel": [dict(d=2, w=2, c=2)],
    "data": [dict(n=8)],
}
GRIDS_1D: dict[str, list[dict[str, int]]] = {
    "spatial": [dict(n=2, w=4), dict(w=8)],
    "3d": [dict(w=2, k=2, c=2)],
    "2d": [dict(n=2, w=2, k=2)],
    "2.5d": [dict(w=2, k=2, c=2)],
    "filter": [dict(w=2, k=4)],
    "channel": [dict(w=2, c=4)],
    "data": [dict(n=8)],
}

# (strides, padding, dilation, window)
CASES_3D: list[tuple] = [
    (1, "SAME", 1, (3, 3, 3)),
    ((2, 1, 2), "VALID", (1, 2, 1), (2, 3, 2)),
    (1, ((1, 2), (0, 1), (2, 0)), 2, (2, 2, 3)),
    (3, "SAME", 1, (4, 1, 3)),
    (2, "SAME", (2, 1, 1), (3, 2, 2)),
]
CASES_1D: list[tuple] = [
    (1, "SAME", 1, (3,)),
    (2, "VALID", 2, (4,)),
    (3, ((2, 1),), 1, (5,)),
    (1, "SAME", 3, (2,)),
]


def _id(grid: dict[str, int], case: tuple) -> str:
    s, p, d, window = case
    pad = p if isinstance(p, str) else "x".join(f"{a}-{b}" for a, b in p)
    grid_id = "-".join(f"{a}{n}" for a, n in grid.items())
    return f"{grid_id}-s{s}-{pad}-d{d}-k{'x'.join(map(str, window))}".replace(" ", "").replace(",", "_")


def _params() -> list:
    """Every (rank, algorithm, grid), each with one case rotating through its rank's cases; the 3-D
    grid splitting d, h and w at once (halo edges and corners) and 1-D spatial run in test-fast."""
    params, i = [], 0
    for rank, grids, cases in ((3, GRIDS_3D, CASES_3D), (1, GRIDS_1D, CASES_1D)):
        for alg, alg_grids in grids.items():
            for grid in alg_grids:
                case = cases[i % len(cases)]
                fast = (rank, alg, grid) in (
                    (3, "spatial", GRIDS_3D["spatial"][0]),
                    (1, "spatial", GRIDS_1D["spatial"][0]),
                )
                params.append(
                    pytest.param(
                        rank,
                        alg,
                        grid,
                        case,
                        id=f"{rank}d-{alg}-{_id(grid, case)}",
                        marks=() if fast else pytest.mark.slow,
                    )
                )
                i += 1
    return params


@functools.cache
def _reference(rank: int, strides, padding, dilation, groups: int = 1):
    def conv(x, kernel):
        return lax.conv_general_dilated(
            x,
            kernel,
            per_dim(strides, rank, "strides"),
            padding,
            rhs_dilation=per_dim(dilation, rank, "dilation"),
            dimension_numbers=DIMENSION_NUMBERS[rank],
            feature_group_count=groups,
            precision=lax.Precision.HIGHEST,
        )

    return loss_and_grads(conv)


def _check(rank, algorithm, grid, x_shape, k_out, strides, padding, dilation, window, groups=1, seed=0):
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(seed, x_shape, (*window, x_shape[-1] // groups, k_out))
    kw = dict(strides=strides, padding=padding, dilation=dilation, feature_group_count=groups)
    (_, y), (gx, gk) = loss_and_grads(lambda a, b: jaxcnn.conv(a, b, mesh=mesh, algorithm=algorithm, **kw))(
        x, kernel
    )
    (_, y_ref), (gx_ref, gk_ref) = _reference(rank, strides, padding, dilation, groups)(x, kernel)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    assert_close(gk, gk_ref, RTOL, "dkernel")


@pytest.mark.parametrize(("rank", "algorithm", "grid", "case"), _params())
def test_forward_and_gradients_match_lax(rank, algorithm, grid, case):
    strides, padding, dilation, window = case
    x_shape, k_out = (X_3D, K_3D) if rank == 3 else (X_1D, K_1D)
    _check(rank, algorithm, grid, x_shape, k_out, strides, padding, dilation, window, seed=len(grid))


# (algorithm, grid, C, K, G, strides): depthwise (G = C) and grouped 3-D layers.
GROUPED_3D = [
    ("spatial", dict(d=2, h=2, w=2), 4, 8, 4, 1),
    ("3d", dict(d=2, k=2, c=2), 4, 8, 4, 2),
    ("filter", dict(d=2, k=4), 4, 4, 2, 1),
    ("2.5d", dict(d=2, k=2, c=2), 8, 8, 8, 1),
]


@pytest.mark.parametrize(("algorithm", "grid", "c", "k", "groups", "strides"), first_fast(GROUPED_3D, 0))
def test_grouped_3d_matches_lax(algorithm, grid, c, k, groups, strides):
    _check(3, algorithm, grid, (2, 6, 5, 4, c), k, strides, "SAME", 1, (3, 2, 3), groups=groups)


@functools.cache
def _transpose_reference(rank: int, strides, padding, dilation, transpose_kernel: bool):
    def conv(x, kernel):
        return lax.conv_transpose(
            x,
            kernel,
            per_dim(strides, rank, "strides"),
            padding,
            rhs_dilation=per_dim(dilation, rank, "dilation"),
            dimension_numbers=DIMENSION_NUMBERS[rank],
            transpose_kernel=transpose_kernel,
            precision=lax.Precision.HIGHEST,
        )

    return loss_and_grads(conv)


# (x shape, K, algorithm, grid, strides, padding, dilation, window, transpose_kernel)
TRANSPOSE = [
    ((2, 4, 3, 5, 4), 6, "spatial", dict(d=2, h=2, w=2), 2, "SAME", 1, (3, 3, 2), True),
    ((2, 4, 3, 5, 4), 6, "2.5d", dict(d=2, k=2, c=2), (2, 1, 3), "VALID", 1, (3, 2, 3), False),
    ((2, 3, 4, 3, 4), 4, "3d", dict(n=2, d=2, h=2), 2, ((1, 2), (0, 1), (2, 0)), (1, 2, 1), (2, 3, 2), True),
    ((4, 9, 6), 5, "spatial", dict(n=2, w=4), 3, "SAME", 1, (4,), False),
    ((4, 9, 6), 5, "2d", dict(n=2, w=2, k=2), 2, "VALID", 2, (3,), True),
]


@pytest.mark.parametrize(
    ("x_shape", "k_out", "algorithm", "grid", "strides", "padding", "dilation", "window", "transpose_kernel"),
    first_fast(TRANSPOSE, 0),
)
def test_conv_transpose_matches_lax(
    x_shape, k_out, algorithm, grid, strides, padding, dilation, window, transpose_kernel
):
    rank = len(x_shape) - 2
    mesh = jaxcnn.make_mesh(**grid)
    channels = (k_out, x_shape[-1]) if transpose_kernel else (x_shape[-1], k_out)
    x, kernel = random_inputs(3, x_shape, (*window, *channels))
    kw = dict(strides=strides, padding=padding, dilation=dilation, transpose_kernel=transpose_kernel)
    (_, y), (gx, gk) = loss_and_grads(
        lambda a, b: jaxcnn.conv_transpose(a, b, mesh=mesh, algorithm=algorithm, **kw)
    )(x, kernel)
    ref = _transpose_reference(rank, strides, padding, dilation, transpose_kernel)
    (_, y_ref), (gx_ref, gk_ref) = ref(x, kernel)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    assert_close(gk, gk_ref, RTOL, "dkernel")


@st.composite
def layers_3d(draw):
    window = tuple(draw(st.integers(1, 4)) for _ in range(3))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    padding = draw(
        st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.tuples(*(st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(3))),
        )
    )
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(3))
    x_shape = (draw(st.integers(1, 3)), *spatial, draw(st.integers(1, 5)))
    try:
        jaxcnn.conv_geometry(x_shape, (*window, x_shape[-1], 3), strides, padding, dilation)
    except ValueError:
        assume(False)
    return x_shape, window, strides, padding, dilation


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "grid"), [("spatial", dict(d=2, h=2, w=2)), ("3d", dict(d=2, k=2, c=2))]
)
@settings(max_examples=4, deadline=None)
@given(layer=layers_3d())
def test_property_3d(algorithm, grid, layer):
    x_shape, window, strides, padding, dilation = layer
    _check(3, algorithm, grid, x_shape, 3, strides, padding, dilation, window)


X2 = (2, 8, 8, 4)


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "grid", "match"),
    [
        (
            (2, 8, 4),
            (3, 4, 4),
            dict(n=2, h=2),
            r"mesh axis 'h' has size 2 but the layer is a 1-D convolution",
        ),
        (X2, (3, 3, 4, 4), dict(d=2, h=2), r"mesh axis 'd' has size 2 but the layer is a 2-D convolution"),
        ((2, 6), (3, 4), dict(n=2), r"x must have rank 3, 4 or 5 \(N, \*spatial, C\)"),
        ((1, 2, 2, 2, 2, 2), (1, 1, 1, 1, 2, 2), dict(n=2), r"x must have rank 3, 4 or 5"),
        ((2, 4, 4, 4, 4), (3, 3, 4, 4), dict(n=2), r"kernel must have rank 5 \(d, h, w window, C/G, K\)"),
    ],
)
def test_rank_errors(x_shape, k_shape, grid, match):
    x, kernel = random_inputs(0, x_shape, k_shape)
    with pytest.raises(ValueError, match=match):
        jaxcnn.conv(x, kernel, mesh=jaxcnn.make_mesh(**grid), algorithm="spatial")


def test_per_dimension_arguments_must_match_the_rank():
    x, kernel = random_inputs(0, (2, 4, 4, 4, 4), (3, 3, 3, 4, 4))
    mesh = jaxcnn.make_mesh(d=2)
    with pytest.raises(ValueError, match=r"strides must be an int or a sequence of 3 ints"):
        jaxcnn.conv(x, kernel, mesh=mesh, algorithm="spatial", strides=(1, 2))
    with pytest.raises(ValueError, match=r"explicit padding must be 3 \(lo, hi\) pairs"):
        jaxcnn.conv(x, kernel, mesh=mesh, algorithm="spatial", padding=((1, 1), (1, 1)))


def test_conv2d_rejects_other_ranks():
    x, kernel = random_inputs(0, (2, 4, 4, 4, 4), (3, 3, 3, 4, 4))
    with pytest.raises(
        ValueError, match=r"x must have rank 4 \(N, H, W, C\).*use jaxcnn.conv for 1-D or 3-D"
    ):
        jaxcnn.conv2d(x, kernel, mesh=jaxcnn.make_mesh(n=2), algorithm="data")


def test_mesh_keeps_keyword_calls_and_orders_the_depth_axis():
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    assert mesh.axis_names == ("n", "d", "h", "w", "k", "c") and mesh.shape["d"] == 1
    assert jaxcnn.make_mesh(d=2, h=2, w=2).devices.shape == (1, 2, 2, 2, 1, 1)
    geom = jaxcnn.conv_geometry((2, 8, 8, 8, 4), (3, 3, 3, 4, 4))
    layout = jaxcnn.conv_layout(geom, mesh=jaxcnn.make_mesh(d=2, h=2, w=2), algorithm="spatial")
    assert layout.x_spec == P(None, "d", "h", "w", None) and layout.kernel_spec == P(
        None, None, None, None, None
    )
    assert geom.spatial_axes == ("d", "h", "w") and geom.rank == 3
    assert jaxcnn.conv_geometry((2, 8, 4), (3, 4, 4)).spatial_axes == ("w",)
