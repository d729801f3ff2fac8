"""Seconds from a profile: the time of a placement's collectives, local convolutions and memory-bound work.

A :class:`TimeModel` prices what the cost model counts (``docs/step_time.md``, "The step-time model"):

- **collectives**: per device, ``Σ_kind (α_kind + s) · steps_kind + bytes_kind / β_kind + sync · calls_kind``
  over the latency terms, bytes and calls the cost model accumulates (:class:`jaxcnn.links.LinkBytes`);
  on several hosts, the bytes and latency terms that cross hosts are priced with the slow link's fit
  instead (``notes["dcn"]`` of a preset profile; none for a measured one-host profile). ``sync``, ``s`` and
  the *straggle* share of the work before a collective (:meth:`TimeModel.straggle_seconds`) are what
  a collective costs in a step beyond its own fit (:mod:`jaxcnn.timing.barrier`: devices sharing
  cores arrive at it at different times);
- **local convolutions** (:func:`conv_work`): each pass of each channel panel of a placement's local
  convolution on its per-device shapes, ``a + MACs / R + bytes / B`` by the profile's fit of that pass;
- **memory-bound work** (BatchNorm, activation, pooling, residual adds, halo windows, the optimizer
  update): ``a + bytes / B`` per fused pass, ``bytes`` what the pass reads and writes.

Every figure is per device and per step. The model never looks at a measured step: a profile is fitted
to microbenchmarks only (:mod:`jaxcnn.timing.calibrate`), and what a step adds to them is counted
here from the placements.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from jaxcnn.cost import COLLECTIVE_KINDS, Cost
from jaxcnn.links import LinkBytes
from jaxcnn.timing.profile import (
    CollectiveFit,
    LinearFit,
    Profile,
    current_key,
    load_profile,
    profile_path,
)

#: Fallback order for a collective kind a profile lacks (its nearest measured kind).
_KIND_FALLBACK = {
    "all-gather": ("reduce-scatter", "all-to-all", "all-reduce"),
    "reduce-scatter": ("all-gather", "all-reduce", "all-to-all"),
    "all-reduce": ("reduce-scatter", "all-gather"),
    "all-to-all": ("all-gather", "reduce-scatter"),
    "collective-permute": ("all-gather", "all-to-all"),
}


@dataclasses.dataclass(frozen=True)
class PassWork:
    """One application of a convolution pass on one device: its multiply-adds and the bytes it reads
    and writes (x or dx, the kernel panel, y or dy)."""

    macs: float
    bytes: float


@dataclasses.dataclass(frozen=True)
class ConvWork:
    """A placement's local convolutions per device: ``applications`` of ``work`` per pass (one per
    channel panel; no input gradient for the layer that reads the images).

    With ``+overlap`` (:mod:`jaxcnn.algorithms.overlap`) each application runs as ``pieces``
    convolutions (the core and the boundary strips) of the same total work, the core ``core`` of it.
    """

    work: PassWork
    applications: Mapping[str, int]
    pieces: int = 1
    core: float = 0.0


def conv_work(cost: Cost, input_grad: bool = True, itemsize: int = 4) -> ConvWork:
    """The local convolutions of a predicted placement (:func:`jaxcnn.cost.predict`), per device.

    A device convolves ``panels`` times per pass: its halo-extended window of ``nl`` batch rows with
    one panel of the gathered input channels, against the kernel panel, into its output block (the
    partial sums before any reduce-scatter over ``c``). MACs ``nl·Π(out block)·K_local·C_panel·taps``
    (``C_panel`` per feature group: a grouped layer's kernel is ``(*window, C/G, K)``).
    """
    lay, geom = cost.layout, cost.geom
    if geom is None:
        raise ValueError("the cost has no geometry (predict() sets it)")
    nl = lay.padded[0] // lay.size("n")  # a replicated placement's copies each compute their sub-grid's
    windows = [
        p.window if p is not None else size for p, size in zip(lay.plans, lay.padded[1:-2], strict=True)
    ]
    out = math.prod(lay.out_blocks(geom))
    k_in, k_out = lay.kernel_block
    m = lay.panels
    c_panel = k_in / m
    taps = math.prod(geom.window)
    x_elems = nl * math.prod(windows) * c_panel * lay.local_groups
    y_elems = nl * out * k_out
    macs = nl * out * k_out * c_panel * taps
    nbytes = itemsize * (x_elems + taps * c_panel * k_out + y_elems)
    apps = {"forward": m, "input_grad": m if input_grad else 0, "kernel_grad": m}
    pieces, core = 1, 0.0
    if lay.interior is not None:
        ranges = [(r, p.out_block) for r, p in zip(lay.interior, lay.plans, strict=True) if p is not None]
        pieces += sum((lo > 0) + (hi < bo) for (lo, hi), bo in ranges)
        core = math.prod((hi - lo) / bo for (lo, hi), bo in ranges)
    return ConvWork(PassWork(float(macs), float(nbytes)), apps, pieces, core)


@dataclasses.dataclass(frozen=True)
class TimeModel:
    """Prices collectives, local convolutions and memory-bound work from a :class:`Profile`.

    Attributes:
      profile: the backend's fits (measured, or a preset).
      dcn: the slow links' fit for collectives that cross hosts (None: priced as the fast links).
    """

    profile: Profile
    dcn: CollectiveFit | None = None

    @classmethod
    def of(cls, profile: Profile) -> TimeModel:
        """The model of ``profile``, with its slow-link fit where the profile carries one
        (``notes["dcn"]``: ``{"alpha_s", "beta_bytes_per_s"}``)."""
        dcn = profile.notes.get("dcn") if isinstance(profile.notes, Mapping) else None
        fit = None
        if isinstance(dcn, Mapping) and "alpha_s" in dcn and "beta_bytes_per_s" in dcn:
            fit = CollectiveFit(float(dcn["alpha_s"]), float(dcn["beta_bytes_per_s"]))
        return cls(profile, fit)

    @property
    def platform(self) -> str:
        return self.profile.key.platform

    def collective(self, kind: str) -> CollectiveFit:
        """The profile's fit of ``kind``, else of its nearest measured kind.

        Raises:
          ValueError: the profile has no collective fit at all.
        """
        fits = self.profile.collectives
        for k in (kind, *_KIND_FALLBACK.get(kind, ())):
            if k in fits:
                return fits[k]
        if fits:
            return next(iter(fits.values()))
        raise ValueError(f"profile {self.profile.key.file_name()} has no collective timings")

    def _barrier(self, i: int) -> float:
        fit = self.profile.barrier
        return 0.0 if fit is None or not fit.rates[i] > 0 else 1 / fit.rates[i]

    @property
    def sync_s(self) -> float:
        """Seconds a collective costs in a step beyond its own fit (the devices arriving from work at
        different times; :mod:`jaxcnn.timing.barrier`), 0 where not measured."""
        return 0.0 if self.profile.barrier is None else self.profile.barrier.intercept_s

    @property
    def sync_step_s(self) -> float:
        """Seconds of that waiting per latency step of a collective (more devices to wait for)."""
        return self._barrier(0)

    def straggle_seconds(self, compute_s: float) -> float:
        """The seconds that waiting at collectives adds to ``compute_s`` of work before them."""
        return compute_s * self._barrier(1)

    def comm_seconds(self, link: LinkBytes) -> np.ndarray:
        """Seconds per device of the collectives ``link`` accumulates (run one after another; each
        one also costs :attr:`sync_s`, and :attr:`sync_step_s` per latency step)."""
        total = np.zeros(1)
        for kind in COLLECTIVE_KINDS:
            if kind not in link.kinds and kind not in link.steps:
                continue
            fit = self.collective(kind)
            total = total + np.asarray(link.kinds.get(kind, 0.0)) / fit.beta_bytes_per_s
            total = total + fit.alpha_s * np.asarray(link.steps.get(kind, 0.0))
            total = total + self.sync_s * np.asarray(link.calls.get(kind, 0.0))
            total = total + self.sync_step_s * np.asarray(link.steps.get(kind, 0.0))
        if self.dcn is not None and (np.any(link.dcn) or np.any(link.dcn_steps)):
            # the DCN part again at the slow links' rates, less what the fast links' rates charged
            fast = self.collective("all-gather")
            total = total + np.asarray(link.dcn) * (1 / self.dcn.beta_bytes_per_s - 1 / fast.beta_bytes_per_s)
            total = total + np.asarray(link.dcn_steps) * (self.dcn.alpha_s - fast.alpha_s)
        return total

    def pass_seconds(self, name: str, work: PassWork, pieces: int = 1) -> float:
        """Seconds of one application of convolution pass ``name`` (the forward fit where the profile
        lacks that pass), run as ``pieces`` convolutions (each its own fixed cost)."""
        fits = self.profile.conv
        fit: LinearFit | None = fits.get(name) or fits.get("forward")
        if fit is None:
            raise ValueError(f"profile {self.profile.key.file_name()} has no convolution timings")
        return fit.seconds(work.macs, work.bytes) + (pieces - 1) * fit.intercept_s

    def conv_seconds(self, cost: Cost, input_grad: bool = True, itemsize: int = 4) -> dict[str, float]:
        """Seconds per pass of a placement's local convolutions (:func:`conv_work`)."""
        work = conv_work(cost, input_grad, itemsize)
        return {
            name: n * self.pass_seconds(name, work.work, work.pieces) for name, n in work.applications.items()
        }

    @property
    def asynchronous(self) -> bool:
        """Whether the backend runs collectives asynchronously, so that independent work can hide
        them (XLA's latency-hiding scheduler on GPU and TPU; not XLA:CPU)."""
        return self.platform != "cpu"

    def _kind_seconds(self, comm, kind: str) -> float:
        """Max over devices of the seconds of ``comm``'s collectives of one kind."""
        return float(self.comm_seconds(comm.link_bytes().only(kind)).max())

    def overlap_hidden(
        self, cost: Cost, conv: Mapping[str, float], input_grad: bool = True
    ) -> tuple[float, float]:
        """Seconds of an ``+overlap`` placement's collectives hidden behind its own convolutions,
        ``(forward, backward)``, on a backend with asynchronous collectives (none on the CPU or
        without overlap). ``conv`` is :meth:`conv_seconds` of ``cost``.

        - halo overlap (:mod:`jaxcnn.algorithms.overlap`): the forward permutes behind the core's
          forward pass, the reversed ones behind the core's share of the input and kernel gradients,
          each up to that time;
        - double-buffered panels (:mod:`jaxcnn.algorithms.pipeline`): the gathers of panels 1..m-1
          behind the passes of panels 0..m-2, each panel's gathers up to its pass's time, forward
          and backward.
        """
        if not self.asynchronous:
            return 0.0, 0.0
        backward = conv["input_grad"] + conv["kernel_grad"]
        if cost.layout.interior is not None:
            core = conv_work(cost, input_grad).core
            permute = "collective-permute"
            return (
                min(self._kind_seconds(cost.forward, permute), core * conv["forward"]),
                min(self._kind_seconds(cost.backward, permute), core * backward),
            )
        if cost.layout.pipelined:
            m = cost.layout.panels
            gathers = self._kind_seconds(cost.forward, "all-gather") / m  # one panel's x and kernel
            return (m - 1) * min(gathers, conv["forward"] / m), (m - 1) * min(gathers, backward / m)
        return 0.0, 0.0

    def memory_seconds(self, nbytes: float, passes: int = 1) -> float:
        """Seconds of ``passes`` fused memory-bound passes reading and writing ``nbytes`` in all."""
        fit = self.profile.memory
        if fit is None:
            raise ValueError(f"profile {self.profile.key.file_name()} has no memory-bound timings")
        return passes * fit.intercept_s + (fit.seconds(nbytes) - fit.intercept_s)


def backend_time_model(directory: str | None = None) -> tuple[TimeModel | None, str]:
    """The time model of the backend JAX runs on now, from its saved profile (``jaxcnn calibrate``).

    Returns:
      ``(model, "")``, or ``(None, note)`` with a one-line note saying why there is none (no profile
      for this backend, or an unreadable one) and what to do.
    """
    key = current_key()
    try:
        profile = load_profile(key, directory)
    except ValueError as e:
        return None, f"timing profile unreadable ({' '.join(str(e).split())})"
    if profile is None:
        devices = f"{key.device_count} {key.platform} device{'s' if key.device_count > 1 else ''}"
        where = profile_path(key, directory)
        cpu = f" --cpu-devices {key.device_count}" if key.platform == "cpu" else ""
        return (
            None,
            f"no timing profile for {devices} ({where}); run `jaxcnn calibrate{cpu}` to predict seconds",
        )
    return TimeModel.of(profile), ""
