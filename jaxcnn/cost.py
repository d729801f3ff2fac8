"""Closed-form cost model: the bytes every algorithm receives per device, forward and backward, and
its per-device memory, for any layer and grid — exact against the compiled HLO (``jaxcnn.measure``).

Counting follows ``docs/conventions.md``: bytes *received* per device, bandwidth-optimal collectives,
group size ``p``, full buffer ``S``: all-gather / reduce-scatter / all-to-all ``S(p-1)/p``, all-reduce
``2S(p-1)/p``, collective-permute ``S`` at each target. Each collective is evaluated on every device
of the mesh (a vector over devices), so ``max_bytes`` is the true maximum over devices of each
device's total, and ``total_bytes`` the sum over devices. On ``hosts > 1`` (:mod:`jaxcnn.links`) each
collective's bytes are also counted as DCN bytes when they cross hosts (``dcn_per_device``); the exact
bytes do not change.

The formulas per algorithm are in the algorithm modules' docstrings and derived in
``docs/cost_model.md``. In short, with local window ``Xw = (N/n)·Hwin·Wwin`` (Hwin = halo window
σ(Bo-1)+d(R-1)+1 when h is split, else H; a 1-D / 3-D layer has one / three such factors, and
``R·S`` below is the product of its window), ``m`` channel panels, ``Pr`` the row-axis product:

forward: halo permutes, one exchange per split spatial dimension in array order (d, h, w), each
carrying the dimensions before it already extended to their windows (so edges and corners travel);
``m`` × all-gather over k of ``Xw·C/(Pc·m)``; ``m`` × all-gather over the rows
of ``R·S·C/(Pc·m)·K/Pk`` (2d/2.5d/3d); one reduce-scatter over c of ``(N/n)·Ho_l·Wo_l·K/Pk``.
backward: all-gather over c of dy; ``m-1`` recomputed panel gathers of x and kernel (the checkpointed
loop; panel 0 and the whole ``m = 1`` case keep their gathers as residuals); ``m`` reduce-scatters
over k of dx panels and ``m`` over the rows of dkernel panels; the reversed halo permutes; for the
baselines that replicate the kernel over the rows (data, spatial, and filter / channel combined with
row splits) one all-reduce of the kernel gradient block over the rows.

Grouped layers (``geom.groups`` = G > 1, :mod:`jaxcnn.algorithms.groups`) use the same ledger with the
grouped layout's collectives: the kernel block is ``R·S·(C/G)·K/(k·c)`` (``K/k`` for filter with
selection), x is gathered over k only for filter with selection (whole, ``Xw·C``), and nothing is
reduce-scattered over c. Transposed layers (input dilation σi > 1, ``jaxcnn.conv_transpose``) use the
dense ledger with halo pieces of undilated rows (``HaloPlan.window`` rows, not the dilated window).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from jaxcnn import algorithms, links
from jaxcnn.algorithms.base import Layout
from jaxcnn.dtypes import Dtypes
from jaxcnn.geometry import ConvGeometry, HaloPlan
from jaxcnn.mesh import AXES

#: The collective kinds the cost model counts (the HLO op names).
COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def latency_steps(kind: str, group: int) -> int:
    """The latency terms of one bandwidth-optimal collective of ``kind`` over ``group`` devices: ``g-1``
    for the ring kinds (all-gather, reduce-scatter, all-to-all), ``2(g-1)`` for an all-reduce
    (reduce-scatter then all-gather), 1 for a permute (a device receives from one other)."""
    if kind not in COLLECTIVE_KINDS:
        raise ValueError(f"unknown collective kind {kind!r}; valid: {', '.join(COLLECTIVE_KINDS)}")
    if group < 1:
        raise ValueError(f"a group has at least 1 device, got {group}")
    if kind == "collective-permute":
        return 1
    return (2 if kind == "all-reduce" else 1) * (group - 1)


@dataclasses.dataclass(frozen=True, eq=False)
class CommCost:
    """Predicted communication of one program (forward or backward).

    Attributes:
      per_kind: ``{kind: (count, max_bytes, total_bytes)}`` for kinds that occur.
      max_bytes: max over devices of the bytes each device receives.
      total_bytes: sum over devices.
      per_device: bytes each device receives (row-major over the grid's axes ``n, d, h, w, k, c``, which
        is the flat device order of every mesh :func:`jaxcnn.make_mesh` lays over the same devices).
      kind_per_device: ``per_device`` split by collective kind.
      dcn_per_device: the part of ``per_device`` that crosses hosts (:mod:`jaxcnn.links`; zeros on
        one host).
      steps_per_device: per kind, the latency terms each device takes part in (:func:`latency_steps`
        of each collective, times its count), the α side of a time model (:mod:`jaxcnn.timing`).
      dcn_steps_per_device: the part of those terms in collectives that cross hosts.
      calls_per_device: per kind, the collectives each device takes part in.
    """

    per_kind: Mapping[str, tuple[int, float, float]]
    max_bytes: float
    total_bytes: float
    per_device: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    kind_per_device: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    dcn_per_device: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    steps_per_device: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    dcn_steps_per_device: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    calls_per_device: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def link_bytes(self, sign: float = 1.0) -> links.LinkBytes:
        """Bytes, latency terms and calls per device by kind (times ``sign``), as the step accounting
        sums them."""
        return links.LinkBytes(
            {k: sign * np.asarray(v) for k, v in self.kind_per_device.items()},
            sign * np.asarray(self.dcn_per_device),
            {k: sign * np.asarray(v) for k, v in self.steps_per_device.items()},
            sign * np.asarray(self.dcn_steps_per_device) if self.dcn_steps_per_device.size else np.zeros(1),
            {k: sign * np.asarray(v) for k, v in self.calls_per_device.items()},
        )

    @property
    def dcn_max_bytes(self) -> float:
        """Max over devices of the bytes each device receives over the DCN."""
        return float(self.dcn_per_device.max()) if self.dcn_per_device.size else 0.0

    def weighted(self, factor: float) -> float:
        """Max over devices of ``ICI + factor · DCN`` bytes (``max_bytes`` when nothing crosses hosts)."""
        if not self.dcn_per_device.any():
            return self.max_bytes
        return float(links.weighted(self.per_device, self.dcn_per_device, factor).max())


@dataclasses.dataclass(frozen=True)
class MemoryCost:
    """Predicted per-device bytes.

    Attributes:
      inputs: local x block + local kernel block.
      output: local y block.
      forward_temp: largest live working set of the forward pass beyond inputs/outputs (halo window,
        one gathered x panel, one gathered kernel panel, the partial-output accumulator).
      layout_copy: the largest buffer a backend may hold once more (a gathered x panel, or the
        unreduced output before the reduce-scatter: XLA:CPU gathers and scatters along the major
        dimension and transposes; or the received halo pieces before they are concatenated into the
        window, which XLA:CPU keeps for spatial splits); with ``+overlap`` also the output pieces
        before they are concatenated into the block (:mod:`jaxcnn.algorithms.overlap`; written in
        place or not, as the backend chooses); with double-buffered panels (:mod:`jaxcnn.algorithms.pipeline`)
        the next panel of each operand arriving; compiled temp memory lies between ``forward_temp``
        and ``forward_temp + layout_copy`` (see docs/cost_model.md).
      x_block: the local x block alone (``inputs`` without the kernel block).
      window: the halo-extended input window the local convolution reads (``x_block`` when no
        spatial dimension is split); the backward pass reads it again for the kernel gradient.
      saved: what the local convolution read and the backward pass reads again (the residuals of
        autodiff), beyond the kernel block: the gathered x panel, or the window when x is not
        gathered, and the gathered kernel panel; streaming (several panels under
        ``jax.checkpoint``, or double-buffered, :mod:`jaxcnn.algorithms.pipeline`), the window and the
        first panel's gathered x and kernel.
      kernel_read: the kernel as the local convolution reads it (the gathered panel, or the block).
      kept_panels: the gathered x and kernel panels among ``saved`` when there is one panel: the
        backward pass reads them rather than gathering again (streaming, it gathers panel by panel).
      peak: inputs + output + forward_temp.
    """

    inputs: float
    output: float
    forward_temp: float
    layout_copy: float = 0.0
    x_block: float = 0.0
    window: float = 0.0
    saved: float = 0.0
    kernel_read: float = 0.0
    kept_panels: float = 0.0

    @property
    def peak(self) -> float:
        return self.inputs + self.output + self.forward_temp


@dataclasses.dataclass(frozen=True)
class Cost:
    """Prediction for one (layer, algorithm, grid)."""

    algorithm: str
    grid: Mapping[str, int]
    forward: CommCost
    backward: CommCost
    memory: MemoryCost
    layout: Layout
    geom: ConvGeometry | None = None  # the layer predicted (its output channels padded, for a head)
    hosts: int = 1  # hosts the devices are split over (jaxcnn.links)

    @property
    def bytes(self) -> float:
        """Max bytes per device of a training step's convolution (forward + backward)."""
        return self.forward.max_bytes + self.backward.max_bytes

    @property
    def dcn_bytes(self) -> float:
        """Max bytes per device over the DCN, forward + backward (0 on one host)."""
        return self.forward.dcn_max_bytes + self.backward.dcn_max_bytes

    def weighted(self, factor: float) -> float:
        """Forward + backward max over devices of ``ICI + factor · DCN`` bytes (``bytes`` on one host)."""
        return self.forward.weighted(factor) + self.backward.weighted(factor)


