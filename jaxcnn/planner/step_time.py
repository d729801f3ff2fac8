"""Whole-training-step time: a placed model's step, predicted in seconds from a timing profile.

:func:`step_time` adds, per device, what one train step of a model placed by ``choices`` runs
(``docs/step_time.md``, "The step-time model"):

==============  ======================================================================================
component       what it counts
==============  ======================================================================================
``compute``     every convolution's local passes, forward, input gradient (not for the layer reading
                the images) and kernel gradient, one per channel panel
                (:meth:`jaxcnn.timing.model.TimeModel.conv_seconds`)
``collectives`` every collective of :func:`jaxcnn.planner.step.step_cost` (convolutions, layout
                changes, BatchNorm, pooling, head, loss; the kernel-gradient all-reduces over the same
                devices as one call, :func:`combined_reductions`), ``(α + s)·steps + bytes/β +
                sync·calls`` per kind (:meth:`jaxcnn.timing.model.TimeModel.comm_seconds`), on the slow
                links' rates where they cross hosts; max over devices of the sum
``memory``      memory-bound passes (:data:`PASSES`): BatchNorm with its activation, pooling, residual
                adds, skip concatenations, halo windows assembled and their gradients scattered, and
                the optimizer's update of every local parameter
``straggle``    the waiting collectives add to the work before them where devices share cores
                (:meth:`jaxcnn.timing.model.TimeModel.straggle_seconds`)
``launch``      the program's launch (the profile's ``launch_s``)
==============  ======================================================================================

**Overlap.** On the CPU every device runs its program's operations one after another and XLA:CPU's
collectives are synchronous: nothing hides, the step is the sum. On GPU and TPU XLA's latency-hiding
scheduler issues collectives asynchronously and runs independent computation meanwhile; the rule
here counts two overlaps (``hidden``):

- an ``+overlap`` placement's halo permutes (:mod:`jaxcnn.algorithms.overlap`) hide behind its core
  convolutions, the forward permutes behind the core's forward pass and the reversed ones behind its
  share of the gradients, each up to that time; its boundary pieces cost their fixed costs; or its
  double-buffered panels' gathers (:mod:`jaxcnn.algorithms.pipeline`) hide behind the previous
  panel's passes (:meth:`jaxcnn.timing.model.TimeModel.overlap_hidden`);
- the all-reduces of kernel gradients (issued as soon as a layer's kernel gradient exists) hide
  behind the backward computation no halo hides behind, up to its time.

Every other collective feeds the next operation and is counted in full.

The per-layer figures (:attr:`StepTime.layers`) are each convolution's own compute, memory-bound work
and collectives (its node in the plan graph, :func:`jaxcnn.planner.step.node_kinds`); layout changes
between layers are the ``layout`` row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxcnn.cost import Cost, itemsize_of
from jaxcnn.geometry import ConvGeometry
from jaxcnn.links import LinkBytes
from jaxcnn.models.graph import Concat, Node, Residual
from jaxcnn.planner.step import GraphNodes, Layout, StepCost, first_conv, graph_nodes, node_kinds, step_cost
from jaxcnn.planner.step_memory import param_bytes
from jaxcnn.timing.model import TimeModel

#: Memory-bound passes per element of an activation (read + written, forward and backward), and the
#: fused operations they take: BatchNorm with its activation (forward: the statistics read y, the
#: normalisation reads y and writes the activation; backward: the three sums read dy and y, the
#: gradient reads dy and y and writes dx), a residual add with its ReLU (reads two, writes one; its
#: gradient reads dy and the output, writes one), a skip concatenation (read and write both inputs;
#: backward slices the gradient back), a halo window (the pieces concatenated into the window:
#: read and write it; backward the window's gradient sliced and added back).
PASSES = {
    "batchnorm": (8, 4),
    "residual": (6, 2),
    "concat": (4, 2),
    "window": (4, 2),
}
#: Optimizer state per parameter in parameter copies, and the update's reads and writes per
#: parameter: Adam (read p, g, m, v; write p, m, v), SGD with momentum (read p, g, m; write p, m),
#: plain SGD (read p, g; write p).
OPTIMIZER_PASSES = {"adam": 7, "adamw": 7, "momentum": 5, "sgd": 3}


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Predicted seconds of one train step (max over devices).

    Attributes:
      seconds: the step.
      components: ``compute``, ``collectives``, ``memory``, ``straggle`` (waiting at collectives for
        devices that share cores, :mod:`jaxcnn.timing.barrier`), ``launch`` and ``hidden`` (collective
        time overlapped with computation, subtracted: 0 on the CPU).
      layers: per convolution: its own compute, memory-bound work and collectives; ``layout`` for the
        layout changes between layers.
    """

    seconds: float
    components: Mapping[str, float]
    layers: Mapping[str, float]


