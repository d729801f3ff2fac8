"""jaxcnn.nn.ConvTranspose against flax.nnx.ConvTranspose: same parameters, same outputs and gradients
(fp32, relative max error 2e-5), sharded parameters, clear errors for what it does not compute."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn
from tests.utils import assert_close, first_fast

RTOL = 2e-5

# (mesh sizes, algorithm, C, K, kernel, strides, padding, use_bias, transpose_kernel)
CASES = [
    (dict(n=2, k=2, c=2), "3d", 8, 8, (3, 3), 2, "SAME", True, False),
    (dict(n=2, h=2, w=2), "spatial", 6, 5, (3, 2), 2, "VALID", False, True),
    (dict(h=2, k=2), "2d", 4, 8, (4, 4), 2, "SAME", True, True),
    (dict(k=4), "filter", 8, 4, (3, 3), (2, 1), ((1, 2), (0, 1)), False, False),
    (dict(n=2, c=4), "channel", 8, 8, (2, 2), 2, 1, True, False),
]


def _loss(layer, x):
    y = layer(x)
    return jnp.sum(y * jnp.cos(y)), y


def _assert_same_layer(ours, ref, x, params=("kernel",)):
    """Output, input gradient and the named parameters' gradients of ``ours`` equal ``ref``'s."""
    grad = nnx.value_and_grad(_loss, argnums=(0, 1), has_aux=True)
    (_, y), (g_ours, gx) = nnx.jit(grad)(ours, x)
    (_, y_ref), (g_ref, gx_ref) = nnx.jit(grad)(ref, x)
    assert_close(y, y_ref, RTOL, "y")
    assert_close(gx, gx_ref, RTOL, "dx")
    for name in params:
        assert_close(g_ours[name][...], g_ref[name][...], RTOL, name)


@pytest.mark.parametrize(
    "sizes,algorithm,c,k,kernel,strides,padding,use_bias,transpose_kernel", first_fast(CASES)
)
def test_conv_transpose_equals_nnx_conv_transpose(
    sizes, algorithm, c, k, kernel, strides, padding, use_bias, transpose_kernel
):
    mesh = jaxcnn.make_mesh(**sizes)
    kw = dict(padding=padding, use_bias=use_bias, transpose_kernel=transpose_kernel)
    ours = jnn.ConvTranspose(c, k, kernel, strides, mesh=mesh, algorithm=algorithm, rngs=nnx.Rngs(0), **kw)
    ref = nnx.ConvTranspose(c, k, kernel, strides, rngs=nnx.Rngs(0), **kw)
    assert isinstance(ours, nnx.ConvTranspose)
    np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(ref.kernel[...]))
    if use_bias:
        ref.bias[...] = jax.random.normal(jax.random.key(3), (k,))
        ours.bias[...] = ref.bias[...]
    else:
        assert ours.bias is None
    x = jax.random.normal(jax.random.key(1), (4, 5, 6, c))
    _assert_same_layer(ours, ref, x, ("kernel", "bias") if use_bias else ("kernel",))


@pytest.mark.parametrize(
    "sizes,algorithm,kernel,x_shape",
    first_fast(
        [
            (dict(d=2, h=2, w=2), "spatial", (3, 3, 2), (2, 4, 5, 3, 4)),  # 3-D, halos along d, h, w
            (dict(w=2, k=2), "2d", (3,), (4, 7, 4)),  # 1-D
        ],
        keep=0,
    ),
)
def test_nd_conv_transpose_equals_nnx(sizes, algorithm, kernel, x_shape):
    mesh = jaxcnn.make_mesh(**sizes)
    ours = jnn.ConvTranspose(4, 6, kernel, 2, mesh=mesh, algorithm=algorithm, rngs=nnx.Rngs(0))
    ref = nnx.ConvTranspose(4, 6, kernel, 2, rngs=nnx.Rngs(0))
    _assert_same_layer(ours, ref, jax.random.normal(jax.random.key(1), x_shape))


@pytest.mark.slow
def test_batch_dimensions_are_flattened_and_restored_as_in_nnx():
    mesh = jaxcnn.make_mesh(n=2)
    ours = jnn.ConvTranspose(3, 4, (3, 3), 2, mesh=mesh, rngs=nnx.Rngs(0))
    ref = nnx.ConvTranspose(3, 4, (3, 3), 2, rngs=nnx.Rngs(0))
    for shape in ((2, 2, 4, 5, 3), (4, 5, 3)):  # two batch dimensions; none
        x = jax.random.normal(jax.random.key(2), shape)
        assert_close(ours(x), ref(x), RTOL, str(shape))


def test_parameters_carry_the_layout_and_are_created_sharded():
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    layout = jaxcnn.conv_layout(jaxcnn.conv_geometry((2, 4, 4, 8), (3, 3, 8, 8)), mesh=mesh, algorithm="3d")
    _, _, c_spec, k_spec = layout.kernel_spec
    layer = jnn.ConvTranspose(8, 8, (3, 3), 2, mesh=mesh, algorithm="3d", rngs=nnx.Rngs(0))
    assert layer.kernel[...].sharding.spec == P(None, None, c_spec, k_spec)
    assert layer.bias[...].sharding.spec == P(("k", "c"))
    # transpose_kernel stores (R, S, K, C): its channel entries are swapped
    swapped = jnn.ConvTranspose(
        8, 8, (3, 3), 2, transpose_kernel=True, mesh=mesh, algorithm="3d", rngs=nnx.Rngs(0)
    )
    assert swapped.kernel[...].sharding.spec == P(None, None, k_spec, c_spec)
    assert layer.input_spec == layout.x_spec and layer.output_spec == layout.y_spec
    # channels the layout pads (K = 6 → 8) are stored replicated
    padded = jnn.ConvTranspose(8, 6, (3, 3), 2, mesh=mesh, algorithm="3d", rngs=nnx.Rngs(0))
    assert padded.kernel[...].sharding.spec == P(None, None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(padding="CIRCULAR"), "padding='CIRCULAR'"),
        (dict(padding="CAUSAL"), "padding='CAUSAL'"),
        (dict(precision=lax.Precision.HIGHEST), "precision=Precision.HIGHEST"),
        (dict(kernel_metadata={}), "kernel_metadata"),
    ],
)
def test_unsupported_options_raise(kwargs, says):
    with pytest.raises(ValueError, match=r"jaxcnn\.nn\.ConvTranspose") as info:
        jnn.ConvTranspose(3, 4, (3, 3), 2, mesh=jaxcnn.make_mesh(n=2), rngs=nnx.Rngs(0), **kwargs)
    assert says in str(info.value)


def test_a_mesh_axis_the_algorithm_does_not_use_raises():
    with pytest.raises(ValueError, match="does not use mesh axis 'k'"):
        jnn.ConvTranspose(3, 4, (3, 3), 2, mesh=jaxcnn.make_mesh(k=2), algorithm="data", rngs=nnx.Rngs(0))
