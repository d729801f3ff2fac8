"""jaxcnn.nn.Conv and the conv_general_dilated hook against flax.nnx.Conv / lax (fp32, rtol 1e-5)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn
from jaxcnn.nn.placement import format_placement
from tests.utils import first_fast

RTOL, ATOL = 1e-5, 1e-5  # reductions of at most 3*3*8 = 72 terms

CASES = [
    # (mesh sizes, algorithm, C, K, kernel, strides, padding, dilation)
    (dict(n=2, k=2, c=2), "3d", 8, 8, (3, 3), 1, "SAME", 1),
    (dict(n=2, h=2, w=2), "spatial", 5, 6, (3, 2), 2, "VALID", 1),
    (dict(h=2, k=2), "2d", 6, 5, (3, 3), 1, ((1, 2), (0, 1)), 2),
    (dict(c=4), "channel", 8, 4, (1, 1), 1, "SAME", 1),
]


def _loss_and_grads(layer, x):
    def loss(layer, x):
        y = layer(x)
        return jnp.sum(y * jnp.cos(y)), y

    (_, y), (g_layer, g_x) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, x)
    return y, g_layer, g_x


@pytest.mark.parametrize("sizes,algorithm,c,k,kernel,strides,padding,dilation", first_fast(CASES))
def test_conv_equals_nnx_conv(sizes, algorithm, c, k, kernel, strides, padding, dilation):
    mesh = jaxcnn.make_mesh(**sizes)
    kw = dict(strides=strides, padding=padding, kernel_dilation=dilation)
    ours = jnn.Conv(c, k, kernel, mesh=mesh, algorithm=algorithm, rngs=nnx.Rngs(0), **kw)
    ref = nnx.Conv(c, k, kernel, rngs=nnx.Rngs(0), **kw)
    ref.bias[...] = jax.random.normal(jax.random.key(3), (k,))
    ours.bias[...] = ref.bias[...]
    np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(ref.kernel[...]))
    x = jax.random.normal(jax.random.key(1), (4, 7, 6, c))
    y, g, gx = nnx.jit(_loss_and_grads)(ours, x)
    y_ref, g_ref, gx_ref = nnx.jit(_loss_and_grads)(ref, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(gx_ref), rtol=RTOL, atol=ATOL)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            np.asarray(g[name][...]), np.asarray(g_ref[name][...]), rtol=RTOL, atol=1e-4, err_msg=name
        )


# (mesh sizes, algorithm, C, K, kernel, strides, padding, dilation, groups, x shape): 3-D split over
# d, h, w; 1-D split over w with feature groups (filter selects each device's groups).
CASES_ND = [
    (dict(d=2, h=2, w=2), "spatial", 4, 6, (3, 2, 3), (1, 2, 1), "SAME", 1, 1, (2, 5, 6, 7, 4)),
    (dict(w=2, k=4), "filter", 8, 4, (3,), 2, "VALID", 2, 2, (4, 11, 8)),
    (dict(d=2, k=2, c=2), "3d", 8, 8, (2, 3, 3), 1, "SAME", 1, 4, (2, 6, 5, 4, 8)),
]


@pytest.mark.parametrize(
    "sizes,algorithm,c,k,kernel,strides,padding,dilation,groups,x_shape", first_fast(CASES_ND, 2)
)
def test_nd_conv_equals_nnx_conv(sizes, algorithm, c, k, kernel, strides, padding, dilation, groups, x_shape):
    mesh = jaxcnn.make_mesh(**sizes)
    kw = dict(strides=strides, padding=padding, kernel_dilation=dilation, feature_group_count=groups)
    ours = jnn.Conv(c, k, kernel, mesh=mesh, algorithm=algorithm, rngs=nnx.Rngs(0), **kw)
    ref = nnx.Conv(c, k, kernel, rngs=nnx.Rngs(0), **kw)
    ref.bias[...] = jax.random.normal(jax.random.key(3), (k,))
    ours.bias[...] = ref.bias[...]
    assert ours.kernel[...].shape == (*kernel, c // groups, k)
    np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(ref.kernel[...]))
    layout = jaxcnn.conv_layout(
        jaxcnn.conv_geometry(x_shape, ours.kernel[...].shape, feature_group_count=groups),
        mesh=mesh,
        algorithm=algorithm,
    )
    assert ours.input_spec == layout.x_spec and ours.output_spec == layout.y_spec
    x = jax.random.normal(jax.random.key(1), x_shape)
    y, g, gx = nnx.jit(_loss_and_grads)(ours, x)
    y_ref, g_ref, gx_ref = nnx.jit(_loss_and_grads)(ref, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(gx_ref), rtol=RTOL, atol=ATOL)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            np.asarray(g[name][...]), np.asarray(g_ref[name][...]), rtol=RTOL, atol=1e-4, err_msg=name
        )


def test_nd_conv_rejects_bad_kernel_size_and_placements():
    with pytest.raises(ValueError, match=r"kernel_size must have 1, 2 or 3 entries"):
        jnn.Conv(4, 4, (3, 3, 3, 3), mesh=jaxcnn.make_mesh(n=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"mesh axis 'd' has size 2 but the layer is a 2-D convolution"):
        jnn.Conv(4, 4, (3, 3), mesh=jaxcnn.make_mesh(d=2), algorithm="spatial", rngs=nnx.Rngs(0))
    placement = jnn.parse_placement("spatial@d=2,h=2,w=2", jaxcnn.make_mesh(n=8))
    assert dict(placement.mesh.shape) == dict(n=1, d=2, h=2, w=2, k=1, c=1)
    assert format_placement("spatial", dict(placement.mesh.shape)) == "spatial@d=2,h=2,w=2"


def test_parameters_carry_the_layout_and_are_created_sharded():
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    geom = jaxcnn.conv_geometry((2, 4, 4, 8), (3, 3, 8, 8))
    layout = jaxcnn.conv_layout(geom, mesh=mesh, algorithm="3d")
    make = lambda: jnn.Conv(8, 8, (3, 3), mesh=mesh, algorithm="3d", rngs=nnx.Rngs(0))  # noqa: E731
    specs = nnx.get_partition_spec(nnx.state(nnx.eval_shape(make)))
    assert specs["kernel"].get_value() == layout.kernel_spec
    assert specs["bias"].get_value() == P(("k", "c"))
    shardings = jax.tree.map(lambda p: NamedSharding(mesh, p), specs)
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    assert state["kernel"][...].sharding.spec == layout.kernel_spec
    np.testing.assert_array_equal(np.asarray(state["kernel"][...]), np.asarray(make().kernel[...]))
    # Channels the layout pads (C=6 → 8) cannot be stored in its layout: the kernel is replicated.
    padded = jnn.Conv(6, 8, (3, 3), mesh=mesh, algorithm="3d", rngs=nnx.Rngs(0))
    assert padded.kernel[...].sharding.spec == P(None, None, None, None)
    assert padded.input_spec == layout.x_spec and padded.output_spec == layout.y_spec


def test_nnx_conv_hook_equals_plain_nnx_conv():
    mesh = jaxcnn.make_mesh(k=4)
    hook = jnn.conv_general_dilated(mesh, "filter")
    kw = dict(strides=(2, 1), padding="SAME")
    ours = nnx.Conv(8, 4, (3, 3), conv_general_dilated=hook, rngs=nnx.Rngs(0), **kw)
    ref = nnx.Conv(8, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
    x = jax.random.normal(jax.random.key(2), (2, 3, 5, 6, 8))  # two batch dims, flattened by nnx.Conv
    apply = nnx.jit(lambda layer, x: layer(x))
    np.testing.assert_allclose(np.asarray(apply(ours, x)), np.asarray(apply(ref, x)), rtol=RTOL, atol=ATOL)
    assert hook == jnn.conv_general_dilated(mesh, "filter")  # hashable by value: one jit cache entry


def test_hook_handles_other_dimension_numbers():
    mesh = jaxcnn.make_mesh(n=2, h=2)
    hook = jnn.conv_general_dilated(mesh, "spatial")
    lhs = jax.random.normal(jax.random.key(0), (4, 3, 9, 7))  # NCHW
    rhs = jax.random.normal(jax.random.key(1), (5, 3, 3, 2))  # OIHW
    args = ((2, 1), ((1, 1), (0, 1)))
    kw = dict(rhs_dilation=(1, 2), dimension_numbers=("NCHW", "OIHW", "NHCW"))
    np.testing.assert_allclose(
        np.asarray(hook(lhs, rhs, *args, **kw)),
        np.asarray(lax.conv_general_dilated(lhs, rhs, *args, **kw)),
        rtol=RTOL,
        atol=ATOL,
    )


def test_hook_rejects_what_jaxcnn_does_not_compute():
    hook = jnn.conv_general_dilated(jaxcnn.make_mesh(n=2), "data")
    x, k = jnp.ones((2, 4, 4, 4)), jnp.ones((3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    with pytest.raises(NotImplementedError, match="batch-grouped"):
        hook(x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME", dimension_numbers=dn, batch_group_count=2)
    # Feature groups are computed (tests/algorithms/test_grouped.py covers every algorithm).
    np.testing.assert_allclose(
        np.asarray(hook(x, k, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)),
        np.asarray(
            lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
        ),
        rtol=RTOL,
        atol=ATOL,
    )
    with pytest.raises(NotImplementedError, match="lhs"):
        hook(x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME", lhs_dilation=(2, 2), dimension_numbers=dn)
    with pytest.raises(ValueError, match="'k'"):
        jnn.conv_general_dilated(jaxcnn.make_mesh(k=2), "data")


def test_positional_arguments_and_int_kernel_size_as_nnx_conv():
    # functools.partial(jaxcnn.nn.Conv, mesh=..., algorithm=...) stands in for nnx.Conv in code written
    # for it: in_features, out_features, kernel_size, strides positionally; an int kernel_size is 1-D.
    mesh = jaxcnn.make_mesh(n=8)
    conv = functools.partial(jnn.Conv, mesh=mesh, algorithm="data")
    for args in ((4, 8, 3), (4, 8, (3, 3), 2), (4, 8, (3, 3, 3), (1, 2, 2))):
        ours, ref = conv(*args, rngs=nnx.Rngs(0)), nnx.Conv(*args, rngs=nnx.Rngs(0))
        assert ours.kernel[...].shape == ref.kernel[...].shape and ours.strides == ref.strides, args
    x = jax.random.normal(jax.random.key(0), (8, 12, 4))  # (N, W, C): 1-D, as nnx.Conv(4, 8, 3) reads it
    ours, ref = conv(4, 8, 3, rngs=nnx.Rngs(0)), nnx.Conv(4, 8, 3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
