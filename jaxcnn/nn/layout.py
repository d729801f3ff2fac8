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

:func:`transition_traffic` counts the bytes each device receives under the CONVENTIONS rule of
bandwidth-optimal collectives: every element a device must hold afterwards and did not hold before,
once. That is exactly S·(p−1)/p for an all-gather or all-to-all and S for a collective-permute; a
lowering that moves more (XLA sometimes combines an all-to-all with a permute across meshes) is above
this bound.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.nn import specs

ShardingLike = P | NamedSharding


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


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Bytes received per device by a redistribution.

    Attributes:
      per_device: bytes received by each device, in the source mesh's flat device order.
      max_bytes: the largest entry (the critical path of a bandwidth-bound collective).
      total_bytes: the sum over devices.
    """

    per_device: tuple[int, ...]

    @property
    def max_bytes(self) -> int:
        return max(self.per_device, default=0)

    @property
    def total_bytes(self) -> int:
        return sum(self.per_device)


def _boxes(spec: P, shape: Sequence[int], mesh: Mesh | AbstractMesh) -> dict[object, list[tuple[int, int]]]:
    """Device key → the half-open index range it holds in each dimension (JAX's ceil-sized blocks)."""
    entries = specs.normalized(spec, len(shape))
    names = tuple(mesh.axis_names)
    sizes = tuple(int(mesh.shape[a]) for a in names)
    devices = mesh.devices if isinstance(mesh, Mesh) else None
    boxes: dict[object, list[tuple[int, int]]] = {}
    for flat, coord in enumerate(itertools.product(*(range(s) for s in sizes))):
        where = dict(zip(names, coord, strict=True))
        box = []
        for dim, axes in zip(shape, entries, strict=True):
            index = 0
            for a in axes:
                index = index * int(mesh.shape[a]) + where[a]
            block = -(-dim // specs.parts(axes, mesh))
            box.append((min(index * block, dim), min((index + 1) * block, dim)))
        key = devices[coord].id if devices is not None else flat
        boxes[key] = box
    return boxes


def _volume(box: Sequence[tuple[int, int]]) -> int:
    return math.prod(max(0, hi - lo) for lo, hi in box)


def transition_traffic(
    from_spec: ShardingLike,
    to_spec: ShardingLike,
    shape: Sequence[int],
    mesh: Mesh | AbstractMesh | None = None,
    dtype: jnp.dtype | str = jnp.float32,
) -> Traffic:
    """Bytes each device receives when an array of ``shape`` moves from ``from_spec`` to ``to_spec``.

    Args:
      from_spec, to_spec: PartitionSpecs on ``mesh``, or NamedShardings (then on their own meshes,
        which must hold the same devices; devices are matched by id).
      shape: the global shape.
      mesh: mesh of PartitionSpec arguments; a ``Mesh`` or an ``AbstractMesh`` (for fake device counts).
      dtype: element type.

    Returns:
      A :class:`Traffic` (per device, max, total).

    Raises:
      ValueError: a PartitionSpec without a mesh, or meshes over different devices.
    """

    def resolve(s: ShardingLike) -> tuple[P, Mesh | AbstractMesh]:
        if isinstance(s, NamedSharding):
            return s.spec, s.mesh
        if mesh is None:
            raise ValueError(f"a PartitionSpec ({s}) needs a mesh")
        return s, mesh

    src_spec, src_mesh = resolve(from_spec)
    dst_spec, dst_mesh = resolve(to_spec)
    src = _boxes(src_spec, shape, src_mesh)
    dst = _boxes(dst_spec, shape, dst_mesh)
    if set(src) != set(dst):
        raise ValueError("from_spec and to_spec live on meshes over different devices")
    itemsize = np.dtype(dtype).itemsize
    per_device = []
    for key, have in src.items():
        want = dst[key]
        overlap = [(max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(have, want, strict=True)]
        per_device.append((_volume(want) - _volume(overlap)) * itemsize)
    return Traffic(tuple(per_device))


def transition_bytes(
    from_spec: ShardingLike,
    to_spec: ShardingLike,
    shape: Sequence[int],
    mesh: Mesh | AbstractMesh | None = None,
    dtype: jnp.dtype | str = jnp.float32,
) -> int:
    """Maximum over devices of the bytes received by the redistribution (see :func:`transition_traffic`)."""
    return transition_traffic(from_spec, to_spec, shape, mesh, dtype).max_bytes
