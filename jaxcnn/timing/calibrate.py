"""``calibrate``: measure the current backend's collectives, local convolutions and memory-bound work,
and fit a :class:`~jaxcnn.timing.profile.Profile` (``jaxcnn calibrate`` saves it).

What is measured (``quick`` halves the sizes and repeats; a run on 8 CPU devices of a 2-core machine
takes about a minute, ``quick`` 10-20 s):

- every collective kind over the power-of-two group sizes that divide the device count (2 ... P, at
  most 3 of them) and three buffer sizes (:mod:`jaxcnn.timing.collectives`);
- the three passes of a convolution on per-device shapes like those placements produce
  (:mod:`jaxcnn.timing.compute`), every device at once;
- memory-bound work on a few buffer sizes (:mod:`jaxcnn.timing.compute`);
- what a collective costs after a convolution beyond both alone (:mod:`jaxcnn.timing.barrier`);
- a program's launch (:func:`launch_seconds`).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.timing import barrier, compute
from jaxcnn.timing.clock import median_seconds
from jaxcnn.timing.collectives import calibrate_collectives
from jaxcnn.timing.profile import COLLECTIVE_KINDS, Profile, current_key


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one calibration measures."""

    groups: tuple[int, ...]
    elements: tuple[int, ...]
    repeats: int
    quick: bool

    @property
    def measurements(self) -> int:
        """How many timings the plan takes (for a progress bar)."""
        collectives = len(COLLECTIVE_KINDS) * len(self.groups) * len(self.elements)
        return collectives + compute.measurement_count(self.quick) + barrier.measurement_count(self.quick)


def plan(device_count: int, quick: bool = False) -> Plan:
    """The measurements for ``device_count`` devices.

    Raises:
      ValueError: fewer than 2 devices (nothing to communicate: calibrate on 2 or more).
    """
    if device_count < 2:
        raise ValueError(
            f"{device_count} device: collectives need at least 2 (on a CPU, jaxcnn calibrate --cpu-devices 8)"
        )
    groups = [g for g in (2, 4, 8, 16, 32, 64) if g <= device_count and device_count % g == 0]
    groups = sorted({groups[0], groups[len(groups) // 2], groups[-1]})
    elements = (1 << 10, 1 << 15) if quick else (1 << 10, 1 << 14, 1 << 18)  # 4 KiB ... 1 MiB per device
    return Plan(tuple(groups), tuple(elements), 3 if quick else 5, quick)


def launch_seconds(repeats: int = 20) -> float:
    """Median seconds of one call of a program that adds 1 to one element on every device: the
    dispatch, launch and synchronisation a step pays once beyond its operations."""
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("d",))
    x = jax.device_put(np.zeros(len(devices), np.float32), NamedSharding(mesh, P("d")))
    fn = jax.jit(jax.shard_map(lambda b: b + 1, mesh=mesh, in_specs=P("d"), out_specs=P("d")))
    return median_seconds(fn, x, repeats=repeats, warmup=2)


def calibrate(quick: bool = False, progress: Callable[[str], None] | None = None) -> Profile:
    """Measures this backend (all of ``jax.devices()``) and returns its fitted profile."""
    t0 = time.perf_counter()
    measured = plan(jax.device_count(), quick)
    collectives = calibrate_collectives(
        measured.groups, measured.elements, repeats=measured.repeats, progress=progress
    )
    conv, memory = compute.calibrate_compute(quick=quick, repeats=measured.repeats, progress=progress)
    sync = barrier.calibrate_barrier(quick=quick, repeats=measured.repeats, progress=progress)
    launch = launch_seconds()
    return Profile(
        key=current_key(),
        collectives=collectives,
        conv=conv,
        memory=memory,
        launch_s=launch,
        barrier=sync,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        calibration_s=time.perf_counter() - t0,
        notes={
            "quick": quick,
            "repeats": measured.repeats,
            "groups": list(measured.groups),
            "collective_elements": list(measured.elements),
            "dtype": "float32",
        },
    )
