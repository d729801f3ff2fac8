"""Lower bounds: closed forms, trivial cases, and never above what a jaxcnn algorithm moves."""

import functools
import math

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcnn
from jaxcnn import algorithms
from jaxcnn.bounds import lower_bound, real_macs
from jaxcnn.measure import measure_conv
from jaxcnn.planner.grids import placements
from jaxcnn.planner.plan import MAX_REPLICAS
from jaxcnn.planner.replicas import planned_replicas
from tests.utils import first_fast


@functools.cache
def metered(geom, algorithm, sizes):
    """(forward, backward) reports, cached: each program is compiled once per test session."""
    return measure_conv(geom, mesh=jaxcnn.make_mesh(**dict(sizes)), algorithm=algorithm)


GENERIC = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16))
CUBE = jaxcnn.conv_geometry((64, 1, 1, 64), (1, 1, 64, 64))  # a 64^3 matmul


@pytest.mark.parametrize(
    "x_shape,kernel_shape,strides,padding,dilation,groups,input_dilation",
    [
        ((2, 8, 8, 3), (3, 3, 3, 5), 1, "SAME", 1, 1, 1),
        ((1, 11, 9, 2), (4, 3, 2, 3), (2, 3), ((2, 1), (0, 3)), (2, 1), 1, 1),
        ((2, 8, 8, 6), (3, 3, 2, 6), 2, "SAME", 1, 3, 1),
        ((1, 5, 6, 2), (3, 4, 2, 3), 1, ((2, 1), (0, 3)), (1, 2), 1, (2, 3)),
        ((1, 5, 6, 4), (3, 3, 1, 4), 1, "VALID", 1, 4, 2),
    ],
)
def test_real_macs_match_a_convolution_of_ones(
    x_shape, kernel_shape, strides, padding, dilation, groups, input_dilation
):
    geom = jaxcnn.conv_geometry(x_shape, kernel_shape, strides, padding, dilation, groups, input_dilation)
    n, h, w, c = x_shape
    r, s, _, k = kernel_shape
    taps = jax.lax.conv_general_dilated(
        jnp.ones((n, h, w, 1)), jnp.ones((r, s, 1, 1)), geom.strides, geom.padding,
        lhs_dilation=geom.input_dilation, rhs_dilation=geom.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    assert real_macs(geom) == int(taps.sum()) * c // groups * k
    assert real_macs(geom) <= geom.flops // 2  # some taps fall into the padding (or dilation holes)


def test_cube_matmul_is_the_3d_matmul_bound():
    # min 3(A - n²/P) s.t. A³ ≥ n⁶/P²  →  3 n² (P^(-2/3) - 1/P) words.
    words = 3 * 64**2 * (8 ** (-2 / 3) - 1 / 8)
    for pass_ in ("forward", "backward"):
        bound = lower_bound(CUBE, 8, pass_=pass_)
        assert bound.independent == pytest.approx(4 * words, rel=1e-9)
        assert bound.footprint == pytest.approx((1024.0, 1024.0, 1024.0), rel=1e-9)


def test_bound_is_attained_by_3d_on_the_cube():
    fwd, bwd = metered(CUBE, "3d", (("n", 2), ("k", 2), ("c", 2)))
    assert fwd.max_bytes == pytest.approx(lower_bound(CUBE, 8).bytes, rel=1e-9)
    assert bwd.max_bytes == pytest.approx(lower_bound(CUBE, 8, pass_="backward").bytes, rel=1e-9)


def test_trivial_cases():
    assert lower_bound(GENERIC, 1, memory_bytes=64).bytes == 0.0
    # Both inputs replicated: every device computes its own outputs, nothing to receive.
    assert lower_bound(GENERIC, 8, replicated=("x", "kernel")).bytes == 0.0
    # A replicated kernel can only lower the bound; more devices never make it negative.
    assert lower_bound(GENERIC, 8, replicated=("kernel",)).bytes <= lower_bound(GENERIC, 8).bytes
    assert all(lower_bound(GENERIC, p, memory_bytes=4e9).bytes >= 0 for p in (2, 3, 64, 4096))


@given(
    st.integers(1, 4), st.integers(1, 9), st.integers(1, 16), st.integers(1, 16), st.integers(1, 3),
    st.integers(1, 2), st.sampled_from(["SAME", "VALID"]), st.integers(1, 64),
)  # fmt: skip
def test_bound_between_zero_and_one_device_doing_everything(n, hw, c, k, r, stride, padding, p):
    geom = jaxcnn.conv_geometry((n, hw + r, hw + r, c), (r, r, c, k), stride, padding)
    sizes = (math.prod(geom.x_shape), math.prod(geom.kernel_shape), math.prod(geom.y_shape))
    bound = lower_bound(geom, p, pass_="forward")
    # (|x|, |w|, |y|) is always a feasible footprint, so the minimum costs at most that much.
    assert 0 <= bound.independent <= 4 * sum(sizes) * (1 - 1 / p) * (1 + 1e-9)
    assert lower_bound(geom, p, replicated=("kernel",)).independent <= bound.independent * (1 + 1e-9)
    assert lower_bound(geom, p, pass_="backward").independent == pytest.approx(bound.independent)


def test_memory_dependent_formula():
    words = 1000
    f = 8 * 16 * 16 * 22 * 22  # 22 real (out, tap) pairs per dim for 3x3 SAME on 8
    for passes, pass_ in ((1, "forward"), (2, "backward")):
        bound = lower_bound(GENERIC, 2, memory_bytes=4 * words, pass_=pass_)
        expected = 4 * (passes * f / (2 * math.sqrt(9 * words)) - words)
        assert bound.memory_dependent == pytest.approx(expected, rel=1e-12)
        assert bound.bytes == max(bound.independent, expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_devices"):
        lower_bound(GENERIC, 0)
    with pytest.raises(ValueError, match="pass_"):
        lower_bound(GENERIC, 2, pass_="sideways")
    with pytest.raises(ValueError, match="replicated"):
        lower_bound(GENERIC, 2, replicated=("y",))


GRIDS = [
    ("data", dict(n=8)),
    ("spatial", dict(n=2, h=2, w=2)),
    ("filter", dict(k=8)),
    ("channel", dict(c=8)),
    ("2d", dict(n=2, h=2, k=2)),
    ("2.5d", dict(n=2, k=2, c=2)),
    ("3d", dict(n=2, k=2, c=2)),
    ("3d", dict(n=8)),
]


@pytest.mark.parametrize("geom", [GENERIC, CUBE], ids=["3x3", "cube"])
@pytest.mark.parametrize(
    "algorithm,sizes",
    [pytest.param(*g, marks=pytest.mark.slow) if g[0] in ("2d", "2.5d") else g for g in GRIDS],
    ids=[f"{a}-{'x'.join(map(str, s.values()))}" for a, s in GRIDS],
)
def test_no_algorithm_beats_the_bound(geom, algorithm, sizes):
    fwd, bwd = metered(geom, algorithm, tuple(sizes.items()))
    replicated = ("kernel",) if algorithm in ("data", "spatial") else ()
    f_bound = lower_bound(geom, 8, fwd.memory.peak_bytes, replicated=replicated)
    b_bound = lower_bound(geom, 8, bwd.memory.peak_bytes, pass_="backward")
    assert fwd.max_bytes >= f_bound.bytes * (1 - 1e-9)
    assert bwd.max_bytes >= b_bound.bytes * (1 - 1e-9)
    assert b_bound.bytes > 0  # the backward bound is never vacuous on 8 devices


# ----------------------------------------------------------------------------- grouped and transposed

GROUPED = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 8, 16), 1, "SAME", 1, 2)  # two groups of 8 → 8
TRANSPOSED = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16), 1, ((2, 1), (2, 1)), 1, input_dilation=2)


