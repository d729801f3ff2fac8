"""Enumerating the grids (mesh shapes) an algorithm can run a layer on, and the placements
(algorithm, grid) a planner ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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


def grids_for(
    algorithm: str, geom: ConvGeometry, num_devices: int, replicas: Sequence[int] | None = None
) -> list[dict[str, int]]:
    """Every grid using exactly ``num_devices`` devices on the algorithm's axes that the layer has (the
    spatial axes of its rank only: ``w`` in 1-D, ``h, w`` in 2-D, ``d, h, w`` in 3-D), without
    splitting a dimension into more parts than it has (n ≤ N, d ≤ Do, h ≤ Ho, w ≤ Wo, k ≤ K, c ≤ C).

    A ``"<name>+replicas"`` variant: for each factor ``r > 1`` of ``replicas`` (default: every divisor
    of ``num_devices``) that divides ``num_devices``, the plain algorithm's grids of ``num_devices / r``
    devices with :func:`jaxcnn.algorithms.replica_axis` set to ``r``.
    """
    alg = algorithms.get(algorithm)
    if alg.replicas:
        axis = algorithms.replica_axis(alg)
        factors = range(2, num_devices + 1) if replicas is None else replicas
        return [
            grid | {axis: r}
            for r in factors
            if r > 1 and num_devices % r == 0
            for grid in grids_for(algorithms.unreplicated(algorithm), geom, num_devices // r)
        ]
    layer_axes = ("n", *geom.spatial_axes, "k", "c")
    axes = tuple(a for a in alg.axes if a in layer_axes)
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


def with_replicas(allowed: Sequence[str]) -> tuple[str, ...]:
    """``allowed`` and the ``+replicas`` variants of those that have one (``algorithms.REPLICATING``)."""
    extra = [a + algorithms.REPLICAS for a in allowed if a in algorithms.REPLICATING]
    return (*allowed, *(a for a in extra if a not in allowed))


def placements(
    geom: ConvGeometry,
    num_devices: int,
    allowed: Sequence[str] = algorithms.ALGORITHMS,
    replicas: Sequence[int] = (),
) -> list[tuple[str, dict[str, int]]]:
    """The ``(algorithm, grid)`` pairs a planner ranks for ``geom`` on ``num_devices`` devices: every
    grid of each allowed algorithm, and with ``replicas`` (the factors,
    :func:`jaxcnn.planner.replicas.planned_replicas`) those of the ``+replicas`` variants of the allowed
    algorithms that have one (without factors, no ``+replicas`` name is kept)."""
    names = (
        with_replicas(allowed) if replicas else tuple(a for a in allowed if not algorithms.get(a).replicas)
    )
    return [(alg, grid) for alg in names for grid in grids_for(alg, geom, num_devices, replicas)]
