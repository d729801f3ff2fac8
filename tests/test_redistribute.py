"""Explicit layout changes (jaxcnn.redistribute): values and gradients unchanged, planned steps equal
to the collectives in the compiled HLO, and the planned bytes equal to the metered bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn import measure
from jaxcnn.redistribute import plan_for, redistribute, refine

# (source mesh, spec) -> (target mesh, spec), with the kinds the plan must use.
CASES = [
    ((dict(n=8), P("n")), (dict(n=2, h=2, w=2), P("n", "h", "w")), {"all-to-all": 1}),
    ((dict(n=2, h=2, w=2), P("n", "h", "w")), (dict(n=8), P("n")), {"all-to-all": 1}),
    ((dict(n=2, k=2, c=2), P("n", None, None, ("k", "c"))),
     (dict(n=2, k=2, c=2), P("n", None, None, ("c", "k"))), {"collective-permute": 1}),
    ((dict(n=8), P("n")), (dict(k=8), P(None, None, None, "k")), {"all-to-all": 1}),
    ((dict(n=2, k=4), P("n", None, None, "k")), (dict(n=4, k=2), P("n", None, None, "k")),
     {"collective-permute": 1, "all-to-all": 1}),
    ((dict(c=8), P(None, None, None, "c")), (dict(n=2, c=4), P("n", None, None, "c")),
     {"collective-permute": 1, "all-to-all": 1}),
    ((dict(n=8), P("n")), (dict(n=4, c=2), P("n")), {"all-gather": 1}),  # target replicated over c
    ((dict(n=4, c=2), P("n")), (dict(n=8), P("n")), {}),  # replicated -> split: a local slice
    ((dict(n=8), P("n")), (dict(n=8), P("n")), {}),
]  # fmt: skip


def _sharding(mesh_sizes, spec):
    return NamedSharding(jaxcnn.make_mesh(**mesh_sizes), spec)


@pytest.mark.parametrize("src,dst,kinds", CASES)
def test_values_gradients_and_bytes(src, dst, kinds):
    shape = (8, 8, 8, 16)
    a, b = _sharding(*src), _sharding(*dst)
    x = jax.random.normal(jax.random.key(0), shape)
    xa = jax.device_put(x, a)
    y = jax.jit(lambda v: redistribute(v, a, b), out_shardings=b)(xa)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    weights = jnp.arange(16.0)
    g = jax.jit(jax.grad(lambda v: (redistribute(v, a, b) ** 2 * weights).sum()))(xa)
    np.testing.assert_allclose(np.asarray(g), 2 * np.asarray(x) * np.arange(16.0), rtol=1e-6)
    r = plan_for(shape, a, b)
    assert r.counts() == kinds
    abstract = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=a)
    forward = measure.measure(lambda v: redistribute(v, a, b), abstract)
    assert forward.max_bytes == r.bytes(4)
    assert {k: s.count for k, s in forward.by_kind.items() if s.count} == kinds


def test_backward_is_the_reverse_change():
    a, b = _sharding(dict(n=8), P("n")), _sharding(dict(n=4, c=2), P("n"))
    shape = (8, 4, 4, 8)
    fwd, bwd = measure.measure_fwd_bwd(
        lambda v: redistribute(v, a, b), jax.ShapeDtypeStruct(shape, jnp.float32, sharding=a)
    )
    assert fwd.max_bytes == plan_for(shape, a, b).bytes(4) > 0
    assert bwd.max_bytes == plan_for(shape, b, a).bytes(4) == 0  # replicated -> split: a slice, not a sum


def test_uneven_shapes_and_integers():
    a, b = _sharding(dict(n=8), P("n")), _sharding(dict(n=2, h=2, w=2), P("n", "h", "w"))
    x = jnp.arange(6 * 5 * 3 * 2, dtype=jnp.float32).reshape(6, 5, 3, 2)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: redistribute(v, a, b))(x)), np.asarray(x))
    labels = jnp.arange(8, dtype=jnp.int32)
    c = _sharding(dict(n=2, k=4), P("n"))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: redistribute(v, a, c))(labels)), np.arange(8))


def test_meshes_without_a_common_refinement_fall_back_to_gather_all():
    assert refine((2, 3), (3, 2)) is None and refine((8,), (2, 2, 2)) == (2, 2, 2)
    devices = jax.devices()[:6]
    a = NamedSharding(jaxcnn.make_mesh(n=2, k=3, devices=devices), P("n", None, None, "k"))
    b = NamedSharding(jaxcnn.make_mesh(n=3, k=2, devices=devices), P("n", None, None, "k"))
    x = jax.random.normal(jax.random.key(2), (6, 2, 2, 6))
    y = jax.jit(lambda v: redistribute(v, a, b))(jax.device_put(x, a))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    assert [s.kind for s in plan_for(x.shape, a, b).steps] == ["gather-all"]


def test_meshes_must_order_the_same_devices_alike():
    a = _sharding(dict(n=8), P("n"))
    b = NamedSharding(jaxcnn.make_mesh(n=8, devices=jax.devices()[::-1]), P("n"))
    with pytest.raises(ValueError, match="same devices in the same order"):
        plan_for((8, 2), a, b)
