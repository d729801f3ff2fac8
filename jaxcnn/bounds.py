"""Communication lower bounds for one distributed convolution: bytes received per device (max over
devices), forward or backward pass. Derivation and assumptions: ``docs/lower_bound.md``.

Any number of spatial dimensions (1-, 2- and 3-D layers; written here for 2-D, a 3-D layer adds a
depth factor to every product, a 1-D layer drops the height one). Notation (element counts of the
unpadded arrays): ``|x| = N·H·W·C``, ``|w| = R·S·(C/G)·K``, ``|y| = N·Ho·Wo·K``; ``R·S`` is the
kernel window's size ``Π R_i``; ``F`` = multiply-adds that touch a real input element (taps that fall
into the zero padding, or onto the zero rows a transposed convolution's input dilation inserts, are
excluded; ``G`` feature groups: ``F = N·K·(C/G)·Π taps_i``); ``P`` devices, ``M`` words of memory per
device. Grouped and transposed layers take the same bound with these counts (``docs/lower_bound.md``
§9; N-D: §10).

- **Memory-independent** (each device does ``F/P`` multiply-adds, of each contraction in the
  backward pass, on the same iteration subset; arrays start / end evenly distributed, ``1/P`` each,
  no recomputation): with ``A_x, A_w, A_y`` the elements of x, w and y a device touches,
  ``(F/P)² ≤ τ·A_x·A_w·A_y`` (Loomis-Whitney on each slice of taps that read the input at the same
  offset in units of the stride, plus Cauchy-Schwarz; ``τ`` such classes: ``R·S`` at stride 1,
  ``⌈R/σ⌉·⌈S/σ⌉`` at stride σ) and
  ``F/P ≤ A_y·cap_y`` etc.; the device receives what it touches beyond its share of the inputs
  and sends its partial sums beyond its share of the outputs, so the average over devices - and
  hence the maximum - receives at least ``min Σ (A_j - share_j)⁺``, solved exactly here.
- **Memory-dependent** (no balance needed): ``passes·F / (P·√(τ·M)) - M`` words.

Only the input elements some tap reads count as x (``|x_read|``: all of x at stride 1, ``x[:, ::σ, ::σ]``
for a 1×1 stride-σ layer), taken as evenly distributed as x itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection

from jaxcnn.geometry import ConvGeometry

PASSES = ("forward", "backward")


@dataclasses.dataclass(frozen=True)
class Bound:
    """A lower bound on the bytes one device receives (max over devices) in one pass.

    Attributes:
      pass_: ``"forward"`` or ``"backward"``.
      num_devices: P.
      macs: F, multiply-adds of one contraction that touch real (non-padding) inputs.
      independent: memory-independent bound in bytes (needs the load-balance assumption).
      memory_dependent: memory-dependent bound in bytes, or None when no memory was given.
      footprint: the minimising ``(A_x, A_w, A_y)`` - elements of x (dx), kernel (dkernel) and
        y (dy) one device touches - in elements.
    """

    pass_: str
    num_devices: int
    macs: int
    independent: float
    memory_dependent: float | None
    footprint: tuple[float, float, float]

    @property
    def bytes(self) -> float:
        """The larger of the valid bounds."""
        return max(self.independent, self.memory_dependent or 0.0)


def real_macs(geom: ConvGeometry) -> int:
    """Multiply-adds that read a real input element: ``N·K·(C/G)`` times the product over the spatial
    dimensions (1, 2 or 3) of the (output, tap) pairs that hit a real input row (padding taps, and the
    zero rows a transposed convolution's input dilation inserts, excluded;
    :meth:`jaxcnn.geometry.DimGeometry.real_taps`)."""
    n, k, cg = geom.batch, geom.channels_out, geom.channels_in // geom.groups
    return n * k * cg * math.prod(dim.real_taps()[0] for dim in geom.dims)


def _water_fill(
    q: float, low: list[float], high: list[float], share: list[float]
) -> tuple[float, list[float]]:
    """min Σ (A_j - share_j)⁺ s.t. Π A_j ≥ q, low ≤ A ≤ high; exact (convex in log A).

    KKT: A_j(λ) = clip(max(share_j, λ), low_j, high_j) with the least λ whose product reaches q.
    Returns the cost at a λ not above the optimal one (so never above the true minimum).
    """

    def at(lam: float) -> list[float]:
        return [min(max(max(s, lam), lo), hi) for s, lo, hi in zip(share, low, high, strict=True)]

    def cost(a: list[float]) -> float:
        return sum(max(0.0, v - s) for v, s in zip(a, share, strict=True))

    if math.prod(at(0.0)) >= q:
        return cost(at(0.0)), at(0.0)
    if math.prod(high) < q * (1 - 1e-12):
        raise ValueError("infeasible footprint: the Loomis-Whitney product exceeds the array sizes")
    lo_lam, hi_lam = 0.0, max(high)
    for _ in range(200):
        mid = 0.5 * (lo_lam + hi_lam)
        if math.prod(at(mid)) >= q:
            hi_lam = mid
        else:
            lo_lam = mid
    return cost(at(lo_lam)), at(hi_lam)


def lower_bound(
    geom: ConvGeometry,
    num_devices: int,
    memory_bytes: float | None = None,
    dtype_bytes: int = 4,
    pass_: str = "forward",
    replicated: Collection[str] = (),
) -> Bound:
    """Lower bound on the bytes received by the busiest device for one convolution pass.

    Args:
      geom: the layer (batch included; 1, 2 or 3 spatial dimensions).
      num_devices: P ≥ 1.
      memory_bytes: memory per device in bytes (enables the memory-dependent bound).
      dtype_bytes: bytes per element.
      pass_: ``"forward"`` (y = x ⋆ w) or ``"backward"`` (dx and dkernel from dy; the residuals x
        and w are free, i.e. available wherever the forward pass left them).
      replicated: forward inputs (``"x"``, ``"kernel"``) that start replicated on every device,
        so touching them costs nothing (data / spatial parallelism keep the kernel replicated).

    Returns:
      A :class:`Bound`; all parts are 0 when P = 1.

    Raises:
      ValueError: bad P, pass, memory, dtype size or replicated names.
    """
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive int, got {num_devices!r}")
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    if dtype_bytes <= 0 or (memory_bytes is not None and memory_bytes <= 0):
        raise ValueError(f"dtype_bytes and memory_bytes must be positive, got {dtype_bytes}, {memory_bytes}")
    unknown = set(replicated) - {"x", "kernel"}
    if unknown or (replicated and pass_ == "backward"):
        raise ValueError(f"replicated must name forward inputs 'x' / 'kernel', got {sorted(replicated)}")
    p = num_devices
    f = real_macs(geom)
    n, c, k, g = geom.batch, geom.channels_in, geom.channels_out, geom.groups
    # Lemma 1's tap slices: R·S at stride 1, ⌈R/σ⌉·⌈S/σ⌉ for a stride-σ layer (docs/lower_bound.md §2)
    taps = math.prod(dim.tap_slices() for dim in geom.dims)
    # x counts only the elements some tap reads (all of x at stride 1; 1 in σ² for a 1×1 stride-σ layer)
    size_x = n * c * math.prod(dim.touched_rows() for dim in geom.dims)
    size_w, size_y = (math.prod(shape) for shape in (geom.kernel_shape, geom.y_shape))
    # per spatial dimension: (most taps of one output, most outputs of one tap, most pairs on one input)
    per_out, per_tap, per_in = zip(*(dim.real_taps()[1:] for dim in geom.dims), strict=True)
    cap_x = k // g * math.prod(per_in)  # multiply-adds one x element takes part in (its group's K/G outputs)
    cap_w = n * math.prod(per_tap)  # ... one kernel element
    cap_y = c // g * math.prod(per_out)  # ... one output element (its group's C/G inputs)
    if p == 1 or f == 0:  # one device, or no real multiply-add (every tap on padding): nothing to move
        return Bound(pass_, p, f, 0.0, 0.0 if memory_bytes else None, (size_x, size_w, size_y))
    fi = f / p
    share = [
        size_x if "x" in replicated else size_x / p,
        size_w if "kernel" in replicated else size_w / p,
        size_y / p,
    ]
    high = [float(size_x), float(size_w), float(size_y)]
    low = [min(fi / cap_x, high[0]), min(fi / cap_w, high[1]), min(fi / cap_y, high[2])]
    words, footprint = _water_fill(fi * fi / taps, low, high, share)
    memory = None
    if memory_bytes is not None:
        m = memory_bytes / dtype_bytes
        passes = 1 if pass_ == "forward" else 2
        memory = max(0.0, passes * f / (p * math.sqrt(taps * m)) - m) * dtype_bytes
    return Bound(pass_, p, f, words * dtype_bytes, memory, tuple(footprint))
