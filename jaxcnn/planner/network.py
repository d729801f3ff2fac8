"""Placing a whole network: dynamic programming over its plan graph (chains and residual blocks).

Each convolution (the classifier ``head`` included) has a few candidate placements, its cheapest
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
plan is optimal for the series-parallel graph over the candidate sets, with the objective summing
each term's maximum over devices (the prediction, :func:`jaxcnn.planner.step.step_cost`, takes the
maximum of the sum; they differ only where permutes leave some devices idle). On ``hosts > 1`` each
term is the weighted ``ICI + dcn_cost_factor · DCN`` bytes (:mod:`jaxcnn.links`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jaxcnn import algorithms
from jaxcnn.cost import Cost, itemsize_of, predict
from jaxcnn.geometry import ConvGeometry
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR
from jaxcnn.models.graph import Conv, Node, Residual
from jaxcnn.planner.plan import keep_candidates, plan_layer
from jaxcnn.planner.step import (
    Layout,
    first_conv,
    graph_nodes,
    move,
    node_kinds,
    pooled_layout,
    x_layout,
    y_layout,
)

State = tuple[float, Mapping[str, Cost]]  # (cost so far, choices so far)


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
) -> dict[str, Cost]:
    """One placement per convolution of ``graph`` minimising the predicted bytes of the train step.

    Args:
      graph: the model's ``plan_graph``.
      layers: ``{conv name: geometry}`` for the run's batch.
      num_devices: devices P.
      input_layout: the images' layout (``(P("n"), grid)``).
      memory_bytes: per-device memory cap of every layer.
      candidates: placements kept per layer (its cheapest by its own bytes; :func:`keep_candidates`
        adds at most as many that read the layouts the layer before may leave).
      allowed: the algorithms to consider (names from ``jaxcnn.ALGORITHMS``).
      dtype: activation dtype.
      fixed: ``{layer name: algorithm}`` pins.
      hosts: hosts the devices are split over (equal consecutive groups of the flat device order).
      dcn_cost_factor: how much dearer a byte that crosses hosts is; the plan minimises
        ``ICI + dcn_cost_factor · DCN`` bytes (only with ``hosts > 1``).

    Returns:
      ``{name: Cost}`` (``cost.algorithm``, ``cost.grid``; predicted for ``hosts``) for every
      convolution of the graph.

    Raises:
      NoPlanError: a layer fits no placement (names it and the memory that would do).
      ValueError: ``hosts`` does not divide ``num_devices``.
    """
    itemsize = itemsize_of(dtype)
    names, pools, feeds_head = graph_nodes(graph)
    first = first_conv(graph)
    options: dict[str, tuple[Cost, ...]] = {}
    node_cost: dict[tuple[str, int], float] = {}
    previous: set[Layout] = {input_layout}  # layouts the layer before may leave (execution order)
    for name in names:
        algs = (fixed[name],) if fixed and name in fixed else allowed
        table = plan_layer(
            layers[name],
            num_devices,
            memory_bytes,
            allowed=algs,
            dtype=dtype,
            pad_outputs=name == "head",
            hosts=hosts,
            dcn_cost_factor=dcn_cost_factor,
        )
        options[name] = keep_candidates(table, candidates, previous)
        previous = {y_layout(c) for c in options[name]}
        if name == first:  # the images need no gradient
            options[name] = tuple(
                predict(c.geom, c.algorithm, c.grid, dtype, input_grad=False, hosts=hosts)
                for c in options[name]
            )
        for i, c in enumerate(options[name]):
            parts = node_kinds(
                name, c, layers[name], input_layout, itemsize, pools.get(name), name == feeds_head
            )
            cost = sum(float(kinds.weighted(dcn_cost_factor).max()) for kinds in parts.values())
            node_cost[name, i] = cost
    edges: dict[tuple, float] = {}

    def edge(shape: Sequence[int], src: Layout, dst: Layout, backward: bool = True) -> float:
        key = (tuple(shape), src, dst, backward)
        if key not in edges:
            moved = move(shape, src, dst, itemsize, backward, hosts)
            edges[key] = float(moved.weighted(dcn_cost_factor).max())
        return edges[key]

    def step(states: dict[Layout, State], name: str, first: bool = False) -> dict[Layout, State]:
        """Chain recurrence into conv ``name``; new states keyed by its output layout."""
        out: dict[Layout, State] = {}
        geom = layers[name]
        for i, c in enumerate(options[name]):
            src_shape = geom.x_shape
            best = None
            for s, (cost, chosen) in states.items():
                if name == "head":
                    extra = edge(src_shape, pooled_layout(chosen[feeds_head]), x_layout(c))
                else:
                    extra = edge(src_shape, s, x_layout(c), backward=not first)
                so_far = cost + extra
                if best is None or so_far < best[0]:
                    best = (so_far, chosen)
            so_far = best[0] + node_cost[name, i]
            key = y_layout(c)
            if key not in out or so_far < out[key][0]:
                out[key] = (so_far, {**best[1], name: c})
        return out

    states: dict[Layout, State] = {input_layout: (0.0, {})}
    first = True
    for node in graph:
        if isinstance(node, Conv):
            states = step(states, node.name, first)
            first = False
        elif isinstance(node, Residual):
            states = _residual(node, states, layers, edge, step)
            first = False
    return dict(min(states.values(), key=lambda st: st[0])[1])


def _residual(node, states, layers, edge, step) -> dict[Layout, State]:
    """Exact DP of one residual block for every (input state, output candidate) pair."""
    end = node.main[-1]
    shape = layers[end].y_shape
    out: dict[Layout, State] = {}
    for s, entry in states.items():
        inner = {s: entry}
        for name in node.main:
            inner = step(inner, name)
        # shortcut: from s into each output layout
        if node.shortcut is None:
            shortcuts = {t: (edge(shape, s, t), {}) for t in inner}
        else:
            proj = step({s: (0.0, {})}, node.shortcut)
            shortcuts = {}
            for t in inner:
                shortcuts[t] = min(
                    ((cost + edge(shape, p, t), chosen) for p, (cost, chosen) in proj.items()),
                    key=lambda v: v[0],
                )
        for t, (cost, chosen) in inner.items():
            extra, more = shortcuts[t]
            so_far = cost + extra
            if t not in out or so_far < out[t][0]:
                out[t] = (so_far, {**chosen, **more})
    return out