def _node_memory(choice: Cost, nodes: GraphNodes, name: str) -> tuple[float, int]:
    """Memory-bound bytes and fused operations of a convolution's own work: its BatchNorm and
    activation, its halo window, a pooling window in its output layout."""
    nbytes, ops = 0.0, 0
    y = choice.memory.output  # the local output block, after any reduce-scatter over c
    parts = []
    if nodes.batchnorm(name):
        parts.append(("batchnorm", y))
    if any(choice.layout.plans):
        parts.append(("window", choice.memory.window))
    for kind, size in parts:
        nbytes, ops = nbytes + PASSES[kind][0] * size, ops + PASSES[kind][1]
    pool = nodes.pools.get(name)
    if pool is not None:  # reads y, writes the pooled block; backward reads both, writes dx
        nbytes += 3 * y + 2 * y / pool.stride ** len(choice.layout.plans)
        ops += 2
    return nbytes, ops


def _joins(graph: Sequence[Node], choices: Mapping[str, Cost]) -> tuple[float, int]:
    """Memory-bound bytes and operations of the residual adds and skip concatenations."""
    nbytes, ops = 0.0, 0
    for node in graph:
        if isinstance(node, Residual):
            nbytes += PASSES["residual"][0] * choices[node.main[-1]].memory.output
            ops += PASSES["residual"][1]
        elif isinstance(node, Concat):
            for name in (node.skip, node.up):
                nbytes += PASSES["concat"][0] * choices[name].memory.output
                ops += PASSES["concat"][1]
    return nbytes, ops


def _gradient_reduction(choice: Cost, sign: float = 1.0) -> LinkBytes:
    """The calls and latency terms (no bytes) of a placement's kernel-gradient all-reduce over its rows
    (the only all-reduce :func:`jaxcnn.cost.predict` issues)."""
    calls = choice.backward.calls_per_device.get("all-reduce")
    if calls is None:
        return LinkBytes()
    steps = choice.backward.steps_per_device["all-reduce"]
    return LinkBytes(
        steps={"all-reduce": sign * np.asarray(steps)}, calls={"all-reduce": sign * np.asarray(calls)}
    )


def combined_reductions(choices: Mapping[str, Cost]) -> LinkBytes:
    """XLA's all-reduce combiner: the kernel-gradient all-reduces are independent of each other and only
    the optimizer reads them, so XLA runs those over the same device groups as one all-reduce (seen in
    the compiled HLO: small_cnn's data-parallel step has one gradient all-reduce of every kernel, not
    five). The adjustment to the step's calls and latency terms: each layer's taken back, one per
    group of devices added; the bytes are unchanged."""
    out, groups = LinkBytes(), {}
    for choice in choices.values():
        reduction = _gradient_reduction(choice)
        if reduction.calls:
            out.merge(_gradient_reduction(choice, -1.0))
            groups.setdefault((tuple(sorted(choice.grid.items())), choice.layout.rows), reduction)
    for reduction in groups.values():
        out.merge(reduction)
    return out


@dataclasses.dataclass(frozen=True)
class NodeTime:
    """One placement's own seconds: local convolutions (and their backward part), memory-bound work
    (with the optimizer's update of its parameters), and its own collectives (max over devices of
    each component of :func:`jaxcnn.planner.step.node_kinds`)."""

    compute: float
    backward: float
    memory: float
    collectives: float
    straggle: float = 0.0
    hidden: float = 0.0
    hidden_backward: float = 0.0

    @property
    def seconds(self) -> float:
        return self.compute + self.memory + self.collectives + self.straggle - self.hidden


