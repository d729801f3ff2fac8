"""Which replicated placements (``"<name>+replicas"``, :mod:`jaxcnn.algorithms.replicas`) the bytes
objective may choose.

A placement replicated ``r``-fold on P devices is ``r`` copies of an even placement on ``P/r``
devices: each device computes ``r`` times its even share of the layer, and moves what the copy moves
on ``P/r`` devices, at least the lower bound of ``P/r`` devices (:func:`jaxcnn.bounds.lower_bound`;
each copy satisfies the bound's assumptions on its sub-grid). Replication therefore trades compute
for bytes, a trade bytes alone cannot price: with every factor allowed, a byte-minimising planner
would copy every small layer onto a few devices (fully replicated, a layer moves nothing at all).

So the bytes objective admits a factor ``r`` only when the bound of ``P/r`` devices is at least the
bound of all ``P``, pass by pass (the forward pass also with the kernel replicated, the variant that
holds where an algorithm starts so): the copies then cannot move fewer bytes than an even,
unreplicated placement of the layer on all P devices might, and the bound of P devices stays below
every admitted placement in each pass (``docs/lower_bound.md`` §9). What replication removes is the
traffic that integrality forces on P devices: a depthwise layer whose 96 or 144 channels do not split
into 64 whole-group shares has a bound of 0 on 64 devices and on 32 or 16, and ``filter+replicas`` on
``k=32, c=2`` (or ``k=16, c=4``) moves nothing where every unreplicated placement moves 108-486 bytes;
and a layer whose batch of 32 cannot use 64 devices for data parallelism runs it on 32 devices, twice.

Even admitted, a factor buys bytes with ``r`` times the compute and memory per device;
:func:`jaxcnn.plan_layer` caps it (``max_replicas``, default 4).
"""

from __future__ import annotations

import functools

from jaxcnn.bounds import PASSES, lower_bound
from jaxcnn.geometry import ConvGeometry


@functools.lru_cache(maxsize=4096)
def _bounds(geom: ConvGeometry, num_devices: int, itemsize: int) -> tuple[float, ...]:
    """The forward, forward with a replicated kernel, and backward bounds on ``num_devices``."""
    forward = lower_bound(geom, num_devices, dtype_bytes=itemsize)
    shared = lower_bound(geom, num_devices, dtype_bytes=itemsize, replicated=("kernel",))
    backward = lower_bound(geom, num_devices, dtype_bytes=itemsize, pass_=PASSES[1])
    return (forward.bytes, shared.bytes, backward.bytes)


def check_max_replicas(max_replicas: int) -> None:
    """Raises ValueError unless ``max_replicas`` is an int >= 1 (1: no replicated placement)."""
    if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or max_replicas < 1:
        raise ValueError(
            f"max_replicas must be an int >= 1 (1: no replicated placement), got {max_replicas!r}"
        )


def planned_replicas(
    geom: ConvGeometry, num_devices: int, max_replicas: int, itemsize: int = 4
) -> tuple[int, ...]:
    """The factors :func:`jaxcnn.plan_layer` replicates ``geom`` by: those :func:`admitted_replicas`
    admits, up to ``max_replicas``.

    Raises:
      ValueError: ``max_replicas`` is not an int >= 1 (:func:`check_max_replicas`).
    """
    check_max_replicas(max_replicas)
    if max_replicas == 1:
        return ()
    return tuple(r for r in admitted_replicas(geom, num_devices, itemsize) if r <= max_replicas)


def admitted_replicas(geom: ConvGeometry, num_devices: int, itemsize: int = 4) -> tuple[int, ...]:
    """The replication factors ``r > 1`` (divisors of ``num_devices``) whose ``P/r``-device lower
    bounds (forward, forward with the kernel replicated, backward) are each at least the
    ``num_devices``-device one, smallest first.

    Args:
      geom: the layer.
      num_devices: devices P the placement uses (its copies together).
      itemsize: bytes per element (the bound's ``dtype_bytes``).
    """
    full = _bounds(geom, num_devices, itemsize)
    return tuple(
        r
        for r in range(2, num_devices + 1)
        if num_devices % r == 0
        and all(a >= b for a, b in zip(_bounds(geom, num_devices // r, itemsize), full, strict=True))
    )
