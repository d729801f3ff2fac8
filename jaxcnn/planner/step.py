"""Whole-training-step communication: every collective of a jaxcnn model's train step, predicted.

A train step of a model whose plan graph (:mod:`jaxcnn.models.graph`) places every convolution moves,
per device (bytes received, max over devices; the counting rule of :mod:`jaxcnn.cost`):

==========================  =================================================================
component                   what moves
==========================  =================================================================
``conv``                    each convolution, forward and backward (:func:`jaxcnn.cost.predict`,
                            kernel-gradient all-reduces of replicated kernels included); a
                            residual block's first convolution and projection reading one copy of
                            its input alike exchange its halos and gather its first x panel once
                            (:func:`jaxcnn.cost.shared_reads`)
``layout``                  every layout change (:mod:`jaxcnn.redistribute`): the images into the
                            first layer, between consecutive layers, a residual's shortcut into
                            the sum's layout (none where the first main convolution's input
                            already is there), a U-Net skip and the upsampled activation into the
                            concatenation layout, pooled features into the head, logits out of it;
                            forward and (except for the images) the reverse change backward
``batchnorm``               per BatchNorm: the psum of the stacked sums (2·K_local words) over the
                            row axes forward; backward the three sums the gradients are made of
                            (of dy, dy·x and dy·x̂, 3·K_local words), all-reduced by XLA once per
                            split row dimension (over that dimension's axes)
``pooling``                 halo rows of a pooling window over a split d / h / w, forward and backward
``head``                    global average pooling's psum over split h / w (forward); the
                            classifier's bias gradient (an all-reduce over its row axes)
``loss``                    the labels' layout change into the logits' layout; the all-reduce of
                            the loss and accuracy sums over the devices splitting the batch; for a
                            segmentation :class:`~jaxcnn.models.graph.Output`: its bias gradient,
                            the per-voxel logits into their classes-gathered layout and the
                            per-voxel labels into theirs, the sums over the devices splitting rows
==========================  =================================================================

Every term is a vector over devices (row-major over the run's devices, the flat order of every mesh
:func:`jaxcnn.make_mesh` lays over them), summed, then maximised: the figure the HLO meter reports
(``jaxcnn train --compile-only``'s ``comm_bytes_per_step_max_device``). On ``hosts > 1`` each term
also carries the bytes that cross hosts (:mod:`jaxcnn.links`), which the planner weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcnn import redistribute
from jaxcnn.cost import CommCost, Cost, Ledger, add_halo, itemsize_of, predict, shared_reads
from jaxcnn.geometry import ConvGeometry, conv_geometry, halo_plan
from jaxcnn.links import LinkBytes
from jaxcnn.mesh import AXES
from jaxcnn.models.graph import Concat, Conv, Head, Node, Output, Pool, Residual, channels_gathered

Layout = tuple[P, tuple[tuple[str, int], ...]]  # (spec, mesh axes and sizes), as redistribute.plan takes


def grid_key(grid: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """A grid as the ``((axis, size), ...)`` of a :func:`jaxcnn.make_mesh` mesh."""
    return tuple((a, int(grid.get(a, 1))) for a in AXES)


def x_layout(choice: Cost) -> Layout:
    return choice.layout.x_spec, grid_key(choice.grid)


def y_layout(choice: Cost) -> Layout:
    return choice.layout.y_spec, grid_key(choice.grid)


Kinds = LinkBytes  # per-device bytes by collective kind, and the part of them over the DCN


def _ledger(ledger: Ledger) -> Kinds:
    return ledger.result().link_bytes()


def _negated(comm: CommCost) -> Kinds:
    """Per-device bytes of ``comm``, negated (to take back what two placements share)."""
    return comm.link_bytes(-1.0)


def conv_kinds(choice: Cost) -> Kinds:
    """Per-device bytes of a convolution, forward + backward, by kind."""
    return choice.forward.link_bytes().merge(choice.backward.link_bytes())


def move(
    shape: Sequence[int], src: Layout, dst: Layout, itemsize: int, backward: bool = True, hosts: int = 1
) -> Kinds:
    """Per-device bytes of a layout change (forward, plus the reverse change backward), by kind, and
    the part of them that crosses ``hosts`` hosts."""
    out = LinkBytes()
    for a, b in ((src, dst), (dst, src)) if backward else ((src, dst),):
        out.merge(redistribute.plan(tuple(shape), a, b).link_bytes(itemsize, hosts))
    return out


def moves_nothing(shape: Sequence[int], src: Layout, dst: Layout) -> bool:
    """Whether changing an array of ``shape`` from ``src`` to ``dst`` moves nothing
    (:func:`jaxcnn.redistribute.moves_nothing`: the same blocks on the same devices)."""
    return not redistribute.plan(tuple(shape), src, dst).steps


def _entries(spec: P, rank: int) -> tuple[tuple[str, ...], ...]:
    """The mesh axes splitting each dimension of a rank-``rank`` activation laid out as ``spec``."""
    return redistribute.spec_entries(spec, rank)


def _rank(choice: Cost) -> int:
    """Rank of a convolution's activations, ``(N, *spatial, C)``: 4 in 2-D, 5 in 3-D."""
    return len(choice.layout.padded) - 1


