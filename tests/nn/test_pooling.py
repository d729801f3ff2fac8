"""Distributed pooling against flax.nnx.max_pool / avg_pool and jnp.mean (fp32, rtol 1e-6, atol 1e-6:
window sums of at most 9 terms, whose cancellation makes a relative bound alone too strict).

All window/stride/padding combinations run in one compiled program per mesh (one compilation).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn
from tests.utils import first_fast

TOL = dict(rtol=1e-6, atol=1e-6)

# (window, stride, padding); windows / strides are (w, w-1 or w) / (s, max(1, s-1)) to be non-square
GRID = [*itertools.product((2, 3), (1, 2, 3), ("SAME", "VALID")), (3, 2, ((1, 0), (2, 1)))]
MULTI_HOP = [(3, 1, "SAME"), (3, 3, "VALID"), (2, 2, ((0, 1), (1, 1)))]


def _args(window, stride, padding):
    return (window, window - 1 if window == 3 else window), (stride, max(1, stride - 1)), padding


def _all_pools(x, mesh, spec, combos):
    """Every pooling of ``x``: jaxcnn's on ``mesh`` (``mesh=None``: Flax's own functions)."""
    outs = []
    for combo in combos:
        args = _args(*combo)
        if mesh is None:
            outs += [nnx.max_pool(x, *args), nnx.avg_pool(x, *args)]
            outs += [nnx.avg_pool(x, *args, count_include_pad=False)] if _padded(combo) else []
        else:
            outs.append(jnn.max_pool(x, *args, mesh=mesh, spec=spec))
            outs.append(jnn.avg_pool(x, *args, mesh=mesh, spec=spec))
            if _padded(combo):
                outs.append(jnn.avg_pool(x, *args, count_include_pad=False, mesh=mesh, spec=spec))
    return outs


def _padded(combo):
    """count_include_pad=False only changes the (static) divisor: checked where there is padding."""
    return combo[2] != "VALID"


def _labels(combos):
    kinds = ("max", "avg", "avg without padding")
    return [f"{k} pool, window/strides/padding {_args(*c)}" for c in combos for k in kinds[: 2 + _padded(c)]]


def _loss(outs):  # a different weight for every output, so each one's gradient is tested
    return sum(jnp.sum(o * jnp.cos(o + i)) for i, o in enumerate(outs))


@pytest.mark.parametrize(
    "sizes,spec,shape,combos",
    first_fast(
        [
            (dict(h=4, w=2), P(None, "h", "w"), (1, 8, 6, 2), MULTI_HOP),  # 2-row blocks: multi-hop halos
            (dict(h=2, w=2, n=2), P("n", "h", "w"), (2, 9, 7, 3), GRID),  # uneven blocks
        ]
    ),
)
def test_pooling_equals_flax(sizes, spec, shape, combos):
    mesh = jaxcnn.make_mesh(**sizes)
    x = jax.random.normal(jax.random.key(0), shape)

    def run(m):
        return jax.jit(
            lambda x: (
                _all_pools(x, m, spec, combos),
                jax.grad(lambda x: _loss(_all_pools(x, m, spec, combos)))(x),
            )
        )(x)

    (outs, grad), (refs, grad_ref) = run(mesh), run(None)
    for msg, got, want in zip(_labels(combos), outs, refs, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL, err_msg=msg)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), rtol=1e-5, atol=1e-5)


def test_global_avg_pool_equals_mean():
    mesh = jaxcnn.make_mesh(n=2, h=2, k=2)
    spec = P("n", "h", None, "k")
    x = jax.random.normal(jax.random.key(1), (4, 5, 3, 6))
    y = jax.jit(lambda x: jnn.global_avg_pool(x, mesh=mesh, spec=spec))(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x).mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jnn.global_avg_pool(x)), np.asarray(x).mean((1, 2)), rtol=1e-5, atol=1e-6
    )