class Ledger:
    """Accumulates per-device received bytes by collective kind, and the part that crosses hosts.

    Args:
      sizes: the grid ``{axis: size}`` (devices row-major over ``AXES``).
      hosts: hosts the flat device order is split over (:mod:`jaxcnn.links`); a collective whose group
        spans hosts counts all its received bytes as DCN bytes, a permute those from another host.
    """

    def __init__(self, sizes: Mapping[str, int], hosts: int = 1):
        self.sizes = {a: int(sizes.get(a, 1)) for a in AXES}
        self.shape = [self.sizes[a] for a in AXES]
        self.coords = {a: c.ravel() for a, c in zip(AXES, np.indices(self.shape), strict=True)}
        self.num_devices = math.prod(self.shape)
        links.check_hosts(self.num_devices, hosts)
        self.hosts = hosts
        # kind: [count, bytes per device, latency terms per device, calls per device]
        self.kinds: dict[str, list] = {}
        self.dcn = np.zeros(self.num_devices)
        self.dcn_steps = np.zeros(self.num_devices)

    def _add(
        self, kind: str, received: np.ndarray, count: int, crosses: np.ndarray, steps: np.ndarray
    ) -> None:
        """``count`` collectives of ``kind`` in which every device takes part (a permute too, receiving
        or not), each receiving ``received`` and taking ``steps`` latency terms per device."""
        zeros = np.zeros(self.num_devices)
        entry = self.kinds.setdefault(kind, [0, zeros, zeros, zeros])
        entry[0] += count
        entry[1] = entry[1] + received * count
        entry[2] = entry[2] + steps * count
        entry[3] = entry[3] + count
        if self.hosts > 1:
            self.dcn = self.dcn + received * count * crosses
            self.dcn_steps = self.dcn_steps + steps * count * crosses

    def group(self, kind: str, full_bytes: float, axes: tuple[str, ...], count: int = 1) -> None:
        """All-gather / reduce-scatter / all-reduce over ``axes`` of a buffer of ``full_bytes``."""
        p = math.prod(self.sizes[a] for a in axes)
        if p <= 1 or count == 0:
            return
        factor = 2.0 if kind == "all-reduce" else 1.0
        crosses = links.group_crosses(self.shape, [AXES.index(a) for a in axes], self.hosts)
        steps = np.full(self.num_devices, float(latency_steps(kind, p)))
        self._add(kind, np.full(self.num_devices, factor * full_bytes * (p - 1) / p), count, crosses, steps)

    def permute(self, nbytes: float, axis: str, hop: int) -> None:
        """A non-cyclic shift by ``hop`` along ``axis``: device b receives from b - hop."""
        src = self.coords[axis] - hop
        valid = (src >= 0) & (src < self.sizes[axis])
        stride = math.prod(self.shape[AXES.index(axis) + 1 :])
        sources = np.where(valid, np.arange(self.num_devices) - hop * stride, -1)
        crosses = links.source_crosses(sources, self.hosts)
        self._add("collective-permute", nbytes * valid, 1, crosses, valid.astype(float))

    def result(self) -> CommCost:
        total = sum((v[1] for v in self.kinds.values()), np.zeros(self.num_devices))
        per_kind = {k: (v[0], float(v[1].max()), float(v[1].sum())) for k, v in self.kinds.items()}
        kinds = {k: _frozen(v[1]) for k, v in self.kinds.items()}
        steps = {k: _frozen(v[2]) for k, v in self.kinds.items()}
        calls = {k: _frozen(v[3]) for k, v in self.kinds.items()}
        return CommCost(
            per_kind,
            float(total.max()),
            float(total.sum()),
            _frozen(total),
            kinds,
            _frozen(self.dcn),
            steps,
            _frozen(self.dcn_steps),
            calls,
        )


