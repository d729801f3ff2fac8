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

from jaxcnn.conv import known_layout, same_device_order
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
    """Moves ``x`` to the layout ``to``, possibly on another mesh over the same devices.

    Results of layers on differently shaped meshes (``jaxcnn.make_mesh(c=8)`` and
    ``jaxcnn.make_mesh(n=2, c=4)``) combine as they are (they are named on the common mesh of their
    devices, :mod:`jaxcnn.common_mesh`; XLA then moves one operand as it sees fit). ``reshard`` moves
    one onto the other's layout with collectives jaxcnn plans and prices, and it is the way to
    combine results whose meshes have no common mesh (axis sizes factored in different orders).

    How it moves: with ``src`` (the NamedSharding ``x`` is laid out as; under ``jit`` the caller
    asserts it, e.g. the producing layer's ``NamedSharding(mesh, layout.y_spec)``), or eagerly on a
    concrete ``jax.Array`` with a NamedSharding (then ``src`` defaults to ``x.sharding``), the move
    is explicit (:func:`jaxcnn.redistribute.redistribute`: planned collectives, priced by
    :func:`jaxcnn.redistribute.cost`); otherwise (a traced value without ``src``) it is one
    sharding constraint, which XLA's SPMD partitioner lowers as it sees fit (sometimes by
    replicating the array first). Works under ``jit`` and ``grad`` (the cotangent moves back).

    Example::

        m1, m2 = jaxcnn.make_mesh(c=8), jaxcnn.make_mesh(n=2, c=4)
        y1 = jaxcnn.conv2d(x, k1, mesh=m1, algorithm="channel")  # P(None, None, None, "c") on m1
        y2 = jaxcnn.conv2d(x, k2, mesh=m2, algorithm="channel")  # P("n", None, None, "c") on m2
        geom = jaxcnn.layer_geometry(x, k1)
        s1 = NamedSharding(m1, jaxcnn.conv_layout(geom, mesh=m1, algorithm="channel").y_spec)
        s2 = NamedSharding(m2, jaxcnn.conv_layout(geom, mesh=m2, algorithm="channel").y_spec)
        y = y1 + jaxcnn.nn.reshard(y2, to=s1, src=s2)  # on m1, in y1's layout

    Args:
      x: the array.
      to: the target layout: a NamedSharding, or a PartitionSpec on ``mesh``.
      mesh: the mesh of a PartitionSpec ``to``.
      src: the NamedSharding ``x`` is laid out as (its mesh must hold the same devices in the same
        order as the target's).

    Returns:
      ``x`` (values unchanged) laid out as ``to``, on ``to``'s mesh.

    Raises:
      ValueError: ``to`` is a PartitionSpec without ``mesh``, or ``src`` lies on other devices (or in
        another order) than ``to``.
    """
    dst = _named(to, mesh)
    if src is None:
        known = known_layout(x)
        if known is not None and known != dst and same_device_order(known.mesh, dst.mesh):
            src = known
    if src is not None:
        x = redistribute(x, src, dst)  # its result may name an internal (finer) mesh: relabel below
    return lax.with_sharding_constraint(x, dst)
