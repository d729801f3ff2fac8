"""Communication lower bounds for one distributed convolution: bytes received per device (max over
devices), forward or backward pass. Derivation and assumptions: ``docs/lower_bound.md``.

Any number of spatial dimensions (1-, 2- and 3-D layers; written here for 2-D, a 3-D layer adds a
depth factor to every product, a 1-D layer drops the height one). Notation (element counts of the
unpadded arrays): ``|x| = N·H·W·C``, ``|w| = R·S·(C/G)·K``, ``|y| = N·Ho·Wo·K``; ``R·S`` is the
kernel window's size ``Π R_i``; ``F`` = multiply-adds that touch a real input element (taps that fall
into the zero padding, or onto the zero rows a transposed convolution's input dilation inserts, are
excluded; ``G`` feature groups: ``F = N·K·(C/G)·Π taps_i``); ``P`` devices, ``M`` words of memory per
device. Grouped and transposed layers take the same bound with these counts (``docs/lower_bound.md``
§9).

- **Memory-independent** (each device does ``F/P`` multiply-adds, of each contraction in the
  backward pass, on the same iteration subset; arrays start / end evenly distributed, ``1/P`` each,
  no recomputation): with ``A_w, A_y`` the elements of w and y a device touches and ``a_φ`` those of
  each phase ``x_φ`` of x (its rows of one residue mod the stride), ``(F/P)² ≤ A_y·A_w·Σ_φ n_φ·a_φ``
  (Loomis-Whitney on each tap's slice plus Cauchy-Schwarz; ``n_φ`` taps read phase φ: one phase of
  weight ``R·S`` at stride 1, so ``(F/P)² ≤ R·S·A_x·A_w·A_y``; each phase's read part taken as evenly
  distributed) and
  ``F/P ≤ A_y·cap_y`` etc.; the device receives what it touches beyond its share of the inputs
  and sends its partial sums beyond its share of the outputs, so the average over devices - and
  hence the maximum - receives at least ``min Σ (A_j - share_j)⁺``, solved exactly here.
- **Memory-dependent** (no balance needed): ``passes·F / (P·√(τ·M)) - M`` words, ``τ = max_φ n_φ``.

Only the input elements some tap reads count as x (``|x_read|``: all of x at stride 1, ``x[:, ::σ, ::σ]``
for a 1×1 stride-σ layer), taken as evenly distributed as x itself.
"""

from __future__ import annotations

import dataclasses
import itertools
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