def _parts(choice: Cost, entries: Sequence[tuple[str, ...]]) -> list[int]:
    """Blocks each dimension is split into."""
    return [math.prod(choice.grid.get(a, 1) for a in e) for e in entries]


def batchnorm(choice: Cost) -> Kinds:
    """Per-device bytes of a BatchNorm on a convolution's output (float32 statistics)."""
    lay = choice.layout
    ledger = Ledger(choice.grid, choice.hosts)
    channels = lay.padded[-1] // (lay.size("k") * lay.size("c"))
    ledger.group("all-reduce", 2 * channels * 4, lay.rows)  # forward: sums of x and x^2, one psum
    # backward: XLA reduces the three per-channel sums the gradients are made of (of dy, dy * x and
    # dy * x_hat; a loss linear in the output would let it fold them into two) one split dimension at
    # a time: one all-reduce per split row dimension.
    for entry in _entries(lay.y_spec, _rank(choice))[:-1]:
        ledger.group("all-reduce", 3 * channels * 4, entry)
    return _ledger(ledger)


def pooling(choice: Cost, node: Pool, y_shape: Sequence[int], itemsize: int) -> Kinds:
    """Per-device bytes of a pooling window in a convolution's output layout (halos, fwd + bwd): one
    exchange per split spatial dimension in array order (d, h, w), the block already extended along
    the earlier ones (:func:`jaxcnn.nn.pooling.max_pool`, the rule of :func:`jaxcnn.cost.predict`)."""
    entries = _entries(choice.layout.y_spec, len(y_shape))
    parts = _parts(choice, entries)
    spatial = range(1, len(y_shape) - 1)
    plans = []
    for i in spatial:  # each dimension on its own, as the h dimension of a 1-wide geometry
        dim = conv_geometry((1, y_shape[i], 1, 1), (node.window, 1, 1, 1), (node.stride, 1), node.padding).h
        plans.append(halo_plan(dim, parts[i]) if parts[i] > 1 else None)
    blocks = [-(-y_shape[i] // parts[i]) for i in spatial]
    windows = [p.window if p else b for p, b in zip(plans, blocks, strict=True)]
    local = -(-y_shape[0] // parts[0]) * -(-y_shape[-1] // parts[-1]) * itemsize
    ledger = Ledger(dict(choice.grid), choice.hosts)
    for backward in (False, True):
        for i, plan in enumerate(plans):
            if plan is not None:
                row = local * math.prod(windows[:i]) * math.prod(blocks[i + 1 :])
                add_halo(ledger, plan, entries[i + 1][0], row, backward)
    return _ledger(ledger)


def global_pool(choice: Cost, y_shape: Sequence[int], itemsize: int) -> Kinds:
    """Global average pooling's psum over the axes splitting space (forward only; float32 sums, or
    the activations' dtype where wider)."""
    entries = _entries(choice.layout.y_spec, len(y_shape))
    parts = _parts(choice, entries)
    ledger = Ledger(dict(choice.grid), choice.hosts)
    local = -(-y_shape[0] // parts[0]) * -(-y_shape[-1] // parts[-1])
    ledger.group("all-reduce", local * max(itemsize, 4), sum(entries[1:-1], ()))
    return _ledger(ledger)


def pooled_layout(choice: Cost) -> Layout:
    """Layout of the ``(N, 1, 1, C)`` pooled features the classifier head reads
    (:class:`jaxcnn.models.common.Head`): rows of N and the channels stay, space gathered."""
    e = _entries(choice.layout.y_spec, _rank(choice))
    kept = (e[0], (), (), e[-1])
    spec = P(*(None if not x else x[0] if len(x) == 1 else x for x in kept))
    return spec, grid_key(choice.grid)


def logits_layout(head: Cost) -> Layout:
    """Layout the logits leave the head in: batch as the head's rows, classes gathered."""
    return P(head.layout.y_spec[0]), grid_key(head.grid)


def head_extras(head: Cost, input_layout: Layout, classes: int, batch: int, itemsize: int) -> Kinds:
    """Classifier bias gradient, logits out of the head, labels into it, loss and accuracy sums."""
    lay = head.layout
    ledger = Ledger(head.grid, head.hosts)
    ledger.group("all-reduce", lay.padded[-1] // (lay.size("k") * lay.size("c")) * 4, lay.rows)
    ledger.group("all-reduce", 2 * 4, lay.rows)  # loss and accuracy sums (float32 scalars)
    out = _ledger(ledger)
    spec, grid = logits_layout(head)
    four = (P(*spec, None, None, None), grid)
    out.merge(move((batch, 1, 1, classes), y_layout(head), four, itemsize, hosts=head.hosts))
    labels_src = (P(*tuple(input_layout[0])[:1]), input_layout[1])
    return out.merge(move((batch,), labels_src, (spec, grid), 4, backward=False, hosts=head.hosts))


def concat_layout(at: Layout, rank: int) -> Layout:
    """The layout a :class:`~jaxcnn.models.graph.Concat` concatenates in: ``at`` (the upsampling
    convolution's output layout) with the channels of the rank-``rank`` activation gathered."""
    return channels_gathered(at[0], rank), at[1]


def segmentation_extras(out: Cost, input_layout: Layout, y_shape: Sequence[int], itemsize: int) -> Kinds:
    """A segmentation :class:`~jaxcnn.models.graph.Output` ``(N, *spatial, classes)``: its bias gradient
    and the loss and accuracy sums (an all-reduce per split row dimension), its logits moved into their
    classes-gathered layout (forward and backward), the int32 labels from the images' layout into
    the logits' rows."""
    lay = out.layout
    ledger = Ledger(out.grid, out.hosts)
    bias = lay.padded[-1] // (lay.size("k") * lay.size("c")) * 4
    # Sums over batch and space (the bias gradient, the loss and accuracy sums): XLA reduces them one
    # split dimension at a time (as BatchNorm's backward sums), one all-reduce per split row dimension.
    for entry in redistribute.spec_entries(lay.y_spec, len(y_shape))[:-1]:
        ledger.group("all-reduce", bias + 2 * 4, entry)
    result = _ledger(ledger)
    logits = concat_layout(y_layout(out), len(y_shape))
    result.merge(move(y_shape, y_layout(out), logits, itemsize, hosts=out.hosts))
    labels_src = (P(*tuple(input_layout[0])[:1]), input_layout[1])
    labels = (P(*tuple(logits[0])[:-1]), logits[1])
    return result.merge(move(tuple(y_shape)[:-1], labels_src, labels, 4, backward=False, hosts=out.hosts))


@dataclasses.dataclass(frozen=True)
class GraphNodes:
    """What the cost of each placement needs to know about a plan graph.

    Attributes:
      names: the convolutions in execution order.
      pools: the pooling after a convolution, by its name.
      feeds_head: the convolution feeding the classifier head (the last main one before it).
      plain: convolutions without a BatchNorm (transposed convolutions; the head and outputs aside).
      outputs: segmentation outputs (:class:`~jaxcnn.models.graph.Output`).
      skips: convolutions whose output a later :class:`~jaxcnn.models.graph.Concat` reads.
      head: the classifier (:class:`~jaxcnn.models.graph.Head`), None in a graph without one.
    """

    names: list[str]
    pools: dict[str, Pool]
    feeds_head: str | None
    plain: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()
    skips: frozenset[str] = frozenset()
    head: str | None = None

    def batchnorm(self, name: str) -> bool:
        """Whether the convolution ``name`` is followed by a BatchNorm (not the head, an output or a
        plain convolution)."""
        return name != self.head and name not in self.outputs and name not in self.plain


def graph_nodes(graph: Sequence[Node]) -> GraphNodes:
    """The graph's convolutions in execution order and what :func:`node_kinds` needs about each."""
    names: list[str] = []
    pools: dict[str, Pool] = {}
    plain, outputs, skips = set(), set(), set()
    feeds_head = last = head = None
    for node in graph:
        if isinstance(node, Conv):
            if not node.batchnorm:
                plain.add(node.name)
            names.append(node.name)
            last = node.name
        elif isinstance(node, Head):
            feeds_head, head = last, node.name
            names.append(node.name)
            last = node.name
        elif isinstance(node, Output):
            names.append(node.name)
            outputs.add(node.name)
        elif isinstance(node, Pool):
            pools[node.after] = node
        elif isinstance(node, Residual):
            names += [*node.main, *((node.shortcut,) if node.shortcut else ())]
            last = node.main[-1]
        elif isinstance(node, Concat):
            skips.add(node.skip)
        else:
            raise TypeError(f"unknown plan-graph node {node!r}")
    return GraphNodes(names, pools, feeds_head, frozenset(plain), frozenset(outputs), frozenset(skips), head)


def node_kinds(
    name: str, choice: Cost, geom: ConvGeometry, input_layout: Layout, itemsize: int, graph: GraphNodes
) -> dict[str, Kinds]:
    """Everything one placement moves on its own, by component: the convolution; its BatchNorm, or
    for the head (an output) its extras; a pooling window in its output layout; global pooling if it
    feeds the head. The planner's node cost and :func:`step_cost` both read this."""
    parts = {"conv": conv_kinds(choice)}
    if name == graph.head:  # the head's classes as placed (padded to its k * c, jaxcnn.models.common.Head)
        parts["loss"] = head_extras(choice, input_layout, choice.layout.padded[-1], geom.batch, itemsize)
    elif name in graph.outputs:
        parts["loss"] = segmentation_extras(choice, input_layout, geom.y_shape, itemsize)
    elif graph.batchnorm(name):
        parts["batchnorm"] = batchnorm(choice)
    if name in graph.pools:
        parts["pooling"] = pooling(choice, graph.pools[name], geom.y_shape, itemsize)
    if name == graph.feeds_head:
        parts["head"] = global_pool(choice, geom.y_shape, itemsize)
    return parts


@dataclasses.dataclass(frozen=True)
class StepCost:
    """Predicted bytes per device of one train step.

    Attributes:
      per_device: bytes each device receives.
      components: ``{component: max-over-devices bytes of that component alone}`` (see module docs).
      kinds: ``{collective kind: max-over-devices bytes of that kind alone}``.
      dcn_per_device: the part of ``per_device`` that crosses hosts (:mod:`jaxcnn.links`).
      link: every kind's bytes and latency terms per device, and their DCN parts (what a time model
        prices, :mod:`jaxcnn.planner.step_time`).
      parts: ``link`` by component.
    """

    per_device: tuple[float, ...]
    components: Mapping[str, float]
    kinds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    dcn_per_device: tuple[float, ...] = ()
    link: LinkBytes = dataclasses.field(default_factory=LinkBytes, compare=False)
    parts: Mapping[str, LinkBytes] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def max_bytes(self) -> float:
        return max(self.per_device, default=0.0)

    @property
    def dcn_max_bytes(self) -> float:
        """Max over devices of the bytes each device receives over the DCN."""
        return max(self.dcn_per_device, default=0.0)

    def weighted(self, factor: float) -> float:
        """Max over devices of ``ICI + factor · DCN`` bytes."""
        dcn = np.asarray(self.dcn_per_device) if self.dcn_per_device else 0.0
        return float(np.max(np.asarray(self.per_device) + (float(factor) - 1.0) * dcn, initial=0.0))


def step_cost(
    graph: Sequence[Node],
    layers: Mapping[str, ConvGeometry],
    choices: Mapping[str, Cost],
    input_layout: Layout,
    dtype="float32",
    hosts: int = 1,
) -> StepCost:
    """Predicts the communication of one train step of a model placed by ``choices``.

    Args:
      graph: the model's ``plan_graph``.
      layers: ``{conv name: geometry}`` (:func:`jaxcnn.models.trace.trace_layers`).
      choices: ``{conv name: jaxcnn.cost.predict(...)}`` of the placements the model runs.
      input_layout: the images' layout (``(P("n"), grid of the run mesh)``).
      dtype: activation dtype (collectives carry it).
      hosts: hosts the devices are split over (:mod:`jaxcnn.links`); ``choices`` must be predicted
        for the same (``Cost.hosts``).

    Raises:
      ValueError: a choice was predicted for another number of hosts.
    """
    itemsize = itemsize_of(dtype)
    num = math.prod(s for _, s in input_layout[1])
    mismatched = sorted(name for name, c in choices.items() if c.hosts != hosts)
    if mismatched:
        raise ValueError(f"choices {mismatched[:4]} were predicted for other than {hosts} hosts")
    components = ("conv", "layout", "batchnorm", "pooling", "head", "loss")
    parts: dict[str, Kinds] = {k: LinkBytes() for k in components}
    nodes = graph_nodes(graph)
    for name in nodes.names:
        for part, kinds in node_kinds(
            name, choices[name], layers[name], input_layout, itemsize, nodes
        ).items():
            parts[part].merge(kinds)

    def moved(shape: Sequence[int], src: Layout, dst: Layout, backward: bool = True) -> None:
        parts["layout"].merge(move(shape, src, dst, itemsize, backward, hosts))

    at: Layout = input_layout
    saved: dict[str, Layout] = {}  # outputs a later Concat reads, in their producers' layouts
    for node in graph:
        if isinstance(node, Head):
            head = choices[node.name]
            moved(layers[node.name].x_shape, pooled_layout(choices[nodes.feeds_head]), x_layout(head))
            at = y_layout(head)
        elif isinstance(node, Conv | Output):
            moved(
                layers[node.name].x_shape, at, x_layout(choices[node.name]), backward=at is not input_layout
            )
            at = y_layout(choices[node.name])
            if node.name in nodes.skips:
                saved[node.name] = at
        elif isinstance(node, Concat):
            cat = concat_layout(at, len(layers[node.up].y_shape))
            moved(layers[node.skip].y_shape, saved.pop(node.skip), cat)
            moved(layers[node.up].y_shape, at, cat)
            at = cat
        elif isinstance(node, Residual):
            start = at
            for name in node.main:
                moved(layers[name].x_shape, at, x_layout(choices[name]), backward=at is not input_layout)
                at = y_layout(choices[name])
            # the shortcut reads the block input where it is, or the copy the first main convolution
            # reads when that is where the shortcut reads it (one layout change for both readers,
            # jaxcnn.models.common.block_input)
            shape = layers[node.main[0]].x_shape
            first = x_layout(choices[node.main[0]])
            reads = x_layout(choices[node.shortcut]) if node.shortcut is not None else at
            where = first if moves_nothing(shape, first, reads) else start
            if node.shortcut is not None:
                moved(layers[node.shortcut].x_shape, where, reads, backward=where is not input_layout)
                if where is first:  # the projection reads the first convolution's copy
                    shared = shared_reads(choices[node.main[0]], choices[node.shortcut], itemsize)
                    if shared is not None:  # run once (XLA's CSE), not once per reader
                        parts["conv"].merge(_negated(shared))
                where = y_layout(choices[node.shortcut])
            moved(layers[node.main[-1]].y_shape, where, at)
    kinds = LinkBytes()
    for part in parts.values():
        kinds.merge(part)
    vec = kinds.total() + np.zeros(num)
    return StepCost(
        tuple(float(v) for v in vec),
        {k: float(v.total().max()) for k, v in parts.items()},
        {k: float(np.asarray(v).max()) for k, v in kinds.kinds.items()},
        tuple(float(v) for v in kinds.dcn + np.zeros(num)),
        kinds,
        parts,
    )


def choices_for(
    layers: Mapping[str, ConvGeometry],
    placements: Mapping[str, tuple[str, Mapping[str, int]]],
    dtype="float32",
    first: str | None = None,
    hosts: int = 1,
) -> dict[str, Cost]:
    """``{name: predict(geom, algorithm, grid)}`` for ``{name: (algorithm, grid)}``; the layer ``first``
    (the one reading the images) without an input gradient; costs on ``hosts`` hosts."""
    return {
        name: predict(layers[name], alg, dict(grid), dtype, input_grad=name != first, hosts=hosts)
        for name, (alg, grid) in placements.items()
    }


def first_conv(graph: Sequence[Node]) -> str:
    """The name of the convolution that reads the images."""
    node = graph[0]
    if isinstance(node, Residual):
        return node.main[0]
    if isinstance(node, Conv | Head | Output):
        return node.name
    raise TypeError(f"a plan graph starts with a convolution, got {node!r}")
