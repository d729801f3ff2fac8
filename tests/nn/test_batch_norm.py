"""jaxcnn.nn.BatchNorm against single-device flax.nnx.BatchNorm: outputs, running stats, grads, eval.

Tolerance: fp32, rtol 1e-5 / atol 1e-5 (statistics are sums over at most 8*7*6 = 336 terms, in another
order than the reference's).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn
from tests.utils import first_fast

TOL = dict(rtol=1e-5, atol=1e-5)


def _step(bn, x):
    def loss(bn, x):
        y = bn(x)
        return jnp.sum(y * jnp.sin(3 * y)), y

    (_, y), (g_bn, g_x) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(bn, x)
    return y, g_bn, g_x


CASES = [
    # mesh sizes, activation spec, shape (N, H, W, C) - uneven splits on purpose in the second and third,
    # fast (E[x²]-E[x]²) or two-pass variance
    (dict(n=2, h=2, k=2), P("n", "h", None, "k"), (4, 6, 5, 8), True),
    (dict(n=2, h=2, w=2), P("n", "h", "w"), (6, 7, 5, 3), False),
    (dict(n=2, k=2, c=2), P("n", None, None, ("k", "c")), (8, 3, 4, 6), True),
]


@pytest.mark.parametrize("sizes,spec,shape,fast", first_fast(CASES))
def test_batch_norm_equals_nnx_batch_norm(sizes, spec, shape, fast):
    mesh = jaxcnn.make_mesh(**sizes)
    c = shape[-1]
    kw = dict(momentum=0.8, epsilon=1e-3, use_fast_variance=fast)
    ours = jnn.BatchNorm(c, mesh=mesh, spec=spec, rngs=nnx.Rngs(0), **kw)
    ref = nnx.BatchNorm(c, rngs=nnx.Rngs(0), **kw)
    for m in (ours, ref):
        m.scale[...] = 1 + 0.1 * jnp.arange(c, dtype=jnp.float32)
        m.bias[...] = 0.05 * jnp.arange(c, dtype=jnp.float32)
    step = nnx.jit(_step)
    for seed in range(2):  # two training steps: running statistics accumulate
        x = 3 + 2 * jax.random.normal(jax.random.key(seed), shape)
        y, g, gx = step(ours, x)
        y_ref, g_ref, gx_ref = step(ref, x)
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), **TOL)
        np.testing.assert_allclose(np.asarray(gx), np.asarray(gx_ref), rtol=1e-4, atol=1e-4)
        for name in ("scale", "bias"):
            np.testing.assert_allclose(
                np.asarray(g[name][...]), np.asarray(g_ref[name][...]), rtol=1e-4, atol=1e-4
            )
        for name in ("mean", "var"):
            np.testing.assert_allclose(
                np.asarray(getattr(ours, name)[...]), np.asarray(getattr(ref, name)[...]), **TOL
            )
    ours.eval()
    ref.eval()
    x = jax.random.normal(jax.random.key(7), shape)
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(ours, x)), np.asarray(ref(x)), **TOL)


def test_batch_stats_reduce_over_every_row_axis():
    """The psum covers n, h and w: statistics equal those of the whole (gathered) batch."""
    mesh = jaxcnn.make_mesh(n=2, h=2, w=2)
    x = jax.random.normal(jax.random.key(0), (4, 4, 6, 5))
    mean, var = jax.jit(lambda x: jnn.batch_stats(x, P("n", "h", "w"), mesh))(x)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x).mean((0, 1, 2)), **TOL)
    np.testing.assert_allclose(np.asarray(var), np.asarray(x).var((0, 1, 2)), **TOL)
