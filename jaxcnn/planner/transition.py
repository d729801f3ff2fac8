"""Bytes moved when an activation changes layout between two consecutive layers.

A layout is a ``PartitionSpec`` over a grid (mesh sizes, devices numbered row-major over
``(n, h, w, k, c)`` as :func:`jaxcnn.make_mesh` lays them out). Each device holds, per array
dimension, a contiguous block range; redistributing from layout A to layout B, a device receives
what it needs under B and does not hold under A: ``|B_d| - |A_d ∩ B_d|`` elements. This is what one
all-to-all / collective-permute (or an all-gather, when B replicates) has to deliver; the backward
pass moves the cotangent the other way (``|A_d| - |A_d ∩ B_d|``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcnn.mesh import AXES


def _ranges(shape: Sequence[int], spec: P, grid: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per device and dimension, the [lo, hi) block held: arrays of shape (devices, ndim)."""
    sizes = [int(grid.get(a, 1)) for a in AXES]
    coords = dict(zip(AXES, (c.ravel() for c in np.indices(sizes)), strict=True))
    num = math.prod(sizes)
    entries = list(spec) + [None] * (len(shape) - len(spec))
    lo = np.zeros((num, len(shape)), np.int64)
    hi = np.zeros((num, len(shape)), np.int64)
    for dim, (extent, entry) in enumerate(zip(shape, entries, strict=True)):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        parts = math.prod(int(grid.get(a, 1)) for a in names)
        index = np.zeros(num, np.int64)
        for a in names:
            index = index * int(grid.get(a, 1)) + coords[a]
        block = -(-extent // parts)
        lo[:, dim] = np.minimum(index * block, extent)
        hi[:, dim] = np.minimum((index + 1) * block, extent)
    return lo, hi


def transition_bytes(
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
    if math.prod(grid_a.values()) != math.prod(grid_b.values()):
        raise ValueError(f"grids {dict(grid_a)} and {dict(grid_b)} use different numbers of devices")
    lo_a, hi_a = _ranges(shape, spec_a, grid_a)
    lo_b, hi_b = _ranges(shape, spec_b, grid_b)
    vol_a = np.prod(hi_a - lo_a, axis=1)
    vol_b = np.prod(hi_b - lo_b, axis=1)
    overlap = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None), axis=1)
    return float((vol_b - overlap).max() * itemsize), float((vol_a - overlap).max() * itemsize)