def test_grouped_real_macs_and_bound_are_not_the_dense_ones():
    dense = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16))
    assert real_macs(GROUPED) * 2 == real_macs(dense)
    for pass_ in ("forward", "backward"):
        assert 0 < lower_bound(GROUPED, 8, pass_=pass_).bytes < lower_bound(dense, 8, pass_=pass_).bytes
    # Depthwise with at least as many channels as devices: each device can own whole groups (x, kernel
    # and y split by channel), so nothing has to move - and filter on k=8 moves nothing.
    depthwise = jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 1, 16), 1, "SAME", 1, 16)
    for pass_ in ("forward", "backward"):
        assert lower_bound(depthwise, 8, pass_=pass_).bytes == 0.0
    assert jaxcnn.cost.predict(depthwise, "filter", dict(k=8)).bytes == 0.0


def test_grouped_matmuls_bound_is_the_per_group_3d_matmul_bound():
    # G groups of an n³ matmul (1×1 convolution, N·H·W = n, C = K = G·n): F = G·n³, every array G·n²
    # elements; all caps inactive, so A = (F/P)^(2/3) each and the bound is 3(A - G·n²/P) words =
    # 3n²((G/P)^(2/3) - G/P): the 3D-matmul bound of one n³ matmul on P/G devices, per device.
    n, g, p = 64, 2, 8
    geom = jaxcnn.conv_geometry((n, 1, 1, g * n), (1, 1, n, g * n), 1, "SAME", 1, g)
    words = 3 * n**2 * ((g / p) ** (2 / 3) - g / p)
    for pass_ in ("forward", "backward"):
        assert lower_bound(geom, p, pass_=pass_).independent == pytest.approx(4 * words, rel=1e-9)


