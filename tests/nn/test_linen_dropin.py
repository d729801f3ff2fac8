"""jaxcnn.nn.linen.Conv as a true drop-in for flax.linen.Conv: Flax's ImageNet ResNet, written as in
flax/examples/imagenet/models.py (its conv class an argument, strides passed positionally), run through
both Linen routes (the class, and linen.Conv's conv_general_dilated hook) against plain linen.Conv, in
float32 and in bfloat16; and 1-D, 3-D, grouped and list-padded layers against linen.Conv."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn.nn import linen as jlinen
from jaxcnn.nn.placement import Placement
from tests.utils import first_fast

ModuleDef = Any

# ---------------------------------------------------------------------------------------------------
# Flax's ImageNet ResNet (flax/examples/imagenet/models.py), unchanged but for BatchNorm's axis_name
# (no pmap here). Its 7x7/2 stem with list padding [(3, 3), (3, 3)] and 3x3/2 max-pool stay, so on 8x8
# images the blocks see 2x2 and 1x1 activations: splits of h / w that jaxcnn zero-pads.


class ResNetBlock(nn.Module):
    """ResNet block."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)

        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)

        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNetV1.5."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )

        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(
                    self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        x = jnp.asarray(x, self.dtype)
        return x


# ---------------------------------------------------------------------------------------------------

SMALL = dict(stage_sizes=(1, 1), block_cls=ResNetBlock, num_classes=10, num_filters=4)
BATCH, IMAGE = 8, (8, 8, 3)

#: (mesh sizes, algorithm) on the 8 virtual CPU devices.
MESHES = [
    (dict(n=2, h=2, k=2), "2d"),
    (dict(n=2, h=2, w=2), "spatial"),
    (dict(n=2, k=2, c=2), "3d"),
]
ROUTES = ["class", "hook"]
#: make test keeps, of each test's slow cases, every 5th (tests/conftest.py): both routes on "2d" in
#: float32, the class route on "2d" in bfloat16 and three single layers; make test-sweep runs the hook
#: route in bfloat16, "spatial" and "3d" too.
SWEEP_KEEP = 5

# Errors are relative: of the loss, of the whole gradient (every parameter, L2) and of each gradient leaf
# (L2, against the larger of the leaf's norm and LEAF_FLOOR x the whole gradient's, as rtol and atol in
# assert_allclose: block 0's second BatchNorm bias, whose shift the next train-mode BatchNorms remove,
# has a gradient of 0.1% of the whole, all cancellation, and no relative yardstick of its own).
LEAF_FLOOR = 0.05
# float32: the routes differ from plain Flax only in the order of the convolutions' sums (split over c,
# and over devices in the gradients' reductions), a few float32 ulps (2^-24) per layer. Train-mode
# BatchNorm over 8-32 values per channel amplifies them in its scale's gradient (measured up to 3e-5
# with 2d), so single leaves get 1e-4.
F32_RTOL, F32_LEAF_RTOL = 1e-5, 1e-4
# bfloat16 against plain Flax in bfloat16: both round the same bf16 operands and sum their products in
# float32, so a jaxcnn conv output differs from Flax's by at most one bf16 rounding (u = 2^-8 relative)
# where the reordered float32 sum straddles a rounding boundary. Six convolutions, forward and backward,
# put some 16 such roundings on a path: as a random walk about 4u, at worst 16u. The loss and the whole
# gradient get 4u (measured: at most 3e-4 and 7e-3, 0.1u and 1.9u); a single leaf, which sums fewer
# terms and passes BatchNorm's normalisation of a few values, 16u (measured: at most 0.035, 9u). A wrong
# route (a dropped halo or group, a transposed kernel) is O(1) off.
BF16_U = 2.0**-8
BF16_RTOL, BF16_LEAF_RTOL = 4 * BF16_U, 16 * BF16_U
# jaxcnn in bf16 is no further from plain Flax in float32 than plain Flax in bf16 is: up to 1.5x for the
# loss and the whole gradient (measured: at most 1.12x), 2x for a single leaf, whose error is the norm of
# a few hundred differently rounded entries (measured: at most 1.42x), + a tiny slack for exact zeros.
NO_FURTHER, NO_FURTHER_LEAF, NO_FURTHER_ATOL = 1.5, 2.0, 1e-6
WHOLE = ("loss", "gradient")


def _conv_class(route: str, mesh, algorithm: str) -> ModuleDef:
    if route == "class":
        return functools.partial(jlinen.Conv, mesh=mesh, algorithm=algorithm)
    return functools.partial(nn.Conv, conv_general_dilated=jaxcnn.nn.conv_general_dilated(mesh, algorithm))


def _data():
    x = jax.random.normal(jax.random.key(0), (BATCH, *IMAGE), jnp.float32)
    labels = jax.random.randint(jax.random.key(1), (BATCH,), 0, SMALL["num_classes"])
    return x, labels


@functools.cache
def _variables():
    """Plain-linen variables, moved off Flax's init values (BatchNorm scales of 0 in each block's second
    norm would zero the gradients of the convolutions before them), shared by every route: the same
    names (autonamed ``Conv_0`` etc.) and shapes are part of the drop-in."""
    x, _ = _data()
    variables = ResNet(**SMALL).init(jax.random.key(2), x, train=False)
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = treedef.unflatten(
        [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    )
    return params, variables["batch_stats"]


def _loss_and_grads(conv: ModuleDef, dtype) -> tuple[np.float64, dict]:
    """Training-mode loss and its gradient with respect to the (float32) parameters.

    Compiled without XLA's excess precision, so that bfloat16 means bfloat16: by default XLA:CPU drops
    a convert to bfloat16 followed by one back to float32 (a bfloat16 conv output read by BatchNorm,
    which computes in float32) inside plain Flax's fused program, but cannot where a jaxcnn convolution's
    output leaves its shard_map; plain Flax would then look more precise than it is on an accelerator.
    """
    model = ResNet(**SMALL, dtype=dtype, conv=conv)
    params, batch_stats = _variables()
    x, labels = _data()

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

    step = jax.jit(jax.value_and_grad(loss), compiler_options={"xla_allow_excess_precision": False})
    value, grads = step(params)
    return np.float64(value), jax.tree.map(lambda g: np.asarray(g, np.float64), grads)


@functools.cache
def _plain(dtype_name: str) -> tuple[np.float64, dict]:
    return _loss_and_grads(nn.Conv, jnp.dtype(dtype_name))


def _errors(result, reference) -> dict[str, float]:
    """Relative errors of the loss, the whole gradient and each gradient leaf (see LEAF_FLOOR)."""
    (value, grads), (value_ref, grads_ref) = result, reference
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    flat_ref, _ = jax.tree_util.tree_flatten_with_path(grads_ref)
    assert [path for path, _ in flat] == [path for path, _ in flat_ref]
    whole = np.concatenate([g.ravel() for _, g in flat])
    whole_ref = np.concatenate([g.ravel() for _, g in flat_ref])
    norm = np.linalg.norm(whole_ref)
    errors = {
        "loss": float(abs(value - value_ref) / abs(value_ref)),
        "gradient": float(np.linalg.norm(whole - whole_ref) / norm),
    }
    for (path, g), (_, g_ref) in zip(flat, flat_ref, strict=True):
        scale = max(np.linalg.norm(g_ref), LEAF_FLOOR * norm)
        errors[jax.tree_util.keystr(path)] = float(np.linalg.norm(g - g_ref) / scale)
    return errors


def _padded(spec: P, ndim: int) -> P:
    """``spec`` with one entry per dimension (how the parameters' boxes list it)."""
    return P(*spec, *(None,) * (ndim - len(spec)))


def _check_close(errors: dict[str, float], rtol: float, leaf_rtol: float, what: str) -> None:
    bad = {k: v for k, v in errors.items() if not v <= (rtol if k in WHOLE else leaf_rtol)}
    assert not bad, f"{what}: relative errors above {rtol:.2g} (loss, gradient) / {leaf_rtol:.2g}: {bad}"


def test_linen_conv_has_linen_conv_fields_in_order():
    linen_fields = [f.name for f in dataclasses.fields(nn.Conv)]
    fields = {f.name: f for f in dataclasses.fields(jlinen.Conv)}
    assert list(fields)[: len(linen_fields)] == linen_fields
    assert list(fields)[len(linen_fields) :] == ["mesh", "algorithm", "reduce_dtype"]
    assert all(fields[name].kw_only for name in ("mesh", "algorithm", "reduce_dtype"))
    mesh = jaxcnn.make_mesh(n=2, h=2, k=2)
    conv = functools.partial(jlinen.Conv, mesh=mesh, algorithm="2d")
    layer = conv(8, (3, 3), (2, 2), [(1, 1), (1, 1)], 1, 1, 1, False)  # linen.Conv's positions
    assert (layer.features, layer.kernel_size, layer.strides, layer.padding, layer.use_bias) == (
        8,
        (3, 3),
        (2, 2),
        [(1, 1), (1, 1)],
        False,
    )
    assert layer.conv_general_dilated == jaxcnn.nn.conv_general_dilated(mesh, "2d")
    assert layer.clone(features=4).conv_general_dilated == layer.conv_general_dilated
    with pytest.raises(TypeError, match="positional"):
        positional = [None] * (len(linen_fields) - 2)  # all but parent and name
        jlinen.Conv(*positional, mesh)  # mesh is keyword-only
    with pytest.raises(TypeError, match="conv_general_dilated itself"):
        jlinen.Conv(8, (3, 3), mesh=mesh, algorithm="2d", conv_general_dilated=jax.lax.conv_general_dilated)
    with pytest.raises(TypeError, match=r"jax\.sharding\.Mesh"):
        jlinen.Conv(8, (3, 3), mesh="mesh")
    with pytest.raises(ValueError, match="does not use mesh axis"):
        jlinen.Conv(8, (3, 3), mesh=mesh, algorithm="data")


def test_resnet_init_equals_linen_with_annotated_kernels():
    """Route (a) creates linen's parameter tree (names, shapes, values), with the layouts boxed."""
    mesh = jaxcnn.make_mesh(n=2, h=2, k=2)
    x, _ = _data()
    conv = _conv_class("class", mesh, "2d")
    variables = jax.jit(ResNet(**SMALL, conv=conv).init, static_argnames="train")(
        jax.random.key(2), x, train=False
    )
    plain = ResNet(**SMALL).init(jax.random.key(2), x, train=False)
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(variables), plain)
    specs = nn.get_partition_spec(variables)["params"]
    placement = Placement("2d", mesh)
    assert specs["conv_init"]["kernel"] == _padded(placement.kernel_spec(3, 4), 4)
    assert specs["ResNetBlock_1"]["Conv_0"]["kernel"] == _padded(placement.kernel_spec(4, 8), 4)
    assert specs["ResNetBlock_1"]["Conv_0"]["kernel"] != _padded(P(), 4)  # split, not replicated


@pytest.mark.parametrize(
    "sizes,algorithm,route",
    first_fast([(sizes, algorithm, route) for sizes, algorithm in MESHES for route in ROUTES]),
)
def test_resnet_float32_equals_linen(sizes, algorithm, route):
    conv = _conv_class(route, jaxcnn.make_mesh(**sizes), algorithm)
    errors = _errors(_loss_and_grads(conv, jnp.float32), _plain("float32"))
    _check_close(errors, F32_RTOL, F32_LEAF_RTOL, f"{algorithm} {route} float32 vs linen float32")


# In bfloat16 make test keeps the class route on "2d" alone (the hook route differs from it only in how
# the convolution is passed in, which the float32 cases check on both routes; ~40 s on 2 shared cores):
# the other cases are make test-sweep's.
@pytest.mark.parametrize(
    "sizes,algorithm,route",
    first_fast([(sizes, algorithm, route) for sizes, algorithm in MESHES for route in ROUTES])[:1]
    + [
        pytest.param(sizes, algorithm, route, marks=[pytest.mark.slow, pytest.mark.sweep])
        for sizes, algorithm in MESHES
        for route in ROUTES
    ][1:],
)
def test_resnet_bfloat16_as_close_as_linen(sizes, algorithm, route):
    conv = _conv_class(route, jaxcnn.make_mesh(**sizes), algorithm)
    ours = _loss_and_grads(conv, jnp.bfloat16)
    plain16, plain32 = _plain("bfloat16"), _plain("float32")
    _check_close(_errors(ours, plain16), BF16_RTOL, BF16_LEAF_RTOL, f"{algorithm} {route} bf16 vs linen bf16")
    ours_off, plain_off = _errors(ours, plain32), _errors(plain16, plain32)
    further = {
        k: (ours_off[k], plain_off[k])
        for k in ours_off
        if not ours_off[k] <= (NO_FURTHER if k in WHOLE else NO_FURTHER_LEAF) * plain_off[k] + NO_FURTHER_ATOL
    }
    assert not further, (
        f"{algorithm} {route} bf16 further from linen f32 than linen bf16 is (ours, linen's): {further}"
    )


# ---------------------------------------------------------------------------------------------------
# Single layers through the class: forward equality with linen.Conv on the same parameters.

LAYERS = [
    # (mesh sizes, algorithm, input shape, linen.Conv keyword arguments)
    (dict(n=2, h=2, k=2), "2d", (4, 7, 6, 8), dict(features=8, kernel_size=(3, 3), padding=[(1, 1), (1, 1)])),
    (dict(n=2, w=4), "spatial", (4, 10, 6), dict(features=5, kernel_size=(3,), strides=2)),  # 1-D
    (dict(n=2, w=4), "spatial", (4, 9, 6), dict(features=5, kernel_size=3, padding="CAUSAL")),  # int: 1-D
    (dict(n=2, d=2, h=2), "spatial", (2, 4, 6, 5, 3), dict(features=4, kernel_size=(3, 3, 3))),  # 3-D
    (dict(n=2, k=2, c=2), "3d", (4, 4, 5, 3, 4), dict(features=6, kernel_size=(2, 3, 1), padding="VALID")),
    (dict(n=2, h=2, k=2), "2d", (4, 6, 6, 8), dict(features=8, kernel_size=(3, 3), feature_group_count=2)),
    (
        dict(n=2, h=2, w=2),
        "spatial",
        (4, 6, 6, 8),
        dict(features=8, kernel_size=(3, 3), feature_group_count=8),  # depthwise
    ),
    (
        dict(n=2, k=2, c=2),
        "3d",
        (4, 6, 5, 8),
        dict(features=8, kernel_size=(3, 2), feature_group_count=4, padding=[(2, 0), (0, 1)]),
    ),
]


@pytest.mark.parametrize("sizes,algorithm,shape,kw", first_fast(LAYERS, keep=2))
def test_layer_equals_linen_conv(sizes, algorithm, shape, kw):
    mesh = jaxcnn.make_mesh(**sizes)
    layer = jlinen.Conv(**kw, mesh=mesh, algorithm=algorithm)
    x = jax.random.normal(jax.random.key(0), shape)
    y, variables = layer.init_with_output(jax.random.key(1), x)
    ref_vars = nn.Conv(**kw).init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(variables), ref_vars)
    params = dict(nn.unbox(variables)["params"], bias=jax.random.normal(jax.random.key(2), (kw["features"],)))
    y = jax.jit(layer.apply)({"params": params}, x)
    y_ref = nn.Conv(**kw).apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    rank = 1 if isinstance(kw["kernel_size"], int) else len(kw["kernel_size"])
    groups = kw.get("feature_group_count", 1)
    placement = Placement(algorithm, mesh, groups, rank)
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["kernel"] == _padded(placement.kernel_spec(shape[-1], kw["features"]), rank + 2)
    assert specs["bias"] == _padded(placement.bias_spec(kw["features"]), 1)
