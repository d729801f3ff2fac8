"""Lower bounds: closed forms, trivial cases, and never above what a jaxcnn algorithm moves."""

import functools
import math

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcnn
from jaxcnn.bounds import lower_bound, real_macs
from jaxcnn.measure import measure_conv


@functools.cache
def metered(geom, algorithm, sizes):
    """(forward, backward) reports, cached: each program is compiled once per test session."""
    return measure_conv(geom, mesh=jaxcnn.make_mesh(**dict(sizes)), algorithm=algorithm)


GENERIC = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16))
CUBE = jaxcnn.conv_geometry((64, 1, 1, 64), (1, 1, 64, 64))  # a 64^3 matmul


@pytest.mark.parametrize(
    "x_shape,kernel_shape,strides,padding,dilation",
    [
        ((2, 8, 8, 3), (3, 3, 3, 5), 1, "SAME", 1),
        ((1, 11, 9, 2), (4, 3, 2, 3), (2, 3), ((2, 1), (0, 3)), (2, 1)),
    ],
)
def test_real_macs_match_a_convolution_of_ones(x_shape, kernel_shape, strides, padding, dilation):
    geom = jaxcnn.conv_geometry(x_shape, kernel_shape, strides, padding, dilation)
    n, h, w, c = x_shape
    r, s, _, k = kernel_shape
    taps = jax.lax.conv_general_dilated(
        jnp.ones((n, h, w, 1)), jnp.ones((r, s, 1, 1)), geom.strides, geom.padding,
        rhs_dilation=geom.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    assert real_macs(geom) == int(taps.sum()) * c * k
    assert real_macs(geom) < geom.flops // 2  # some taps fall into the padding


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
