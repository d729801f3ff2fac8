"""Enumerating the grids (mesh shapes) an algorithm can run a layer on."""

from __future__ import annotations

from collections.abc import Iterator

from jaxcnn import algorithms
from jaxcnn.geometry import ConvGeometry
from jaxcnn.mesh import AXES


def _factorisations(total: int, slots: int) -> Iterator[tuple[int, ...]]:
    if slots == 1:
        yield (total,)
        return
    for first in range(1, total + 1):
        if total % first == 0:
            for rest in _factorisations(total // first, slots - 1):
                yield (first, *rest)


def grids_for(algorithm: str, geom: ConvGeometry, num_devices: int) -> list[dict[str, int]]:
    """Every grid using exactly ``num_devices`` devices on the algorithm's axes, without splitting a
    dimension into more parts than it has (n ≤ N, h ≤ Ho, w ≤ Wo, k ≤ K, c ≤ C)."""
    axes = algorithms.get(algorithm).axes
    limits = {
        "n": geom.batch,
        "h": geom.h.out,
        "w": geom.w.out,
        "k": geom.channels_out,
        "c": geom.channels_in,
    }
    out = []
    for sizes in _factorisations(num_devices, len(axes)):
        grid = {a: 1 for a in AXES} | dict(zip(axes, sizes, strict=True))
        if all(grid[a] <= limits[a] for a in AXES):
            out.append(grid)
    return out
