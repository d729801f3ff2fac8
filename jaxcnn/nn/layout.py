"""Layout chaining: moving an activation from one layer's output layout to the next layer's input layout.

A convolution's output layout (its ``y_spec``) is the next layer's input; when the next layer wants a
different one (``x_spec``, possibly on a differently shaped mesh over the same devices, see
:mod:`jaxcnn.nn.placement`), :func:`reshard` moves it. Given the layout the array is in (``src``), the
move is jaxcnn's own (:func:`jaxcnn.redistribute.redistribute`: an all-to-all, a permute, an all-gather
or a local slice, planned and priced; the models always do this). Without ``src`` it is one sharding
constraint, which XLA's SPMD partitioner lowers as it sees fit (sometimes by replicating the array:
"Involuntary full rematerialization").

:func:`transition_traffic` (:mod:`jaxcnn.transition`) counts the least bytes any redistribution must
receive per device (every element a device must hold afterwards and did not hold before, once; see
``docs/conventions.md``); :func:`jaxcnn.redistribute.cost` gives what the planned collectives move.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import Mesh, NamedSharding

from jaxcnn.redistribute import redistribute
from jaxcnn.transition import ShardingLike, Traffic, transition_bytes, transition_traffic

__all__ = ["Traffic", "reshard", "transition_bytes", "transition_traffic"]


def _named(to: ShardingLike, mesh: Mesh | None) -> NamedSharding:
    if isinstance(to, NamedSharding):
        return to
    if mesh is None:
        raise ValueError(f"a PartitionSpec target ({to}) needs a mesh")
    return NamedSharding(mesh, to)


def reshard(
    x: jax.Array, to: ShardingLike, *, mesh: Mesh | None = None, src: NamedSharding | None = None
) -> jax.Array:
    """Moves ``x`` to the layout ``to`` (a NamedSharding, or a PartitionSpec on ``mesh``).

    With ``src`` (the NamedSharding ``x`` is laid out as), the move is explicit
    (:func:`jaxcnn.redistribute.redistribute`); otherwise a sharding constraint. Works under ``jit``
    and ``grad`` (the backward pass moves the cotangent back).
    """
    if src is not None:
        return redistribute(x, src, _named(to, mesh))
    return lax.with_sharding_constraint(x, _named(to, mesh))