def _frozen(vec: np.ndarray) -> np.ndarray:
    out = np.array(vec, dtype=float)
    out.setflags(write=False)
    return out


def add_halo(ledger: Ledger, plan: HaloPlan | None, axis: str, row_bytes: float, backward: bool) -> None:
    """Permutes of one halo exchange; ``row_bytes`` is the size of one row of the piece."""
    if plan is None:
        return
    sign = -1 if backward else 1
    for hop, rows in plan.left_pieces():
        if hop < plan.parts:
            ledger.permute(rows * row_bytes, axis, sign * hop)
    for hop, rows in plan.right_pieces():
        if hop < plan.parts:
            ledger.permute(rows * row_bytes, axis, -sign * hop)


@dataclasses.dataclass(frozen=True)
class _XBlocks:
    """A layout's local x: ``nl`` batch rows, its spatial ``blocks`` and halo ``windows``, ``cx``
    channels before the gather over k."""

    lay: Layout
    nl: int
    blocks: tuple[int, ...]
    windows: tuple[int, ...]
    cx: int

    @classmethod
    def of(cls, lay: Layout) -> _XBlocks:
        n_pad, *spatial_pad, c_pad, _ = lay.padded
        blocks = tuple(
            lay.read_rows(i, size // lay.size(a))
            for i, (size, a) in enumerate(zip(spatial_pad, lay.spatial_axes, strict=True))
        )
        windows = tuple(p.window if p else b for p, b in zip(lay.plans, blocks, strict=True))
        return cls(lay, n_pad // lay.size("n"), blocks, windows, c_pad // (lay.size("c") * lay.size("k")))

    def add_halos(self, ledger: Ledger, itemsize: int, backward: bool) -> None:
        """The halo exchanges, one per split spatial dimension in array order."""
        for i, (axis, plan) in enumerate(zip(self.lay.spatial_axes, self.lay.plans, strict=True)):
            # the block being extended along dimension i: earlier dimensions already extended
            row = self.nl * math.prod(self.windows[:i]) * math.prod(self.blocks[i + 1 :]) * self.cx * itemsize
            add_halo(ledger, plan, axis, row, backward)

    def panel_bytes(self, itemsize: int) -> int:
        """One gathered x panel (the full buffer of its all-gather over k)."""
        gathered = self.cx * (self.lay.size("k") if self.lay.k_gather else 1)  # channels after it
        return self.nl * math.prod(self.windows) * (gathered // self.lay.panels) * itemsize


def _reads_key(lay: Layout) -> tuple:
    """What a forward pass does to x before its first local convolution depends on: the grid, x's
    layout and padding, the halo plans, the channel panels and the axes x is gathered over."""
    return (
        lay.sizes,
        lay.x_spec,
        lay.padded[:-1],
        lay.plans,
        lay.panels,
        lay.unit,
        lay.k_gather,
        lay.subsample,
        lay.replicas,
    )


def shared_reads(a: Cost, b: Cost, dtype="float32") -> CommCost | None:
    """The forward collectives of ``b`` that XLA runs only once when ``a`` and ``b`` read the same array.

    Two convolutions reading one array (a residual block's first convolution and its projection) run
    the same collectives on it before their local convolutions when both lay it out, pad it and cut
    its halo windows alike and gather its channel panels alike (the same grid; the kernels may
    differ, e.g. ResNet-50's 1x1 conv1 and stride-2 projection both on ``3d@k=4,c=8``): the forward
    halo exchanges and the first panel's all-gather over k (the later panels are gathered inside each
    layer's own loop; the backward pass reads the saved panel). XLA's common-subexpression
    elimination keeps one of each, so the pair moves those bytes once. None when the two differ in
    any of that or there is nothing to share.

    Args:
      a, b: the two convolutions' costs (:func:`predict`, on the same hosts).
      dtype: the compute dtype (what the halos and gathers move; a :class:`Dtypes` or a dtype).
    """
    if _reads_key(a.layout) != _reads_key(b.layout):
        return None
    x = _XBlocks.of(b.layout)
    ledger = Ledger(dict(b.layout.sizes), b.hosts)
    x.add_halos(ledger, itemsize_of(dtype), backward=False)
    ledger.group("all-gather", x.panel_bytes(itemsize_of(dtype)), b.layout.k_gather)
    shared = ledger.result()
    return shared if shared.max_bytes > 0 else None


def _sent_rows(plan: HaloPlan | None) -> int:
    """Rows of the halo pieces a device receives along one split dimension (0 when unsplit)."""
    if plan is None:
        return 0
    return sum(rows for hop, rows in plan.left_pieces() + plan.right_pieces() if hop < plan.parts)


def itemsize_of(dtype) -> int:
    """Bytes per element of a dtype (or an int itemsize passed through; of :class:`Dtypes`, the
    compute dtype's: what moves)."""
    if isinstance(dtype, int):
        return dtype
    return dtype.itemsize if isinstance(dtype, Dtypes) else np.dtype(dtype).itemsize


def predict(
    geom: ConvGeometry,
    algorithm: str,
    grid: Mapping[str, int],
    dtype="float32",
    out_dtype=None,
    input_grad: bool = True,
    hosts: int = 1,
) -> Cost:
    """Predicts the communication and memory of ``conv`` for one 1-, 2- or 3-D layer on one grid.

    Args:
      geom: the layer (``jaxcnn.conv_geometry``; its ``groups`` is the feature group count).
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      grid: mesh sizes ``{axis: size}`` (missing axes are 1).
      dtype: the compute dtype (x, the kernel on the devices, everything that moves), or a
        :class:`jaxcnn.dtypes.Dtypes` that also names the dtype the sums travel in (the forward
        reduce-scatter of partial outputs, the backward reduce-scatters and the kernel-gradient
        all-reduce; default float32 for 16-bit compute). Price a CPU step with
        ``Dtypes(...).on("cpu")``: XLA:CPU carries 16-bit reductions as float32.
      out_dtype: dtype of y (default the compute dtype); its cotangent's all-gather moves it.
      input_grad: the backward pass computes dx. A network's first layer (whose input is the images)
        needs only the kernel gradient: XLA drops dx's reduce-scatters over k and its reversed halos.
      hosts: hosts the devices are split over (:mod:`jaxcnn.links`): the costs then also say which
        bytes cross hosts (``CommCost.dcn_per_device``).

    Returns:
      The :class:`Cost`; ``cost.bytes`` is forward + backward max bytes per device.
    """
    sizes = {a: int(grid.get(a, 1)) for a in AXES}
    alg = algorithms.get(algorithm)
    if alg.overlap:
        plain = predict(geom, algorithms.plain(algorithm), grid, dtype, out_dtype, input_grad, hosts)
        return with_overlap(plain, itemsize_of(out_dtype or dtype))
    lay = algorithms.make_layout(alg, geom, sizes)
    dtypes = Dtypes.of(dtype)
    b_in = dtypes.itemsize  # bytes per moved element of x and the kernel
    b_out = itemsize_of(out_dtype or dtypes.compute)  # of y (and its cotangent)
    b_sum = dtypes.reduce_itemsize  # bytes per summed element on the wire
    s_in, s_out = b_in, b_out  # bytes per stored element
    b_acc = max(s_out, 4)
    k_pad = lay.padded[-1]
    pk, pc = lay.size("k"), lay.size("c")  # 1 on a replica axis (+replicas)
    x = _XBlocks.of(lay)
    nl, blocks, windows, cx = x.nl, x.blocks, x.windows, x.cx
    out_block = math.prod(lay.out_blocks(geom))  # output positions of a device's block
    taps = math.prod(geom.window)
    m = lay.panels
    k_in, k_out = lay.kernel_block  # kernel channels after the gather over the rows
    x_panel = x.panel_bytes(b_in)  # gathered x panel (full buffer)
    k_panel = taps * (k_in // m) * k_out * b_in  # gathered kernel panel
    partial = nl * out_block * (k_pad // pk)  # unreduced output block (elements)
    kernel_block = taps * k_in * k_out * b_sum  # a kernel replicated over the rows, its gradient summed
    rows = lay.rows

    fwd, bwd = Ledger(sizes, hosts), Ledger(sizes, hosts)
    for ledger, backward in ((fwd, False), (bwd, True)) if input_grad else ((fwd, False),):
        x.add_halos(ledger, b_in, backward)
    fwd.group("all-gather", x_panel, lay.k_gather, m)
    fwd.group("all-gather", k_panel, lay.kernel_gather, m)
    fwd.group("reduce-scatter", partial * b_sum, lay.c_scatter)

    bwd.group("all-gather", partial * b_out, lay.c_scatter)
    bwd.group("all-gather", x_panel, lay.k_gather, m - 1)  # panel 0's kept from the forward pass
    bwd.group("all-gather", k_panel, lay.kernel_gather, m - 1)
    bwd.group("reduce-scatter", x_panel // b_in * b_sum, lay.k_gather, m if input_grad else 0)
    bwd.group("reduce-scatter", k_panel // b_in * b_sum, lay.kernel_gather, m)
    if not alg.kernel_over_rows:
        bwd.group("all-reduce", kernel_block, rows)

    stored = (size // lay.size(a) for size, a in zip(lay.padded[1:-2], lay.spatial_axes, strict=True))
    x_local = nl * math.prod(stored) * cx * s_in  # the stored block, before any subsampling
    k_rows = math.prod(lay.size(a) for a in lay.kernel_gather)
    k_local = taps * k_in * k_out // k_rows * s_in
    window = nl * math.prod(windows) * cx * s_in if any(lay.plans) else 0
    # the received halo pieces, kept next to the window (the block extended along dimensions < i)
    halo_pieces = (
        sum(
            _sent_rows(plan) * math.prod(windows[:i]) * math.prod(blocks[i + 1 :])
            for i, plan in enumerate(lay.plans)
        )
        * nl
        * cx
        * s_in
    )
    gathered_x = x_panel // b_in * s_in if lay.k_gather else 0
    gathered_k = k_panel // b_in * s_in if lay.kernel_gather else 0
    partial_acc = nl * out_block * (k_pad // pk) * b_acc
    # Accumulation buffers beyond the output itself: the unreduced partial output when c > 1, and one
    # panel result in flight when streaming (m > 1).
    acc = partial_acc * (bool(lay.c_scatter) + (m > 1))
    memory = MemoryCost(
        inputs=float(x_local + k_local),
        output=float(nl * out_block * (k_pad // (pk * pc)) * s_out),
        forward_temp=float(window + gathered_x + gathered_k + acc),
        layout_copy=float(max(gathered_x, partial_acc if lay.c_scatter else 0, halo_pieces)),
        x_block=float(x_local),
        window=float(window or x_local),
        saved=float((window or x_local) * (m > 1 or not gathered_x) + gathered_x + gathered_k),
        kernel_read=float(gathered_k or k_local),
        kept_panels=float((gathered_x + gathered_k) * (m == 1)),
    )
    return Cost(algorithm, dict(sizes), fwd.result(), bwd.result(), memory, lay, geom, hosts)


def with_overlap(plain: Cost, out_itemsize: int = 4) -> Cost:
    """The ``+overlap`` variant of a plain algorithm's prediction, on the same grid.

    Its collectives are the plain algorithm's (halo overlap and double-buffered panels issue the same
    ones, :mod:`jaxcnn.algorithms.overlap`, :mod:`jaxcnn.algorithms.pipeline`), so only the layout and
    the memory change: ``layout_copy`` adds the output pieces before their concatenation (an output
    block in the accumulation dtype) with halo overlap, or the next gathered x and kernel panels in
    flight with double-buffered panels. Where nothing overlaps it is the plain prediction renamed.
    ``out_itemsize``: bytes per element of the output.
    """
    name = plain.algorithm + algorithms.OVERLAP
    lay = algorithms.make_layout(algorithms.get(name), plain.geom, dict(plain.layout.sizes))
    mem = plain.memory
    extra = 0.0
    if lay.interior is not None:  # the unreduced output block, in the accumulation dtype
        extra = mem.output * plain.layout.size("c") * max(out_itemsize, 4) / out_itemsize
    elif lay.pipelined:  # with several panels, saved = window + one gathered x and kernel panel
        extra = mem.saved - mem.window
    memory = dataclasses.replace(mem, layout_copy=mem.layout_copy + extra)
    return dataclasses.replace(plain, algorithm=name, layout=lay, memory=memory)
