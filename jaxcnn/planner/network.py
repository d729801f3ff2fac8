"""Placing a whole network: dynamic programming over its plan graph (chains and residual blocks).

Each convolution (the classifier head included) has a few candidate placements, its cheapest
``(algorithm, grid)`` pairs by :func:`jaxcnn.plan_layer` and the cheapest that reads each layout the
layer before it may leave (:func:`jaxcnn.planner.plan.keep_candidates`). A placement's *node cost*
is everything that depends on it alone (:mod:`jaxcnn.planner.step`): the convolution, its BatchNorm,
a pooling window in its output layout, global pooling after the last convolution, the head's bias
gradient, logits and loss. An *edge cost* is a layout change (:mod:`jaxcnn.redistribute`, forward + backward).

The DP state is the layout the activation is in (the placement that produced it). Along a chain,
``best[c] = node(c) + min_s (best[s] + edge(s → c))``. A residual block ``relu(main(x) +
shortcut(x))`` entered in state ``s`` is solved exactly for every output candidate ``c`` of its last
main convolution: the inner chain by the same recurrence from ``s``, plus the cheapest shortcut (the
identity moved from ``s`` into ``c``'s output layout, or a projection placed between them). So the
plan is optimal for the series-parallel graph over the candidate sets. A U-Net's skip concatenation
(:class:`~jaxcnn.models.graph.Concat`) reads an output produced long before: the DP state then also
holds the layouts of the pending skips (moved, with the upsampled activation, into the concatenation
layout when they are read), and after each convolution only the ``beam`` cheapest states are kept
(the plan is exact whenever no more states arise). The objective sums
each term's maximum over devices (the prediction, :func:`jaxcnn.planner.step.step_cost`, takes the
maximum of the sum; they differ only where permutes leave some devices idle). On ``hosts > 1`` each
term is the weighted ``ICI + dcn_cost_factor · DCN`` bytes (:mod:`jaxcnn.links`).

With a time model (``time_model``, :mod:`jaxcnn.planner.step_time`) the same DP minimises seconds: a
layer's candidates are its fastest on their own, a node costs its
:func:`~jaxcnn.planner.step_time.node_time` (local convolutions, memory-bound work, its own
collectives priced by the profile, the slow links' rates where they cross hosts) and an edge the time
of its layout change's collectives.

Replicated placements (``"<name>+replicas"``, :mod:`jaxcnn.algorithms.replicas`) are not candidates
here: a node's BatchNorm, pooling and head costs (:mod:`jaxcnn.planner.step`), its memory and the
runner's layers are metered exactly only on layouts that split the layer over every device, and the
time objective would also have to price the copies' duplicated compute against the bytes they save.
:func:`jaxcnn.plan_layer` and the chain planner :func:`jaxcnn.plan_network` consider them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from jaxcnn import algorithms
from jaxcnn.cost import Cost, itemsize_of, predict
from jaxcnn.geometry import ConvGeometry
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR
from jaxcnn.models.graph import Concat, Conv, Head, Node, Output, Residual
from jaxcnn.planner.plan import NoPlanError, fmt_bytes, keep_candidates, plan_layer
from jaxcnn.planner.step import (
    Layout,
    concat_layout,
    first_conv,
    graph_nodes,
    move,
    node_kinds,
    pooled_layout,
    x_layout,
    y_layout,
)
from jaxcnn.planner.step_memory import node_memory, step_memory
from jaxcnn.planner.step_time import node_timer
from jaxcnn.timing.model import TimeModel


def with_overlap(allowed: Sequence[str]) -> tuple[str, ...]:
    """``allowed`` and the ``+overlap`` variants of those that split a spatial dimension."""
    extra = [a + algorithms.OVERLAP for a in allowed if a in algorithms.OVERLAPPING]
    return (*allowed, *(a for a in extra if a not in allowed))


def _overlap(choice: Cost) -> bool:
    return algorithms.get(choice.algorithm).overlap


def _pair(choice: Cost) -> tuple:
    """A placement and its ``+overlap`` variant share this key (the same grid, layouts and bytes)."""
    return algorithms.plain(choice.algorithm), tuple(sorted(choice.grid.items()))


State = tuple[float, Mapping[str, Cost]]  # (cost so far, choices so far)
Key = tuple[Layout, tuple[tuple[str, Layout], ...]]  # (the activation's layout, pending skips' layouts)


def plan_graph(
    graph: Sequence[Node],
    layers: Mapping[str, ConvGeometry],
    num_devices: int,
    input_layout: Layout,
    memory_bytes: float = math.inf,
    *,
    candidates: int = 16,
    allowed: Sequence[str] = algorithms.ALGORITHMS,
    dtype="float32",
    fixed: Mapping[str, str] | None = None,
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
    beam: int = 256,
    platform: str = "cpu",
    time_model: TimeModel | None = None,
    optimizer: str = "adam",
) -> dict[str, Cost]:
    """One placement per convolution of ``graph`` minimising the predicted bytes (or, with
    ``time_model``, the predicted seconds) of the train step.

    Args:
      graph: the model's ``plan_graph``.
      layers: ``{conv name: geometry}`` for the run's batch.
      num_devices: devices P.
      input_layout: the images' layout (``(P("n"), grid)``).
      memory_bytes: per-device memory cap of the whole train step: every layer's own peak, and the
        step's predicted peak (:func:`jaxcnn.planner.step_memory.step_memory`, the train state
        estimated from the placements with Adam's two moments). When the cheapest plan exceeds it,
        each placement's memory (:func:`~jaxcnn.planner.step_memory.node_memory`) is priced at a
        weight per byte, raised by bisection until the plan fits (a Lagrangian relaxation: the
        fewest bytes moved among the plans it finds that fit).
      candidates: placements kept per layer (its cheapest by its own bytes; :func:`keep_candidates`
        adds at most as many that read the layouts the layer before may leave).
      allowed: the algorithms to consider (names from ``jaxcnn.ALGORITHMS``).
      dtype: activation dtype.
      fixed: ``{layer name: algorithm}`` pins.
      hosts: hosts the devices are split over (equal consecutive groups of the flat device order).
      dcn_cost_factor: how much dearer a byte that crosses hosts is; the plan minimises
        ``ICI + dcn_cost_factor · DCN`` bytes (only with ``hosts > 1``).
      beam: DP states kept after each convolution (the cheapest); only U-Net skips (a state per
        combination of pending skip layouts) ever need more than ``candidates``.
      platform: the devices' platform, for the step's predicted peak memory (``"cpu"``, ``"gpu"``,
        ``"tpu"``).
      time_model: plan by time (:mod:`jaxcnn.planner.step_time`): each layer's candidates are its
        fastest placements on their own, a node costs its :func:`~jaxcnn.planner.step_time.node_time`
        and an edge the seconds of its layout change (collectives crossing hosts on the slow links'
        rates, so ``dcn_cost_factor`` is not used). On a backend with asynchronous collectives the
        candidates also include the ``+overlap`` variants of the allowed algorithms
        (:mod:`jaxcnn.algorithms.overlap`) where a layer's layout overlaps. None: plan by bytes.
      optimizer: the optimizer's name (its update's share of a node's time).

    Returns:
      ``{name: Cost}`` (``cost.algorithm``, ``cost.grid``; predicted for ``hosts``) for every
      convolution of the graph.

    Raises:
      NoPlanError: a layer fits no placement, or no plan found keeps the whole step under
        ``memory_bytes`` (names the memory that would do).
      ValueError: ``hosts`` does not divide ``num_devices``.
    """
    itemsize = itemsize_of(dtype)
    nodes = graph_nodes(graph)
    first = first_conv(graph)

    if time_model is not None:
        timer = node_timer(time_model, graph, layers, input_layout, itemsize, optimizer)

    def without_input_grad(costs: Sequence[Cost]) -> tuple[Cost, ...]:  # the images need none
        return tuple(
            predict(c.geom, c.algorithm, c.grid, dtype, input_grad=False, hosts=hosts) for c in costs
        )

    options: dict[str, tuple[Cost, ...]] = {}
    comm: dict[tuple[str, int], float] = {}  # a placement's own bytes moved (or seconds, by time)
    memory: dict[tuple[str, int], float] = {}  # its share of the step's memory
    previous: set[Layout] = {input_layout}  # layouts the layer before may leave (execution order)
    variants = with_overlap(allowed) if time_model is not None and time_model.asynchronous else allowed
    for name in nodes.names:
        algs = (fixed[name],) if fixed and name in fixed else variants
        table = plan_layer(
            layers[name],
            num_devices,
            memory_bytes,
            allowed=algs,
            dtype=dtype,
            pad_outputs=name == nodes.head,
            hosts=hosts,
            dcn_cost_factor=dcn_cost_factor,
            max_replicas=1,  # no replicated placements in the whole step (module docstring)
        )
        if algs is variants and variants is not allowed:  # the added +overlap where nothing overlaps
            kept = tuple(c for c in table.candidates if c.layout.overlaps or not _overlap(c))
            table = dataclasses.replace(table, candidates=kept or table.candidates)
        if time_model is not None:  # the fastest on their own first (a stable sort: bytes break ties)
            if name == first:
                table = dataclasses.replace(table, candidates=without_input_grad(table.candidates))
            seconds = {id(c): timer(name, c).seconds for c in table.candidates}
            ranked = sorted(table.candidates, key=lambda c: seconds[id(c)])
            if variants is not allowed:  # of a placement and its +overlap variant, the faster only
                fastest: dict[tuple, Cost] = {}
                for c in ranked:
                    fastest.setdefault(_pair(c), c)
                ranked = [c for c in ranked if fastest[_pair(c)] is c]
            table = dataclasses.replace(table, candidates=tuple(ranked))
        options[name] = keep_candidates(table, candidates, previous)
        previous = {y_layout(c) for c in options[name]}
        if name == first and time_model is None:
            options[name] = without_input_grad(options[name])
        for i, c in enumerate(options[name]):
            if time_model is not None:
                comm[name, i] = seconds[id(c)]
            else:
                parts = node_kinds(name, c, layers[name], input_layout, itemsize, nodes)
                comm[name, i] = sum(float(kinds.weighted(dcn_cost_factor).max()) for kinds in parts.values())
            memory[name, i] = node_memory(c, nodes.batchnorm(name), itemsize=itemsize)
    edges: dict[tuple, float] = {}
    node_cost: dict[tuple[str, int], float] = {}

    def edge(shape: Sequence[int], src: Layout, dst: Layout, backward: bool = True) -> float:
        key = (tuple(shape), src, dst, backward)
        if key not in edges:
            moved = move(shape, src, dst, itemsize, backward, hosts)
            if time_model is not None:
                edges[key] = float(time_model.comm_seconds(moved).max())
            else:
                edges[key] = float(moved.weighted(dcn_cost_factor).max())
        return edges[key]

    def step(states: dict[Key, State], name: str, first: bool = False) -> dict[Key, State]:
        """Chain recurrence into conv ``name``; new states keyed by its output layout (and the pending
        skips, this convolution's output added if a later Concat reads it)."""
        out: dict[Key, State] = {}
        shape, head = layers[name].x_shape, name == nodes.head
        backward = head or not first
        for i, c in enumerate(options[name]):
            layout, into, own = y_layout(c), x_layout(c), node_cost[name, i]
            moved: dict[Layout, float] = {}  # the states share a few source layouts
            for (s, pending), (cost, chosen) in states.items():
                src = pooled_layout(chosen[nodes.feeds_head]) if head else s
                if src not in moved:
                    moved[src] = edge(shape, src, into, backward)
                so_far = cost + moved[src] + own
                key = (layout, (*pending, (name, layout)) if name in nodes.skips else pending)
                if key not in out or so_far < out[key][0]:
                    out[key] = (so_far, {**chosen, name: c})
        return _prune(out, beam)

    def concat(states: dict[Key, State], node: Concat) -> dict[Key, State]:
        """Both inputs of a skip concatenation moved into the concatenation layout."""
        out: dict[Key, State] = {}
        rank = len(layers[node.up].y_shape)
        for (s, pending), (cost, chosen) in states.items():
            saved = dict(pending)[node.skip]
            cat = concat_layout(s, rank)
            so_far = (
                cost + edge(layers[node.skip].y_shape, saved, cat) + edge(layers[node.up].y_shape, s, cat)
            )
            key = (cat, tuple(p for p in pending if p[0] != node.skip))
            if key not in out or so_far < out[key][0]:
                out[key] = (so_far, chosen)
        return out

    def solve(weight: float) -> dict[str, Cost]:
        """The DP with each placement's memory priced at ``weight`` bytes moved per byte."""
        node_cost.update({key: comm[key] + weight * memory[key] for key in comm})
        states: dict[Key, State] = {(input_layout, ()): (0.0, {})}
        first = True
        for node in graph:
            if isinstance(node, Conv | Head | Output):
                states = step(states, node.name, first)
                first = False
            elif isinstance(node, Residual):
                states = _residual(node, states, layers, edge, step)
                first = False
            elif isinstance(node, Concat):
                states = concat(states, node)
        return dict(min(states.values(), key=lambda st: st[0])[1])

    chosen = solve(0.0)
    if math.isinf(memory_bytes):
        return chosen
    images = math.prod(layers[nodes.names[0]].x_shape) * itemsize / dict(input_layout[1]).get("n", 1)

    def peak(plan: Mapping[str, Cost]) -> float:
        return step_memory(graph, layers, plan, batch_bytes=images, platform=platform, itemsize=itemsize).peak

    return _fit_memory(chosen, peak, solve, memory_bytes, sum(comm.values()), sum(memory.values()))


def _fit_memory(
    chosen: dict[str, Cost],
    peak: Callable[[Mapping[str, Cost]], float],
    solve: Callable[[float], dict[str, Cost]],
    cap: float,
    comm: float,
    memory: float,
) -> dict[str, Cost]:
    """``chosen`` if its ``peak`` is under ``cap``; else the plan of the smallest memory weight found
    whose peak is (the weight multiplied by 4 until a plan fits, then 12 bisection steps).

    Raises:
      NoPlanError: once memory dominates the objective, raising the weight stops lowering the peak
        and no plan fits (names the least peak found).
    """
    least = peak(chosen)
    if least <= cap:
        return chosen
    start = max(comm, 1.0) / max(memory, 1.0)  # bytes moved per byte of memory
    lo, hi = 0.0, start
    while True:
        plan = solve(hi)
        now = peak(plan)
        if now <= cap:
            fits = plan
            break
        if now >= least and hi > start * 4**10:  # memory dominates and heavier weights stopped helping
            raise NoPlanError(
                f"the whole train step needs at least {fmt_bytes(least)} per device under any plan "
                f"found (predicted peak, jaxcnn.planner.step_memory), over the memory budget of "
                f"{fmt_bytes(cap)}",
                least,
            )
        least, lo, hi = min(least, now), hi, hi * 4
    for _ in range(12):
        mid = (lo + hi) / 2
        plan = solve(mid)
        if peak(plan) <= cap:
            hi, fits = mid, plan
        else:
            lo = mid
    return fits


def _prune(states: dict[Key, State], beam: int) -> dict[Key, State]:
    """The ``beam`` cheapest states (all of them when there are no more)."""
    if len(states) <= beam:
        return states
    return dict(sorted(states.items(), key=lambda item: item[1][0])[:beam])


def _residual(node, states, layers, edge, step) -> dict[Key, State]:
    """Exact DP of one residual block for every (input state, output candidate) pair."""
    end = node.main[-1]
    shape = layers[end].y_shape
    out: dict[Key, State] = {}
    for (s, pending), entry in states.items():
        inner = {(s, pending): entry}
        for name in node.main:
            inner = step(inner, name)
        # shortcut: from s into each output layout
        if node.shortcut is None:
            shortcuts = {t: (edge(shape, s, t), {}) for t, _ in inner}
        else:
            proj = step({(s, ()): (0.0, {})}, node.shortcut)
            shortcuts = {}
            for t, _ in inner:
                shortcuts[t] = min(
                    ((cost + edge(shape, p, t), chosen) for (p, _), (cost, chosen) in proj.items()),
                    key=lambda v: v[0],
                )
        for key, (cost, chosen) in inner.items():
            extra, more = shortcuts[key[0]]
            so_far = cost + extra
            if key not in out or so_far < out[key][0]:
                out[key] = (so_far, {**chosen, **more})
    return out