def test_transposed_real_macs_and_pixel_shuffle_bound():
    # Kernel 2×2 = stride 2, "VALID": every output has exactly one real tap (a "pixel shuffle" of a
    # 1×1 convolution). N = 64, 1×1 input, C = 64, K = 16: F = N·C·K·4 = 2^18 and |x| = |w| = |y| = 2^12;
    # caps F/(P·64) = 512 = the shares; A³ ≥ (F/P)²/(R·S) = 2^28 gives 3(2^(28/3) - 2^9) words.
    geom = jaxcnn.conv_geometry((64, 1, 1, 64), (2, 2, 64, 16), 1, ((1, 1), (1, 1)), 1, input_dilation=2)
    assert geom.y_shape == (64, 2, 2, 16) and real_macs(geom) == 2**18
    assert lower_bound(geom, 8).independent == pytest.approx(4 * 3 * (2 ** (28 / 3) - 2**9), rel=1e-9)


def _id(value) -> str:
    if isinstance(value, dict):
        return "x".join(map(str, value.values()))
    return "grouped" if value is GROUPED else "transposed" if value is TRANSPOSED else str(value)


def _supported(geom, cases):
    """The (algorithm, grid) cases that can run ``geom`` (grouped layers: where the groups split)."""
    out = []
    for algorithm, sizes in cases:
        try:
            jaxcnn.cost.predict(geom, algorithm, sizes)
        except ValueError:
            continue
        out.append((geom, algorithm, sizes))
    return out


@pytest.mark.parametrize(
    "geom,algorithm,sizes",
    first_fast(_supported(GROUPED, GRIDS[2:4] + GRIDS[:2] + GRIDS[4:]))
    + first_fast(_supported(TRANSPOSED, GRIDS[1:] + GRIDS[:1])),
    ids=_id,
)
def test_no_algorithm_beats_the_grouped_or_transposed_bound(geom, algorithm, sizes):
    test_no_algorithm_beats_the_bound(geom, algorithm, sizes)


# ----------------------------------------------------------------------------- 1-D and 3-D layers

LINE = jaxcnn.conv_geometry((8, 16, 16), (3, 16, 16))  # 1-D: (N, W, C), kernel (S, C, K)
VOLUME = jaxcnn.conv_geometry((4, 4, 6, 6, 16), (3, 3, 3, 16, 16))  # 3-D: (N, D, H, W, C)
VOLUME_GROUPED = jaxcnn.conv_geometry((4, 4, 4, 4, 16), (3, 3, 3, 8, 16), 1, "SAME", 1, 2)
LINE_TRANSPOSED = jaxcnn.conv_geometry((8, 8, 16), (3, 16, 16), 1, ((2, 1),), 1, input_dilation=2)