def node_time(
    model: TimeModel,
    name: str,
    choice: Cost,
    geom: ConvGeometry,
    input_layout: Layout,
    itemsize: int,
    nodes: GraphNodes,
    *,
    first: bool = False,
    optimizer: str = "adam",
) -> NodeTime:
    """The seconds of one placement on its own (the planner's node cost by time)."""
    conv = model.conv_seconds(choice, input_grad=not first, itemsize=itemsize)
    nbytes, ops = _node_memory(choice, nodes, name)
    passes = OPTIMIZER_PASSES.get(optimizer, OPTIMIZER_PASSES["adam"])
    # the optimizer's update of the layer's float32 parameters: one fused operation per array
    params = param_bytes(choice, nodes.batchnorm(name), itemsize)
    memory = model.memory_seconds(nbytes, ops) + model.memory_seconds(passes * params, 2)
    own = node_kinds(name, choice, geom, input_layout, itemsize, nodes)
    # its kernel-gradient all-reduce joins the others on the same devices (combined_reductions): here
    # only its bytes
    own["conv"] = LinkBytes().merge(own["conv"]).merge(_gradient_reduction(choice, -1.0))
    comm = sum(float(model.comm_seconds(k).max()) for k in own.values())
    work = sum(conv.values())
    straggle = model.straggle_seconds(work + memory)
    forward, backward = model.overlap_hidden(choice, conv, input_grad=not first)
    return NodeTime(
        work, conv["input_grad"] + conv["kernel_grad"], memory, comm, straggle, forward + backward, backward
    )


def node_timer(
    model: TimeModel,
    graph: Sequence[Node],
    layers: Mapping[str, ConvGeometry],
    input_layout: Layout,
    itemsize: int,
    optimizer: str = "adam",
) -> Callable[[str, Cost], NodeTime]:
    """``timer(name, choice)``: :func:`node_time` of the convolution ``name`` of ``graph`` placed as
    ``choice`` (the layer reading the images without an input gradient)."""
    nodes, first = graph_nodes(graph), first_conv(graph)

    def timer(name: str, choice: Cost) -> NodeTime:
        return node_time(
            model,
            name,
            choice,
            layers[name],
            input_layout,
            itemsize,
            nodes,
            first=name == first,
            optimizer=optimizer,
        )

    return timer


def step_time(
    graph: Sequence[Node],
    layers: Mapping[str, ConvGeometry],
    choices: Mapping[str, Cost],
    input_layout: Layout,
    model: TimeModel,
    dtype="float32",
    hosts: int = 1,
    optimizer: str = "adam",
    cost: StepCost | None = None,
) -> StepTime:
    """Predicts the seconds of one train step of a model placed by ``choices`` (module docstring).

    Args:
      graph, layers, choices, input_layout, dtype, hosts: as :func:`jaxcnn.planner.step.step_cost`.
      model: the backend's :class:`~jaxcnn.timing.model.TimeModel`.
      optimizer: the optimizer's name (its update's passes, :data:`OPTIMIZER_PASSES`; unknown names
        count as Adam).
      cost: the step's :func:`~jaxcnn.planner.step.step_cost` for the same arguments, when the caller
        has it (else it is computed here).
    """
    itemsize = itemsize_of(dtype)
    nodes = graph_nodes(graph)
    comm = cost if cost is not None else step_cost(graph, layers, choices, input_layout, dtype, hosts)
    link = LinkBytes().merge(comm.link).merge(combined_reductions(choices))
    collectives = float(model.comm_seconds(link).max())
    joined, join_ops = _joins(graph, choices)
    memory = model.memory_seconds(joined, join_ops) if join_ops else 0.0
    compute = backward = straggle = hidden = halo_backward = 0.0
    per_layer: dict[str, float] = {}
    timer = node_timer(model, graph, layers, input_layout, itemsize, optimizer)
    for name in nodes.names:
        t = timer(name, choices[name])
        per_layer[name] = t.seconds
        compute, backward, memory = compute + t.compute, backward + t.backward, memory + t.memory
        straggle += t.straggle
        hidden, halo_backward = hidden + t.hidden, halo_backward + t.hidden_backward
    per_layer["layout"] = float(model.comm_seconds(comm.parts["layout"]).max())
    if model.asynchronous:  # the gradient all-reduces hide behind backward work no halo hides behind
        grads = comm.parts["conv"]
        reductions = LinkBytes(
            {"all-reduce": grads.kinds.get("all-reduce", np.zeros(1))},
            steps={"all-reduce": grads.steps.get("all-reduce", np.zeros(1))},
        )
        hidden += min(float(model.comm_seconds(reductions).max()), backward - halo_backward)
    launch = float(model.profile.launch_s)
    components = {
        "compute": compute,
        "collectives": collectives,
        "memory": memory,
        "straggle": straggle,
        "launch": launch,
        "hidden": hidden,
    }
    return StepTime(compute + collectives + memory + straggle + launch - hidden, components, per_layer)
