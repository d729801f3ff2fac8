"""Grouped and depthwise convolutions (``feature_group_count``) under every algorithm: forward and both
gradients equal single-device lax, unsupported combinations raise a ``ValueError`` that says what
would work, the cost model equals the HLO meter, and ``jaxcnn.nn.Conv`` equals ``nnx.Conv``.

Tolerance: relative max error 2e-5 (fp32; reductions of at most 9·8 = 72 terms per output, 4·8·8·9
per kernel-gradient entry, accumulated in a different order than the reference's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcnn
import jaxcnn.nn as jnn
from jaxcnn.cost import predict
from jaxcnn.measure import measure_conv
from tests.test_cost import _assert_same
from tests.utils import assert_close, first_fast, random_inputs, reference_conv

# make test runs every fifth slow case of each sweep below; make test-sweep the rest (tests/conftest.py).
SWEEP_KEEP = 5

RTOL = 2e-5

# (algorithm, grid, C, K, G, x spatial (H, W), strides, padding, dilation). The first case of each
# algorithm runs in `make test-fast`: whole groups per device (k·c divides G), the filter selection
# (k does not divide G, one and several sub-groups per device) and depthwise with multiplier 2.
EXACT = [
    ("data", dict(n=8), 8, 8, 8, (8, 8), 1, "SAME", 1),
    ("spatial", dict(n=2, h=2, w=2), 8, 16, 8, (8, 8), 1, "SAME", 1),
    ("filter", dict(k=8), 8, 8, 8, (8, 8), 1, "SAME", 1),
    ("filter", dict(k=4), 8, 8, 2, (8, 8), 1, "SAME", 1),
    ("filter", dict(n=2, h=2, k=2), 6, 6, 3, (8, 8), 1, "SAME", 1),
    ("channel", dict(c=8), 8, 8, 8, (8, 8), 1, "SAME", 1),
    ("2d", dict(n=2, k=4), 8, 8, 4, (8, 8), 1, "SAME", 1),
    ("2.5d", dict(k=2, c=4), 8, 16, 8, (8, 8), 1, "SAME", 1),
    ("3d", dict(n=2, k=2, c=2), 8, 8, 4, (8, 8), 1, "SAME", 1),
    ("filter+replicas", dict(k=4, c=2), 8, 8, 8, (8, 8), 1, "SAME", 1),  # depthwise copied over c
]
EXACT_SLOW = [
    ("data", dict(n=2), 8, 16, 2, (7, 9), 2, "VALID", 1),
    ("spatial", dict(h=4, w=2), 8, 8, 4, (9, 7), 2, "SAME", 2),
    ("filter", dict(k=2, w=2), 8, 16, 8, (8, 8), 1, ((2, 1), (0, 3)), 1),
    ("filter", dict(k=8), 8, 16, 4, (8, 8), 2, "SAME", 1),
    ("channel", dict(n=2, h=2, c=2), 8, 8, 4, (7, 8), 1, "SAME", 2),
    ("2d", dict(h=2, w=2, k=2), 8, 16, 8, (8, 8), 2, "SAME", 1),
    ("2.5d", dict(h=2, k=2, c=2), 8, 8, 8, (9, 8), 1, "VALID", 1),
    ("3d", dict(k=2, c=4), 8, 16, 8, (8, 8), 1, "SAME", 3),
    ("filter+replicas", dict(n=2, k=2, c=2), 8, 8, 2, (8, 8), 2, "SAME", 1),
    ("channel+replicas", dict(k=2, c=4), 8, 8, 8, (8, 8), 1, "SAME", 1),
    ("data+replicas", dict(n=2, c=4), 8, 16, 8, (8, 8), 1, "VALID", 1),
]


def _id(alg, grid, c, k, g, *_):
    return f"{alg}-{'-'.join(f'{a}{s}' for a, s in grid.items())}-C{c}K{k}G{g}"


def _loss_and_grads(conv):
    def loss(x, kernel):
        y = conv(x, kernel)
        return jnp.sum(jnp.sin(y)), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize(
    ("algorithm", "grid", "c", "k", "g", "hw", "strides", "padding", "dilation"),
    [pytest.param(*case, id=_id(*case)) for case in EXACT]
    + [pytest.param(*case, id=_id(*case), marks=pytest.mark.slow) for case in EXACT_SLOW],
)
def test_grouped_forward_and_gradients_match_lax(algorithm, grid, c, k, g, hw, strides, padding, dilation):
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(c + k + g, (4, *hw, c), (3, 3, c // g, k))
    kw = dict(strides=strides, padding=padding, dilation=dilation)
    (_, y), (gx, gk) = _loss_and_grads(
        lambda a, b: jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, feature_group_count=g, **kw)
    )(x, kernel)
    (_, y_ref), (gx_ref, gk_ref) = _loss_and_grads(
        lambda a, b: reference_conv(a, b, **kw, feature_group_count=g)
    )(x, kernel)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    assert_close(gk, gk_ref, RTOL, "dkernel")


@pytest.mark.parametrize(
    ("algorithm", "grid", "c", "k", "g", "says"),
    [
        ("channel", dict(c=8), 8, 8, 4, "c = 8 must divide G = 4"),
        ("3d", dict(n=2, k=2, c=2), 8, 8, 2, "k·c = 4 must divide G = 2"),
        ("2.5d", dict(k=2, c=4), 8, 8, 4, "k·c = 8 must divide G = 4"),
        ("2d", dict(n=2, k=4), 8, 8, 2, "k = 4 must divide G = 2"),
        ("2d", dict(n=4, k=2), 4, 4, 4, "n·d·h·w = 4, which must divide it"),
        ("filter", dict(k=4), 6, 6, 3, "k must divide both C and K"),
    ],
)
def test_unsupported_combinations_say_what_works(algorithm, grid, c, k, g, says):
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(0, (2, 4, 4, c), (3, 3, c // g, k))
    grid_text = ", ".join(f"{a}={s}" for a, s in grid.items())
    with pytest.raises(ValueError) as info:
        jaxcnn.conv2d(x, kernel, mesh=mesh, algorithm=algorithm, feature_group_count=g)
    message = str(info.value)
    for part in (f"'{algorithm}'", grid_text, f"feature_group_count={g}", f"C={c}", f"K={k}", says):
        assert part in message, (part, message)
    assert "data, spatial and filter run every group count" in message


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "g", "says"),
    [
        ((2, 4, 4, 6), (3, 3, 1, 6), 4, "feature_group_count=4 must divide both x channels C=6"),
        ((2, 4, 4, 8), (3, 3, 2, 6), 4, "must divide both x channels C=8 and kernel output channels K=6"),
        ((2, 4, 4, 8), (3, 3, 4, 8), 4, "divided by feature_group_count=4, i.e. 2"),
        ((2, 4, 4, 8), (3, 3, 2, 8), 0, "feature_group_count must be an int >= 1, got 0"),
    ],
)
def test_bad_group_counts_raise(x_shape, kernel_shape, g, says):
    x, kernel = random_inputs(0, x_shape, kernel_shape)
    with pytest.raises(ValueError, match="feature_group_count") as info:
        jaxcnn.conv2d(x, kernel, mesh=jaxcnn.make_mesh(n=2), algorithm="data", feature_group_count=g)
    assert says in str(info.value)


# (algorithm, grid, C, K, G) on a (8, 16, 16, C) input, 3×3 SAME: even splits.
COST = [
    ("filter", dict(n=2, h=2, k=2), 12, 12, 3),  # selection: x gathered over k, halos, kernel all-reduce
    ("3d", dict(n=2, k=2, c=2), 16, 16, 4),  # whole groups: kernel gathered over n along K
    ("spatial", dict(n=2, h=2, w=2), 16, 32, 16),  # depthwise ×2: halos and the kernel all-reduce
    ("data", dict(n=8), 16, 16, 4),
    ("filter", dict(k=8), 16, 32, 8),
    ("filter", dict(k=4), 16, 16, 2),
    ("channel", dict(n=2, c=4), 16, 16, 8),
    ("2d", dict(n=2, h=2, k=2), 16, 32, 16),
    ("2.5d", dict(h=2, k=2, c=2), 16, 16, 16),
    ("filter+replicas", dict(k=4, c=2), 16, 16, 16),  # copies over c: nothing moves
    ("filter+replicas", dict(n=2, k=2, c=2), 12, 12, 3),  # selection, the kernel all-reduced over n
    ("spatial+replicas", dict(h=2, w=2, c=2), 16, 32, 16),
]


@pytest.mark.parametrize(("algorithm", "grid", "c", "k", "g"), first_fast(COST, keep=2))
def test_grouped_model_equals_meter(algorithm, grid, c, k, g):
    geom = jaxcnn.conv_geometry((8, 16, 16, c), (3, 3, c // g, k), 1, "SAME", 1, g)
    cost = predict(geom, algorithm, grid)
    assert cost.layout.is_even(geom)
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm)
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")


def test_whole_groups_per_device_move_no_channels():
    """Group parallelism over k·c: no gather of x, no reduce-scatter of y; only the kernel moves."""
    geom = jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 1, 16), 1, "SAME", 1, 16)
    for algorithm, grid in (
        ("filter", dict(k=8)),
        ("channel", dict(c=8)),
        ("3d", dict(k=2, c=4)),
        ("filter+replicas", dict(k=4, c=2)),  # 4 groups per device, each copy over c whole
    ):
        cost = predict(geom, algorithm, grid)
        assert cost.forward.max_bytes == 0 and cost.backward.max_bytes == 0, algorithm
    cost = predict(geom, "3d", dict(n=2, k=2, c=2))
    assert set(cost.forward.per_kind) == {"all-gather"}  # the kernel, over n
    assert cost.forward.max_bytes == 3 * 3 * 1 * (16 // 4) * 4 / 2  # R·S·(C/G)·K/(k·c) words, half received


@pytest.mark.parametrize(
    ("sizes", "algorithm", "c", "k", "g"),
    first_fast([(dict(n=2, k=2, c=2), "3d", 8, 16, 8), (dict(n=2, k=2), "filter", 6, 6, 3)]),
)
def test_nn_conv_equals_nnx_conv(sizes, algorithm, c, k, g):
    mesh = jaxcnn.make_mesh(**sizes)
    ours = jnn.Conv(c, k, (3, 3), mesh=mesh, algorithm=algorithm, feature_group_count=g, rngs=nnx.Rngs(0))
    ref = nnx.Conv(c, k, (3, 3), feature_group_count=g, rngs=nnx.Rngs(0))
    ref.bias[...] = jax.random.normal(jax.random.key(3), (k,))
    ours.bias[...] = ref.bias[...]
    np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(ref.kernel[...]))
    geom = jaxcnn.conv_geometry((4, 7, 6, c), (3, 3, c // g, k), 1, "SAME", 1, g)
    assert ours.input_spec == jaxcnn.conv_layout(geom, mesh=mesh, algorithm=algorithm).x_spec

    def loss(layer, x):
        y = layer(x)
        return jnp.sum(y * jnp.cos(y)), y

    x = jax.random.normal(jax.random.key(1), (4, 7, 6, c))
    grad = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, y), (g_ours, gx) = nnx.jit(grad)(ours, x)
    (_, y_ref), (g_ref, gx_ref) = nnx.jit(grad)(ref, x)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    for name in ("kernel", "bias"):
        assert_close(g_ours[name][...], g_ref[name][...], RTOL, name)
