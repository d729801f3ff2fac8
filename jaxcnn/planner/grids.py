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
    """Every grid using exactly ``num_devices`` devices on the algorithm's axes that the layer has (the
    spatial axes of its rank only: ``w`` in 1-D, ``h, w`` in 2-D, ``d, h, w`` in 3-D), without
    splitting a dimension into more parts than it has (n ≤ N, d ≤ Do, h ≤ Ho, w ≤ Wo, k ≤ K, c ≤ C)."""
    layer_axes = ("n", *geom.spatial_axes, "k", "c")
    axes = tuple(a for a in algorithms.get(algorithm).axes if a in layer_axes)
    limits = {
        "n": geom.batch,
        **{a: dim.out for a, dim in zip(geom.spatial_axes, geom.dims, strict=True)},
        "k": geom.channels_out,
        "c": geom.channels_in,
    }
    out = []
    for sizes in _factorisations(num_devices, len(axes)):
        grid = {a: 1 for a in AXES} | dict(zip(axes, sizes, strict=True))
        if all(grid[a] <= limits.get(a, 1) for a in AXES):
            out.append(grid)
    return out
