"""create_sharded / variable_shardings: values equal eager construction, shardings follow the metadata."""

import chex
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn


class _Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
        self.conv = jnn.Conv(8, 8, (3, 3), mesh=mesh, algorithm="3d", rngs=rngs)
        self.bn = jnn.BatchNorm(8, mesh=mesh, spec=self.conv.output_spec, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)  # no mesh metadata: replicated on the default mesh


def test_create_sharded_equals_eager_construction():
    default = jaxcnn.make_mesh(n=8)
    rngs = nnx.Rngs(0)
    built = jnn.create_sharded(_Block, rngs, default_mesh=default)
    eager_rngs = nnx.Rngs(0)
    eager = _Block(eager_rngs)
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(built)), nnx.to_pure_dict(nnx.state(eager)))
    assert int(rngs.params.count[...]) == int(eager_rngs.params.count[...]) == 6  # advanced alike
    assert built.conv.kernel[...].sharding.spec == P(None, None, ("c", "n"), "k")
    assert built.bn.mean[...].sharding.spec == P(("k", "c"))
    assert built.head.kernel[...].sharding.mesh == default
    shardings = jnn.variable_shardings(built, default)
    assert shardings["bn"]["var"].get_value() == built.bn.var[...].sharding
