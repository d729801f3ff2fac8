"""Layout chaining: moving an activation from one layer's output layout to the next layer's input layout.

A convolution's output layout (its ``y_spec``) is the next layer's input; when the next layer wants a
different one (``x_spec``, possibly on a differently shaped mesh over the same devices, see
:mod:`jaxcnn.nn.placement`), :func:`reshard` moves it with one sharding constraint, which XLA's SPMD
partitioner lowers to the collective the two layouts imply (verified in ``tests/nn/test_layout.py``):

- same spec: nothing;
- a dimension split finer or coarser: an all-gather / a local slice;
- a dimension's split moved to another dimension: an all-to-all;
- 3d → 3d (y channels over ``("k", "c")``, x channels over ``("c", "k")``): the same block sizes in
  another device order, one **collective-permute** of the local block (devices whose block index is
  the same in both orders, e.g. the first and the last, receive nothing). It vanishes when the next
  layer's mesh swaps the sizes and devices of k and c (then ``("c", "k")`` of the new mesh names the
  same devices as ``("k", "c")`` of the old one); jaxcnn does not do that automatically because it
  changes the next layer's k × c split and therefore its own cost.

:func:`transition_traffic` (defined in :mod:`jaxcnn.planner.transition`, shared with the planner)
counts the bytes each device receives under the CONVENTIONS rule of bandwidth-optimal collectives:
every element a device must hold afterwards and did not hold before, once. That is exactly S·(p−1)/p
for an all-gather or all-to-all and S for a collective-permute; a lowering that moves more (XLA
sometimes combines an all-to-all with a permute across meshes) is above this bound.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import Mesh, NamedSharding

from jaxcnn.planner.transition import ShardingLike, Traffic, transition_bytes, transition_traffic

__all__ = ["Traffic", "reshard", "transition_bytes", "transition_traffic"]


def _named(to: ShardingLike, mesh: Mesh | None) -> NamedSharding:
    if isinstance(to, NamedSharding):
        return to
    if mesh is None:
        raise ValueError(f"a PartitionSpec target ({to}) needs a mesh")
    return NamedSharding(mesh, to)


def reshard(x: jax.Array, to: ShardingLike, *, mesh: Mesh | None = None) -> jax.Array:
    """Moves ``x`` to the layout ``to`` (a NamedSharding, or a PartitionSpec on ``mesh``).

    Works under ``jit`` and ``grad`` (the backward pass moves the cotangent back the same way).
    """
    return lax.with_sharding_constraint(x, _named(to, mesh))
