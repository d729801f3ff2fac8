"""jaxcnn.nn.linen.Conv against flax.linen.Conv with the same parameters (fp32, rtol 1e-5)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn
from jaxcnn.nn import linen as jlinen


def test_linen_conv_equals_flax_linen_conv():
    mesh = jaxcnn.make_mesh(n=2, h=2, k=2)
    kw = dict(features=8, kernel_size=(3, 3), strides=(2, 1), padding="SAME", kernel_dilation=1)
    ours = jlinen.Conv(mesh=mesh, algorithm="2d", **kw)
    ref = nn.Conv(**kw)
    x = jax.random.normal(jax.random.key(0), (4, 9, 6, 8))
    variables = ours.init(jax.random.key(1), x)
    specs = nn.get_partition_spec(variables)["params"]
    layout = jaxcnn.conv_layout(
        jaxcnn.conv_geometry(x.shape, (3, 3, 8, 8), (2, 1)), mesh=mesh, algorithm="2d"
    )
    assert specs["kernel"] == layout.kernel_spec
    params = nn.unbox(variables)["params"]
    params = {"kernel": params["kernel"], "bias": jax.random.normal(jax.random.key(2), (8,))}

    def loss(apply, params, x):
        y = apply({"params": params}, x)
        return jnp.sum(y * jnp.sin(y)), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)(
        ours.apply, params, x
    )
    (_, y_ref), grads_ref = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(ref.apply, params, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-5, atol=1e-4)
