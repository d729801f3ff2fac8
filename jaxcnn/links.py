"""Hosts and slow links: which of a collective's bytes cross the data-center network (DCN).

A job of ``P`` devices on ``H`` hosts (or TPU slices) lays its devices out in one flat order with the
hosts outermost (:func:`jaxcnn.mesh.device_order`): host ``i`` holds flat devices
``[i·P/H, (i+1)·P/H)``. Every jaxcnn mesh reshapes that order row-major over ``(n, d, h, w, k, c)``, so
with ``n`` a multiple of ``H`` the batch axis crosses hosts and ``h, w, k, c`` stay inside one.

Devices within a host talk over the fast chip interconnect (ICI, NVLink); between hosts over the DCN,
``dcn_cost_factor`` times dearer per byte. The cost model keeps, next to the exact bytes each device
receives, the part of them that crosses hosts, and the planner minimises the weighted bytes
``ICI + factor · DCN = bytes + (factor - 1) · DCN`` (max over devices).

**Simplification.** A bandwidth-optimal collective (all-gather, reduce-scatter, all-reduce,
all-to-all) over a group whose devices lie on more than one host counts *all* the bytes a device
receives in it as DCN bytes (a ring over the group crosses a host boundary on its slowest hop, which
sets its pace); a group inside one host counts none. A collective-permute counts the bytes a device
receives as DCN bytes exactly when its source lies on another host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

#: Default ``dcn_cost_factor`` of the planner (the run config's ``cluster.dcn_cost_factor`` default).
DEFAULT_DCN_COST_FACTOR = 10.0


def check_hosts(num_devices: int, hosts: int) -> None:
    """Raises ValueError unless ``hosts`` is a positive int dividing ``num_devices``."""
    if isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1:
        raise ValueError(f"hosts must be a positive integer, got {hosts!r}")
    if num_devices % hosts:
        raise ValueError(
            f"hosts ({hosts}) must divide the device count ({num_devices}): every host holds the same "
            "number of devices"
        )


def host_of(num_devices: int, hosts: int) -> np.ndarray:
    """The host of each device of the flat order (``H`` equal consecutive groups)."""
    check_hosts(num_devices, hosts)
    return np.arange(num_devices) // (num_devices // hosts)


def group_crosses(shape: Sequence[int], dims: Sequence[int], hosts: int) -> np.ndarray:
    """Per device (row-major over ``shape``), whether its collective group spans several hosts.

    Args:
      shape: the mesh's axis sizes, major to minor.
      dims: the mesh axes (indices into ``shape``) the collective runs over: a device's group is the
        devices that differ from it only in these coordinates.
      hosts: ``H``.

    Returns:
      A bool vector over the ``prod(shape)`` devices.
    """
    num = int(np.prod(shape, dtype=np.int64))
    if hosts == 1 or not dims:
        return np.zeros(num, bool)
    host = host_of(num, hosts).reshape(tuple(shape))
    dims = tuple(dims)
    spans = host.max(axis=dims, keepdims=True) != host.min(axis=dims, keepdims=True)
    return np.broadcast_to(spans, host.shape).ravel()


def source_crosses(sources: np.ndarray, hosts: int) -> np.ndarray:
    """Per device, whether the device it receives from (``sources[i]``, flat index; negative: none)
    lies on another host."""
    num = len(sources)
    if hosts == 1:
        return np.zeros(num, bool)
    host = host_of(num, hosts)
    valid = sources >= 0
    return valid & (host[np.where(valid, sources, 0)] != host)


def weighted(per_device: np.ndarray, dcn: np.ndarray, factor: float) -> np.ndarray:
    """``ICI + factor · DCN`` bytes per device, given all bytes and the DCN part of them (exactly
    ``per_device`` when nothing crosses hosts or ``factor == 1``)."""
    return np.asarray(per_device) + (float(factor) - 1.0) * np.asarray(dcn)


@dataclasses.dataclass
class LinkBytes:
    """Per-device bytes received, by collective kind, and the part of them that crosses hosts; and the
    latency terms behind them (the collectives' count, weighted by their algorithms' steps).

    Attributes:
      kinds: ``{collective kind: bytes per device}``.
      dcn: bytes per device that cross hosts (over all kinds).
      steps: ``{collective kind: latency terms per device}`` (:func:`jaxcnn.cost.latency_steps` of each
        collective a device takes part in, summed).
      dcn_steps: the latency terms per device of collectives that cross hosts.
      calls: ``{collective kind: collectives per device}`` (each one a synchronisation point).
    """

    kinds: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    dcn: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1))
    steps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    dcn_steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1))
    calls: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def merge(self, more: LinkBytes) -> LinkBytes:
        """Adds ``more`` into this one (in place) and returns it."""
        for kind, vec in more.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + np.asarray(vec)
        for kind, vec in more.steps.items():
            self.steps[kind] = self.steps.get(kind, 0) + np.asarray(vec)
        for kind, vec in more.calls.items():
            self.calls[kind] = self.calls.get(kind, 0) + np.asarray(vec)
        self.dcn = self.dcn + np.asarray(more.dcn)
        self.dcn_steps = self.dcn_steps + np.asarray(more.dcn_steps)
        return self

    def only(self, kind: str) -> LinkBytes:
        """The bytes, latency terms and calls of one collective kind (without the cross-host part)."""
        zeros = np.zeros(1)
        return LinkBytes(
            {kind: self.kinds.get(kind, zeros)},
            steps={kind: self.steps.get(kind, zeros)},
            calls={kind: self.calls.get(kind, zeros)},
        )

    def total(self) -> np.ndarray:
        """Bytes per device over all kinds."""
        return sum(self.kinds.values(), np.zeros(1))

    def weighted(self, factor: float) -> np.ndarray:
        """``ICI + factor · DCN`` bytes per device (:func:`weighted`)."""
        return weighted(self.total(), self.dcn, factor)