def _with_depth_one(geom):
    """The 2-D layer ``geom`` as a 3-D one of depth 1 with a kernel of depth 1."""
    n, h, w, c = geom.x_shape
    r, s, cg, k = geom.kernel_shape
    return jaxcnn.conv_geometry(
        (n, 1, h, w, c), (1, r, s, cg, k), (1, *geom.strides), ((0, 0), *geom.padding), (1, *geom.dilation),
        geom.groups, (1, *geom.input_dilation),
    )  # fmt: skip


def _width_only(geom, rank):
    """The width dimension of the 2-D layer ``geom`` alone: 1-D (rank 1), or 2-D of height 1 with a
    kernel of height 1 (rank 2)."""
    w = geom.w
    lead = ((1,) * (rank - 1), (1,) * (rank - 1), ((0, 0),) * (rank - 1))
    return jaxcnn.conv_geometry(
        (geom.batch, *lead[0], w.size, geom.channels_in), (*lead[1], w.kernel, *geom.kernel_shape[2:]),
        (*lead[0], w.stride), (*lead[2], w.pad), (*lead[0], w.dilation), geom.groups,
        (*lead[0], w.input_dilation),
    )  # fmt: skip


@pytest.mark.parametrize(
    "geom", [GENERIC, CUBE, GROUPED, TRANSPOSED], ids=["3x3", "cube", "grouped", "transposed"]
)
def test_depth_one_volume_is_the_2d_bound(geom):
    # D = 1 and kernel depth 1 add a factor 1 to every count: the very same numbers, bit for bit ...
    volume = _with_depth_one(geom)
    assert real_macs(volume) == real_macs(geom)
    line, flat = _width_only(geom, 1), _width_only(geom, 2)
    for pass_ in ("forward", "backward"):
        assert lower_bound(volume, 8, 4e6, pass_=pass_) == lower_bound(geom, 8, 4e6, pass_=pass_)
        # ... and a 2-D layer of height 1 with a kernel of height 1 is the 1-D layer.
        assert lower_bound(line, 8, 4e6, pass_=pass_) == lower_bound(flat, 8, 4e6, pass_=pass_)
    assert lower_bound(line, 8).bytes > 0


@pytest.mark.parametrize(
    "x_shape", [(1, 4, 4, 4, 64), (4, 16, 64), (64, 1, 1, 1, 64)], ids=["1x1x1", "1-D", "N64"]
)
def test_pointwise_conv_of_any_rank_is_the_matmul_bound(x_shape):
    # N·(D·H·W) = 64 rows, C = K = 64, one tap: the 64³ matmul of test_cube_matmul_is_the_3d_matmul_bound.
    geom = jaxcnn.conv_geometry(x_shape, (*[1] * (len(x_shape) - 2), 64, 64))
    words = 3 * 64**2 * (8 ** (-2 / 3) - 1 / 8)
    for pass_ in ("forward", "backward"):
        assert lower_bound(geom, 8, pass_=pass_).independent == pytest.approx(4 * words, rel=1e-9)


