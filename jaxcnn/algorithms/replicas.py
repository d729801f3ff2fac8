"""Replicated placements: ``"<name>+replicas"`` runs an algorithm on the axes it splits and copies the
layer over every other mesh axis of size > 1 (issue 17's "a layer may run on a sub-grid whose copies
replicate it", issue 21's depthwise layers).

The layout is the algorithm's on the sub-grid of the axes it splits (:func:`jaxcnn.algorithms.base.
make_layout` sets the replica axes to 1 for every decision); no PartitionSpec names a replica axis, so
x, the kernel and y are whole copies over it: each copy of ``R`` = the product of the replica axes'
sizes computes the whole layer of its sub-grid, as the plain algorithm on ``P/R`` devices would.

Shapes (global → per device): those of the plain algorithm on the sub-grid, e.g. ``filter+replicas``
on ``k=32, c=2`` of a depthwise 96-channel layer: x (N, H, W, 96) → (N, H, W, 3), kernel
(R, S, 1, 96) → (R, S, 1, 3), y (N, Ho, Wo, 96) → (N, Ho, Wo, 3) on each of 64 devices, the two
devices of each c pair holding the same blocks.

Collectives: the plain algorithm's, each within one copy (its groups never span a replica axis), and
nothing over a replica axis in either pass: inside ``shard_map`` the inputs are invariant over it
(``jax.typeof(x).vma`` lacks it), so the output is too and autodiff inserts no ``psum`` over it; the
kernel gradient is each copy's full gradient, dx each copy's full input gradient, identical in every
copy. Words moved per device: exactly the plain algorithm's on the sub-grid (0 for a depthwise
``filter`` whose k splits whole groups and no row axis). Memory per device: the sub-grid's blocks,
``R`` times the even share; compute per device ``R`` times the even share
(:func:`jaxcnn.timing.model.conv_work` reads the blocks).

Which algorithms have the variant: those that leave some mesh axis unsplit (:data:`REPLICATING`:
data, spatial, filter, channel, 2d; 2.5d and 3d split every axis). The planner replicates over one
axis, :func:`replica_axis` (``c``, or ``k`` for channel), and considers factors up to its cap
(:func:`jaxcnn.planner.grids.grids_for`).
"""

from __future__ import annotations

import dataclasses

from jaxcnn.algorithms.base import Algorithm
from jaxcnn.mesh import AXES

#: Suffix of an algorithm's replicated variant: ``"filter+replicas"``.
REPLICAS = "+replicas"


def replica_axis(algorithm: Algorithm) -> str | None:
    """The mesh axis the planner replicates ``algorithm`` over: the innermost of ``AXES`` it does not
    split among the channel axes (``c``, else ``k``); None when it splits both (2.5d, 3d)."""
    free = [a for a in ("k", "c") if a not in algorithm.axes]
    return free[-1] if free else None


def replicated(algorithm: Algorithm) -> Algorithm:
    """The ``+replicas`` variant of a plain algorithm.

    Raises:
      ValueError: the algorithm splits every mesh axis (nothing is left to replicate over).
    """
    if all(a in algorithm.axes for a in AXES):
        raise ValueError(
            f"algorithm {algorithm.name!r} splits every mesh axis {AXES}, so it has no {REPLICAS!r} "
            "variant; replicate data, spatial, filter, channel or 2d"
        )
    return dataclasses.replace(algorithm, name=algorithm.name + REPLICAS, replicas=True)
