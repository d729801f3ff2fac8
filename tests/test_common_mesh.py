"""jaxcnn.common_mesh: layouts of every mesh over one device order named on one mesh, unchanged.

The layers-on-two-meshes cases it exists for (``y1 + y2``, jit chains, summed gradients) are in
tests/algorithms/test_mesh_switch.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn import common_mesh

MESHES = [
    ({"c": 8}, P(None, None, None, "c")),
    ({"n": 2, "c": 4}, P("n", None, None, "c")),
    ({"n": 2, "k": 2, "c": 2}, P("n", None, None, ("k", "c"))),
    ({"n": 2, "h": 2, "w": 2}, P("n", "h", "w", None)),
    ({"h": 4, "k": 2}, P(None, "h", None, None)),  # replicated over k
    ({"n": 8}, P(("n",), None, None, None)),
]


@pytest.mark.parametrize(("grid", "spec"), MESHES)
def test_same_layout_on_one_common_mesh(grid, spec):
    mesh = jaxcnn.make_mesh(**grid)
    named = common_mesh.common_sharding(mesh, spec)
    assert named.is_equivalent_to(NamedSharding(mesh, spec), 4)
    assert dict(named.mesh.shape) == {"_u0": 2, "_u1": 2, "_u2": 2}
    assert named.mesh is common_mesh.common_sharding(jaxcnn.make_mesh(c=8), P()).mesh  # one mesh
    x = jax.device_put(jnp.arange(8 * 4 * 4 * 8.0).reshape(8, 4, 4, 8), NamedSharding(mesh, spec))
    shards = {s.device: s.index for s in x.addressable_shards}
    y = jax.device_put(x, named)
    assert {s.device: s.index for s in y.addressable_shards} == shards


def test_axes_factored_in_another_order_get_another_common_mesh():
    """Six devices as n=2, c=3 and as n=3, c=2: primes (2, 3) and (3, 2), two common meshes (combining
    their results needs jaxcnn.reshard); each still names its own layouts exactly."""
    devices = jax.devices()[:6]
    a = jaxcnn.make_mesh(n=2, c=3, devices=devices)
    b = jaxcnn.make_mesh(n=3, c=2, devices=devices)
    sa = common_mesh.common_sharding(a, P("n", "c"))
    sb = common_mesh.common_sharding(b, P("n", "c"))
    assert tuple(sa.mesh.shape.values()) == (2, 3) and tuple(sb.mesh.shape.values()) == (3, 2)
    assert sa.is_equivalent_to(NamedSharding(a, P("n", "c")), 2)
    assert sb.is_equivalent_to(NamedSharding(b, P("n", "c")), 2)


def test_one_device_and_non_arrays_are_left_alone():
    one = jaxcnn.make_mesh()
    assert common_mesh.common_sharding(one, P("n")) is None
    x = jnp.ones((2, 2))
    assert common_mesh.on_common_mesh(x, one, P("n")) is x
    assert common_mesh.on_common_mesh(None, jaxcnn.make_mesh(n=8), P("n")) is None


def test_shard_map_names_its_results_on_the_common_mesh():
    mesh = jaxcnn.make_mesh(n=2, c=4)
    f = common_mesh.shard_map(
        lambda a, b: (a * 2, jax.lax.psum(b, "c")),
        mesh=mesh,
        in_specs=(P("n", "c"), P(None, "c")),
        out_specs=(P("n", "c"), P()),
    )
    a, b = jnp.arange(32.0).reshape(4, 8), jnp.ones((2, 8))
    ya, yb = f(a, b)
    assert ya.sharding.mesh.axis_names == ("_u0", "_u1", "_u2")
    assert ya.sharding.is_equivalent_to(NamedSharding(mesh, P("n", "c")), 2)
    np.testing.assert_array_equal(ya, 2 * a)
    np.testing.assert_array_equal(yb, np.full((2, 2), 4.0))