def _water_fill_phased(
    q: float,
    x_pieces: list[tuple[int, float, float]],
    x_low: float,
    low: list[float],
    high: list[float],
    share: list[float],
) -> tuple[float, list[float]]:
    """min Σ_φ (x_φ - s_φ)⁺ + Σ_{j=w,y} (A_j - s_j)⁺ s.t. (Σ_φ n_φ x_φ)·A_w·A_y ≥ q, x_φ ≤ |x_φ|,
    Σ_φ n_φ x_φ ≥ x_low and low ≤ (A_w, A_y) ≤ high, where ``x_pieces`` holds ``(n_φ, s_φ, |x_φ|)``
    per input phase and ``low``, ``high``, ``share`` the kernel's and the output's bounds and shares.

    The x part depends only on the weighted footprint ``X = Σ n_φ x_φ``: its cheapest cost is 0 up to
    ``X_0 = Σ n_φ s_φ`` and then grows linearly phase by phase, heaviest weight first (slope 1/n_φ),
    which is convex in log X as ``(A - s)⁺`` is. For a multiplier μ ≥ 0 each part minimises its cost
    minus μ·log (``A_j = clip(max(s_j, μ), low_j, high_j)``; X the point of slope μ/X, clipped), and when
    the product at μ stays below q, weak duality makes the cost at μ a lower bound on the minimum. μ
    is bisected; the cost is returned at the lower end of the bracket. Returns ``(cost, [A_x, A_w,
    A_y])`` with ``A_x = Σ_φ x_φ`` at the upper end.
    """
    pieces = sorted(x_pieces, key=lambda piece: -piece[0])
    base = sum(n * s for n, s, _ in pieces)
    top = sum(n * full for n, _, full in pieces)

    def weighted_x(mu: float) -> float:
        value = edge = base
        for n, s, full in pieces:  # segment [edge, edge + n(full - s)] costs 1/n per unit of X
            value = min(max(edge, mu * n), edge + n * (full - s))
            if value < edge + n * (full - s):  # slope X/n reaches μ before the segment's end
                break
            edge += n * (full - s)
        return min(max(value, x_low), top)

    def x_cost(big_x: float) -> tuple[float, float]:
        if big_x <= base:
            return 0.0, sum(s for _, s, _ in pieces) * big_x / base
        cost, extra, touched = 0.0, big_x - base, sum(s for _, s, _ in pieces)
        for n, s, full in pieces:
            take = min(extra / n, full - s)
            cost, extra, touched = cost + take, extra - take * n, touched + take
        return cost, touched

    def at(mu: float) -> tuple[float, list[float]]:
        aw, ay = (min(max(max(s, mu), lo), hi) for s, lo, hi in zip(share, low, high, strict=True))
        big_x = weighted_x(mu)
        cost, touched = x_cost(big_x)
        cost += max(0.0, aw - share[0]) + max(0.0, ay - share[1])
        return cost, [big_x, aw, ay, touched]

    def enough(a: list[float]) -> bool:
        return a[0] * a[1] * a[2] >= q

    if enough(at(0.0)[1]):
        cost, a = at(0.0)
        return cost, [a[3], a[1], a[2]]
    if top * high[0] * high[1] < q * (1 - 1e-12):
        raise ValueError("infeasible footprint: the Loomis-Whitney product exceeds the array sizes")
    lo_mu, hi_mu = 0.0, max(*high, top / min(n for n, _, _ in pieces))
    for _ in range(200):
        mid = 0.5 * (lo_mu + hi_mu)
        if enough(at(mid)[1]):
            hi_mu = mid
        else:
            lo_mu = mid
    a = at(hi_mu)[1]
    return at(lo_mu)[0], [a[3], a[1], a[2]]


def _x_phases(geom: ConvGeometry) -> list[tuple[int, int]]:
    """``(n_φ, |x_φ|)`` per phase φ of the input (one residue mod σ per spatial dimension) that some tap
    reads: how many of the window's taps read that phase, and its read elements (``N·C`` times the
    read rows of the phase in each dimension; :meth:`jaxcnn.geometry.DimGeometry.phases`)."""
    n, c = geom.batch, geom.channels_in
    return [
        (math.prod(taps for taps, _ in combo), n * c * math.prod(rows for _, rows in combo))
        for combo in itertools.product(*(dim.phases() for dim in geom.dims))
    ]


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
    # Lemma 1's weights: n_φ taps read the input phase φ, |x_φ| its elements some tap reads (all of x at
    # stride 1, x[:, ::σ, ::σ] for a 1×1 stride-σ layer; docs/lower_bound.md §2)
    phases = _x_phases(geom)
    taps = max(n_phase for n_phase, _ in phases)
    size_x = sum(size for _, size in phases)
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
    if len(phases) == 1:  # one phase (every stride-1 layer): the product is τ·A_x·A_w·A_y, τ = n_φ
        words, footprint = _water_fill(fi * fi / taps, low, high, share)
    else:  # several: x's phases enter weighted, Σ n_φ x_φ, each with its share of its own elements
        x_pieces = [(n_phase, size if "x" in replicated else size / p, size) for n_phase, size in phases]
        x_low = min(n_phase for n_phase, _ in phases) * low[0]
        words, footprint = _water_fill_phased(fi * fi, x_pieces, x_low, low[1:], high[1:], share[1:])
    memory = None
    if memory_bytes is not None:
        m = memory_bytes / dtype_bytes
        passes = 1 if pass_ == "forward" else 2
        memory = max(0.0, passes * f / (p * math.sqrt(taps * m)) - m) * dtype_bytes
    return Bound(pass_, p, f, words * dtype_bytes, memory, tuple(footprint))