def test_3d_counts_every_dimension():
    # 3x3x3 SAME on 4x4x4: 4·3 - 2 = 10 real (output, tap) pairs per dimension, 27 taps in Lemma 1.
    geom = jaxcnn.conv_geometry((2, 4, 4, 4, 8), (3, 3, 3, 8, 16))
    f = 2 * 16 * 8 * 10**3
    assert real_macs(geom) == f
    words = 500
    for passes, pass_ in ((1, "forward"), (2, "backward")):
        expected = 4 * (passes * f / (2 * math.sqrt(27 * words)) - words)
        assert lower_bound(geom, 2, 4 * words, pass_=pass_).memory_dependent == pytest.approx(
            expected, rel=1e-12
        )
    # G groups of an n³ matmul as a 1x1x1 convolution: 3n²((G/P)^(2/3) - G/P) words, as in 2-D.
    n, g, p = 64, 4, 8
    grouped = jaxcnn.conv_geometry((1, 4, 4, 4, g * n), (1, 1, 1, n, g * n), 1, "SAME", 1, g)
    words = 3 * n**2 * ((g / p) ** (2 / 3) - g / p)
    assert lower_bound(grouped, p).independent == pytest.approx(4 * words, rel=1e-9)
    # 3-D pixel shuffle (kernel 2x2x2 = stride 2, VALID; N = C = 64, K = 8 on a 1x1x1 map, P = 64):
    # F = N·C·K·8 = 2^18, |x| = |w| = |y| = 2^12 (shares 2^6 = the caps' F/(P·cap));
    # A³ ≥ (F/P)²/8 = 2^21 gives A = 2^7 and 3(2^7 - 2^6) words.
    shuffle = jaxcnn.conv_geometry((64, 1, 1, 1, 64), (2, 2, 2, 64, 8), 1, ((1, 1),) * 3, 1, input_dilation=2)
    assert shuffle.y_shape == (64, 2, 2, 2, 8) and real_macs(shuffle) == 2**18
    assert lower_bound(shuffle, 64).independent == pytest.approx(4 * 3 * (2**7 - 2**6), rel=1e-9)


def _all_runs(geom, devices=8):
    """Every (algorithm, grid) the planner would consider for ``geom`` on ``devices`` devices, the
    replicated placements it admits included."""
    factors = planned_replicas(geom, devices, MAX_REPLICAS)
    return [(geom, a, grid) for a, grid in placements(geom, devices, jaxcnn.ALGORITHMS, factors)]


def _kernel_replicated(algorithm, grid) -> bool:
    """The kernel starts replicated over the row devices (data / spatial / filter / channel) - then
    each device holds more than |w|/P of it; the bound with a replicated kernel is the valid one."""
    rows = math.prod(grid.get(a, 1) for a in ("n", "d", "h", "w"))
    return not algorithms.get(algorithm).kernel_over_rows and rows > 1


@pytest.mark.parametrize("geom", [LINE, VOLUME, VOLUME_GROUPED, LINE_TRANSPOSED],
                         ids=["1d", "3d", "3d-grouped", "1d-transposed"])  # fmt: skip
def test_no_grid_beats_the_1d_or_3d_bound(geom):
    assert_no_grid_beats_the_bound(geom, backward_positive=True)


def assert_no_grid_beats_the_bound(geom, backward_positive: bool = False) -> None:
    """Every algorithm x grid on 8 devices (at least 20 runs) moves, pass by pass, at least the bound
    at its own peak memory (the kernel replicated where it starts so)."""
    runs = 0
    for _, algorithm, grid in _all_runs(geom):
        try:
            cost = jaxcnn.cost.predict(geom, algorithm, grid)
        except ValueError:  # grouped: the groups do not split over this grid
            continue
        runs += 1
        replicated = ("kernel",) if _kernel_replicated(algorithm, grid) else ()
        f_bound = lower_bound(geom, 8, cost.memory.peak, replicated=replicated)
        b_bound = lower_bound(geom, 8, cost.memory.peak, pass_="backward")
        assert cost.forward.max_bytes >= f_bound.bytes * (1 - 1e-9), (algorithm, grid)
        assert cost.backward.max_bytes >= b_bound.bytes * (1 - 1e-9), (algorithm, grid)
        assert b_bound.bytes > 0 or not backward_positive
    assert runs >= 20


@pytest.mark.parametrize(
    "geom,algorithm,sizes",
    first_fast(
        [(VOLUME, "3d", (("n", 2), ("k", 2), ("c", 2))), (LINE, "2d", (("n", 2), ("w", 2), ("k", 2)))]
    ),
    ids=["3d-n2k2c2", "1d-n2w2k2"],
)
def test_metered_1d_and_3d_are_the_predicted_bytes_above_the_bound(geom, algorithm, sizes):
    fwd, bwd = metered(geom, algorithm, sizes)
    cost = jaxcnn.cost.predict(geom, algorithm, dict(sizes))
    assert (fwd.max_bytes, bwd.max_bytes) == (cost.forward.max_bytes, cost.backward.max_bytes)
    test_no_algorithm_beats_the_bound(geom, algorithm, dict(sizes))
