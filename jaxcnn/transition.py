"""Bytes moved when an activation changes layout (between two consecutive layers, or any reshard).

A layout is a ``PartitionSpec`` on a mesh; each device holds, per array dimension, a contiguous block
range (JAX's ceil-sized blocks). Redistributing from layout A to layout B, a device receives what it
must hold under B and did not hold under A: ``|B_d| - |A_d ∩ B_d|`` elements. That is exactly what a
bandwidth-optimal collective delivers (S·(p-1)/p for an all-gather or all-to-all, S for a
collective-permute; ``docs/conventions.md``): the least any redistribution can move, the bound
:mod:`jaxcnn.redistribute`'s planned collectives are compared with. The backward pass moves the
cotangent the other way (``|A_d| - |A_d ∩ B_d|``).

Two entry points share one vectorised computation:

- :func:`transition_traffic` / :func:`transition_bytes` for concrete specs on meshes (``Mesh`` with
  device ids matched across meshes, or ``AbstractMesh`` for fake device counts), used by the layers;
- :func:`layout_change_bytes` for ``(spec, grid)`` pairs, used by the planner (devices numbered
  row-major over ``(n, d, h, w, k, c)`` as :func:`jaxcnn.make_mesh` lays them out).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.mesh import AXES

ShardingLike = P | NamedSharding


def block_ranges(
    shape: Sequence[int], spec: P, axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per device (row-major over the mesh axes) and dimension, the ``[lo, hi)`` block it holds.

    Returns:
      ``(lo, hi)``, integer arrays of shape ``(devices, ndim)``.

    Raises:
      ValueError: the spec has more entries than ``shape`` has dimensions, or names an unknown axis.
    """
    entries = list(spec)
    if len(entries) > len(shape):
        raise ValueError(f"PartitionSpec {spec} has {len(entries)} entries for a rank-{len(shape)} array")
    entries += [None] * (len(shape) - len(entries))
    sizes = dict(zip(axis_names, (int(s) for s in axis_sizes), strict=True))
    coords = dict(zip(axis_names, (c.ravel() for c in np.indices(list(sizes.values()))), strict=True))
    num = math.prod(sizes.values())
    lo = np.zeros((num, len(shape)), np.int64)
    hi = np.zeros((num, len(shape)), np.int64)
    for dim, (extent, entry) in enumerate(zip(shape, entries, strict=True)):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        unknown = [a for a in names if a not in sizes]
        if unknown:
            raise ValueError(f"PartitionSpec {spec} names axes {unknown} not in the mesh {tuple(axis_names)}")
        index = np.zeros(num, np.int64)
        for a in names:
            index = index * sizes[a] + coords[a]
        block = -(-extent // math.prod(sizes[a] for a in names))
        lo[:, dim] = np.minimum(index * block, extent)
        hi[:, dim] = np.minimum((index + 1) * block, extent)
    return lo, hi


def _received(src: tuple[np.ndarray, np.ndarray], dst: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Elements each device must receive to go from ranges ``src`` to ranges ``dst``."""
    (lo_a, hi_a), (lo_b, hi_b) = src, dst
    overlap = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None), axis=1)
    return np.prod(hi_b - lo_b, axis=1) - overlap


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Bytes received per device by a redistribution.

    Attributes:
      per_device: bytes received by each device, in the source mesh's flat device order.
    """

    per_device: tuple[int, ...]

    @property
    def max_bytes(self) -> int:
        """The largest entry (the critical path of a bandwidth-bound collective)."""
        return max(self.per_device, default=0)

    @property
    def total_bytes(self) -> int:
        return sum(self.per_device)


def _ranges_by_device(s: ShardingLike, mesh: Mesh | AbstractMesh | None, shape: Sequence[int]):
    if isinstance(s, NamedSharding):
        spec, mesh = s.spec, s.mesh
    elif mesh is None:
        raise ValueError(f"a PartitionSpec ({s}) needs a mesh")
    else:
        spec = s
    names = tuple(mesh.axis_names)
    lo, hi = block_ranges(shape, spec, names, [mesh.shape[a] for a in names])
    ids = [d.id for d in mesh.devices.flat] if isinstance(mesh, Mesh) else list(range(len(lo)))
    return ids, lo, hi


def transition_traffic(
    from_spec: ShardingLike,
    to_spec: ShardingLike,
    shape: Sequence[int],
    mesh: Mesh | AbstractMesh | None = None,
    dtype="float32",
) -> Traffic:
    """Bytes each device receives when an array of ``shape`` moves from ``from_spec`` to ``to_spec``.

    Args:
      from_spec, to_spec: PartitionSpecs on ``mesh``, or NamedShardings (then on their own meshes,
        which must hold the same devices; devices are matched by id).
      shape: the global shape.
      mesh: mesh of PartitionSpec arguments; a ``Mesh`` or an ``AbstractMesh`` (for fake device counts).
      dtype: element type.

    Raises:
      ValueError: a PartitionSpec without a mesh, or meshes over different devices.
    """
    ids_a, lo_a, hi_a = _ranges_by_device(from_spec, mesh, shape)
    ids_b, lo_b, hi_b = _ranges_by_device(to_spec, mesh, shape)
    if sorted(ids_a) != sorted(ids_b):
        raise ValueError("from_spec and to_spec live on meshes over different devices")
    order = np.argsort(ids_b)[np.argsort(np.argsort(ids_a))]  # row of device ids_a[i] in the B arrays
    received = _received((lo_a, hi_a), (lo_b[order], hi_b[order])) * np.dtype(dtype).itemsize
    return Traffic(tuple(int(v) for v in received))


def transition_bytes(
    from_spec: ShardingLike,
    to_spec: ShardingLike,
    shape: Sequence[int],
    mesh: Mesh | AbstractMesh | None = None,
    dtype="float32",
) -> int:
    """Maximum over devices of the bytes received by the redistribution (see :func:`transition_traffic`)."""
    return transition_traffic(from_spec, to_spec, shape, mesh, dtype).max_bytes


def layout_change_bytes(
    shape: Sequence[int],
    src: tuple[P, Mapping[str, int]],
    dst: tuple[P, Mapping[str, int]],
    itemsize: int = 4,
) -> tuple[float, float]:
    """Max bytes received per device to go from layout ``src`` to ``dst`` (forward, backward).

    Args:
      shape: global array shape.
      src, dst: ``(spec, grid)`` pairs; both grids must use the same number of devices.
      itemsize: bytes per element.
    """
    (spec_a, grid_a), (spec_b, grid_b) = src, dst
    sizes_a = [int(grid_a.get(a, 1)) for a in AXES]
    sizes_b = [int(grid_b.get(a, 1)) for a in AXES]
    if math.prod(sizes_a) != math.prod(sizes_b):
        raise ValueError(f"grids {dict(grid_a)} and {dict(grid_b)} use different numbers of devices")
    a = block_ranges(shape, spec_a, AXES, sizes_a)
    b = block_ranges(shape, spec_b, AXES, sizes_b)
    return float(_received(a, b).max() * itemsize), float(_received(b, a).max() * itemsize)
