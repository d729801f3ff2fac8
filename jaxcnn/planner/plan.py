"""Per-layer and per-network planning: the (algorithm, grid) that moves fewest bytes in memory.

``plan_layer`` ranks every algorithm on every grid of ``num_devices`` devices by predicted bytes
received per device (forward + backward, :mod:`jaxcnn.cost`) among those whose predicted peak memory
fits. Grouped layers (``geom.groups`` > 1) skip the grids an algorithm cannot split their groups on
(:mod:`jaxcnn.algorithms.groups`); replicated placements (``"<name>+replicas"``) are ranked with the
others, over the factors :mod:`jaxcnn.planner.replicas` admits; transposed layers
(``geom.input_dilation`` > 1) are planned like any other. ``plan_network`` chooses one candidate per
layer by dynamic programming over the chain of layers, adding the cost of changing the activation's
layout between consecutive layers (the explicit changes of :mod:`jaxcnn.redistribute`), so the plan
minimises the network's total, not each layer's. Networks with residual blocks are placed as graphs
by :mod:`jaxcnn.planner.network`.

On ``hosts > 1`` (devices split into equal consecutive groups of the flat order, :mod:`jaxcnn.links`)
both rank by the weighted bytes ``ICI + dcn_cost_factor · DCN`` (max over devices) instead, so traffic
moves off the links between hosts; the exact bytes and the DCN bytes are reported next to each other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxcnn import algorithms, links, redistribute
from jaxcnn.cost import Cost, itemsize_of, predict, with_overlap
from jaxcnn.geometry import ConvGeometry, conv_geometry
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR
from jaxcnn.planner.grids import placements
from jaxcnn.planner.replicas import check_max_replicas, planned_replicas
from jaxcnn.planner.step import grid_key

#: The most copies :func:`plan_layer` replicates a layer into by default (``max_replicas``).
MAX_REPLICAS = 4


class NoPlanError(ValueError):
    """No (algorithm, grid) fits the memory budget; ``min_memory_bytes`` is the least that would."""

    def __init__(self, message: str, min_memory_bytes: float):
        super().__init__(message)
        self.min_memory_bytes = min_memory_bytes


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """The ranked candidates for one layer (best first) that fit the memory budget."""

    name: str
    geom: ConvGeometry
    candidates: tuple[Cost, ...]

    @property
    def best(self) -> Cost:
        return self.candidates[0]


def _geom(layer) -> tuple[str, ConvGeometry]:
    if isinstance(layer, ConvGeometry):
        return "conv", layer
    return getattr(layer, "name", "conv"), layer.geom


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    raise AssertionError


def plan_layer(
    layer,
    num_devices: int,
    memory_bytes: float = math.inf,
    *,
    allowed: Sequence[str] = algorithms.ALGORITHMS,
    dtype="float32",
    pad_outputs: bool | None = None,
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
    max_replicas: int = MAX_REPLICAS,
) -> LayerPlan:
    """Best (algorithm, grid) for one layer by predicted bytes under a per-device memory cap.

    Args:
      layer: a :class:`jaxcnn.ConvGeometry` or an object with ``.geom`` (and ``.name``).
      num_devices: devices P; every candidate grid uses exactly P.
      memory_bytes: per-device cap on the predicted peak memory (inputs + output + working set).
      allowed: the algorithms to consider (names from ``jaxcnn.ALGORITHMS``).
      dtype: element type of activations and kernels.
      pad_outputs: the layer may pad its output channels to a multiple of the grid's ``k · c`` (the
        classifier does, :class:`jaxcnn.models.common.Head`); each grid is then ranked with the channel
        count it will really have (its candidate's ``layout.padded``). Default: the layer's own
        ``pad_outputs`` (:class:`jaxcnn.geometry.ConvLayer`: set on a model's classifier head by
        :func:`jaxcnn.models.trace.trace_layers`); False for a bare geometry.
      hosts: hosts the devices are split over (equal consecutive groups of the flat device order,
        :mod:`jaxcnn.links`); candidates are predicted for them (``Cost.dcn_bytes``).
      dcn_cost_factor: with ``hosts > 1``, candidates are ranked by ``Cost.weighted(dcn_cost_factor)``
        (bytes over the DCN count this many times) instead of ``Cost.bytes``.
      max_replicas: also rank the ``"<name>+replicas"`` variants of the allowed algorithms that have
        one (:mod:`jaxcnn.algorithms.replicas`), replicated over the factors up to this that
        :func:`jaxcnn.planner.replicas.planned_replicas` admits (a ``+replicas`` name in ``allowed``
        is limited to them too; 1: no replicated placement). A replicated candidate's
        ``layout.replication`` r is its duplicated compute and memory (r times the even share per
        device), which bytes do not price: the default cap 4 bounds it (MobileNetV2's depthwise layers
        on 64 devices need 2 and 4); ties in bytes go to the smaller peak memory, i.e. fewer copies.

    Returns:
      A :class:`LayerPlan`; ``.best`` is the choice, ``.candidates`` the ranked runner-up table.

    Raises:
      NoPlanError: nothing fits; the message gives the smallest budget that would.
      ValueError: ``hosts`` is not a positive divisor of ``num_devices``, or no allowed algorithm
        splits the layer (its feature groups, its shape) evenly on ``num_devices``.
    """
    name, geom = _geom(layer)
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive int, got {num_devices!r}")
    links.check_hosts(num_devices, hosts)
    if pad_outputs is None:
        pad_outputs = bool(getattr(layer, "pad_outputs", False))
    costs, unsupported = [], []
    check_max_replicas(max_replicas)
    for parts in (d for d in range(1, num_devices + 1) if num_devices % d == 0) if pad_outputs else (None,):
        g = geom if parts is None else _padded_outputs(geom, parts)
        plain: dict[tuple, Cost] = {}  # (algorithm, grid): an +overlap variant reuses its plain one's
        factors = planned_replicas(g, num_devices, max_replicas, itemsize_of(dtype))
        for alg, grid in placements(g, num_devices, allowed, factors):
            base = algorithms.plain(alg) if algorithms.get(alg).overlap else None
            if parts is None or _channel_parts(alg, grid) == parts:
                key = tuple(sorted(grid.items()))
                if (base, key) in plain:
                    costs.append(with_overlap(plain[base, key], itemsize_of(dtype)))
                    continue
                try:
                    costs.append(predict(g, alg, grid, dtype, hosts=hosts))
                    plain[alg, key] = costs[-1]
                except ValueError as error:  # a group count this algorithm cannot split on this grid
                    if g.groups == 1:
                        raise
                    unsupported.append(str(error))
    costs = [c for c in costs if c.layout.is_even(c.geom)]  # the model is exact for even splits
    if not costs:
        if unsupported:
            raise ValueError(
                f"layer {name}: no algorithm of {tuple(allowed)} on a grid of {num_devices} devices "
                f"splits its {geom.groups} feature groups (C={geom.channels_in}, K={geom.channels_out}) "
                f"and its shape {geom.y_shape} evenly ({len(unsupported)} grids cannot split its groups, "
                f"e.g.: {unsupported[0]}); data, spatial and filter split every group count"
            )
        raise ValueError(
            f"layer {name}: no grid of {num_devices} devices splits its shape {geom.y_shape} evenly; "
            "use a device count whose factors divide the batch, spatial or channel sizes"
        )
    fitting = sorted(
        (c for c in costs if c.memory.peak <= memory_bytes),
        key=lambda c: (c.weighted(dcn_cost_factor), c.bytes, c.memory.peak),
    )
    if not fitting:
        least = min(c.memory.peak for c in costs)
        raise NoPlanError(
            f"layer {name}: no algorithm/grid on {num_devices} devices fits {fmt_bytes(memory_bytes)} per "
            f"device; the smallest that would is {fmt_bytes(least)} ({math.ceil(least)} bytes)",
            least,
        )
    return LayerPlan(name, geom, tuple(fitting))


def _channel_parts(algorithm: str, grid: Mapping[str, int]) -> int:
    """The parts a placement splits the output channels into: ``k·c``, a replica axis not counted."""
    replicas = algorithms.get(algorithm).replica_axes(grid)
    return math.prod(grid[a] for a in ("k", "c") if a not in replicas)


def _padded_outputs(geom: ConvGeometry, parts: int) -> ConvGeometry:
    """``geom`` with its output channels rounded up to a multiple of ``parts``."""
    k = -(-geom.channels_out // parts) * parts
    if k == geom.channels_out:
        return geom
    return conv_geometry(
        geom.x_shape,
        (*geom.kernel_shape[:-1], k),
        geom.strides,
        geom.padding,
        geom.dilation,
        geom.groups,
        geom.input_dilation,
    )


def keep_candidates(table: LayerPlan, count: int, previous: Iterable[Any] = ()) -> tuple[Cost, ...]:
    """The placements of a layer a network plan considers: its ``count`` cheapest by its own bytes,
    plus, for each layout in ``previous`` (``(spec, grid key)``, the layouts the layer before may leave
    its input in) that none of those reads, its cheapest placement reading that layout (at most
    ``count`` more, cheapest first).

    Ranking by a layer's own bytes alone misses that an unchanged layout moves nothing: a depthwise
    convolution, whose own bytes are near zero on dozens of grids, would otherwise lose the placement
    that continues its neighbours' layout and force two layout changes of a whole activation.
    """
    kept = list(table.candidates[:count])
    reads = {(c.layout.x_spec, grid_key(c.grid)) for c in kept}
    wanted = set(previous) - reads
    extra: list[Cost] = []
    for c in table.candidates[count:]:
        layout = (c.layout.x_spec, grid_key(c.grid))
        if layout in wanted:
            extra.append(c)
            wanted.discard(layout)
            if not wanted or len(extra) == count:
                break
    return (*kept, *extra)


@dataclasses.dataclass(frozen=True)
class NetworkStep:
    """One layer of a network plan: its choice and the layout change into it.

    Attributes:
      transition_forward, transition_backward: max bytes per device of the layout change into the
        layer and of its reverse.
      transition_dcn: max bytes per device of those that cross hosts (forward + backward).
    """

    name: str
    geom: ConvGeometry
    choice: Cost
    transition_forward: float
    transition_backward: float
    transition_dcn: float = 0.0

    @property
    def bytes(self) -> float:
        return self.choice.bytes + self.transition_forward + self.transition_backward

    @property
    def dcn_bytes(self) -> float:
        """Max bytes per device over the DCN: the convolution's and the layout change's."""
        return self.choice.dcn_bytes + self.transition_dcn


@dataclasses.dataclass(frozen=True)
class NetworkPlan:
    """A per-layer plan for a chain of convolutions."""

    steps: tuple[NetworkStep, ...]
    num_devices: int
    memory_bytes: float
    hosts: int = 1

    @property
    def bytes(self) -> float:
        """Sum over layers of max bytes per device (forward + backward + layout changes)."""
        return sum(s.bytes for s in self.steps)

    @property
    def dcn_bytes(self) -> float:
        """Sum over layers of max bytes per device over the DCN."""
        return sum(s.dcn_bytes for s in self.steps)

    def algorithms(self) -> dict[str, str]:
        return {s.name: s.choice.algorithm for s in self.steps}


@dataclasses.dataclass(frozen=True)
class _Change:
    """A layout change between two layers: max bytes per device forward and backward, the max of those
    over the DCN, and the weighted ``ICI + factor · DCN`` bytes (forward + backward)."""

    forward: float
    backward: float
    dcn: float
    weighted: float


def _transition(prev: Cost, nxt: Cost, geom: ConvGeometry, itemsize: int, factor: float) -> _Change:
    """The explicit layout change (:mod:`jaxcnn.redistribute`) from ``prev``'s output layout to
    ``nxt``'s input layout, forward and backward (the reverse change), on ``nxt.hosts`` hosts."""
    src = (prev.layout.y_spec, grid_key(prev.grid))
    dst = (nxt.layout.x_spec, grid_key(nxt.grid))
    shape = tuple(geom.x_shape)
    fwd, bwd = redistribute.plan(shape, src, dst), redistribute.plan(shape, dst, src)
    out = [fwd.bytes(itemsize), bwd.bytes(itemsize)]
    if nxt.hosts == 1:
        return _Change(out[0], out[1], 0.0, out[0] + out[1])
    dcn = [r.dcn_traffic(itemsize, nxt.hosts) for r in (fwd, bwd)]
    weighted = sum(
        float(links.weighted(r.traffic(itemsize), d, factor).max())
        for r, d in zip((fwd, bwd), dcn, strict=True)
    )
    return _Change(out[0], out[1], float(dcn[0].max() + dcn[1].max()), weighted)


def plan_network(
    layers: Sequence,
    num_devices: int,
    memory_bytes: float = math.inf,
    *,
    candidates: int = 24,
    allowed: Sequence[str] = algorithms.ALGORITHMS,
    dtype="float32",
    fixed: Mapping[str, str] | None = None,
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
    max_replicas: int = MAX_REPLICAS,
) -> NetworkPlan:
    """Chooses one (algorithm, grid) per layer minimising total bytes including layout changes.

    Dynamic programming over the chain of layers: ``best[i][j] = cost_i(j) + min_j' (best[i-1][j'] +
    transition(j' → j))``, where transition is the redistribution of the activation between layer
    ``i-1``'s output layout and layer ``i``'s input layout (forward and backward). It is exact for
    the chain model over each layer's ``candidates`` cheapest fitting choices and, for each layout
    the layer before may leave, the cheapest choice reading it (:func:`keep_candidates`).

    Args:
      layers: conv layers in execution order (``ConvGeometry`` or objects with ``.geom``/``.name``).
      num_devices: devices P.
      memory_bytes: per-device memory cap for every layer.
      candidates: per-layer candidates kept for the DP (:func:`keep_candidates`).
      allowed: the algorithms to consider (names from ``jaxcnn.ALGORITHMS``).
      dtype: element type.
      fixed: optional ``{layer name: algorithm}`` to pin some layers.
      hosts: hosts the devices are split over (:func:`plan_layer`).
      dcn_cost_factor: with ``hosts > 1`` the DP minimises the weighted ``ICI + dcn_cost_factor · DCN``
        bytes of layers and layout changes (:mod:`jaxcnn.links`).
      max_replicas: replicated placements as in :func:`plan_layer`; their layout changes are the
        planned ones of :mod:`jaxcnn.redistribute` like any other's (a replicated layout is a spec that
        names fewer axes; ``tests/nn/test_chain_hlo.py`` meters such a chain).

    Raises:
      NoPlanError: some layer fits no candidate (names it and the memory that would do).
      ValueError: ``hosts`` is not a positive divisor of ``num_devices``.
    """
    itemsize = itemsize_of(dtype)
    tables = []
    for layer in layers:
        name, _ = _geom(layer)
        algs = (fixed[name],) if fixed and name in fixed else allowed
        tables.append(
            plan_layer(
                layer,
                num_devices,
                memory_bytes,
                allowed=algs,
                dtype=dtype,
                hosts=hosts,
                dcn_cost_factor=dcn_cost_factor,
                max_replicas=max_replicas,
            )
        )
    options: list[tuple[Cost, ...]] = []
    for table in tables:
        previous = {(c.layout.y_spec, grid_key(c.grid)) for c in options[-1]} if options else ()
        options.append(keep_candidates(table, candidates, previous))
    best = [[c.weighted(dcn_cost_factor) for c in options[0]]]
    back: list[list[int]] = [[-1] * len(options[0])]
    for i in range(1, len(options)):
        row, arg = [], []
        for cur in options[i]:
            totals = [
                best[i - 1][j] + _transition(prev, cur, tables[i].geom, itemsize, dcn_cost_factor).weighted
                for j, prev in enumerate(options[i - 1])
            ]
            j = min(range(len(totals)), key=totals.__getitem__)
            row.append(totals[j] + cur.weighted(dcn_cost_factor))
            arg.append(j)
        best.append(row)
        back.append(arg)
    j = min(range(len(best[-1])), key=best[-1].__getitem__)
    chosen = []
    for i in range(len(options) - 1, -1, -1):
        chosen.append(j)
        j = back[i][j]
    chosen.reverse()
    steps = []
    for i, j in enumerate(chosen):
        cur = options[i][j]
        change = (
            _Change(0.0, 0.0, 0.0, 0.0)
            if i == 0
            else _transition(options[i - 1][chosen[i - 1]], cur, tables[i].geom, itemsize, dcn_cost_factor)
        )
        steps.append(
            NetworkStep(tables[i].name, tables[i].geom, cur, change.forward, change.backward, change.dcn)
        )
    return NetworkPlan(tuple(steps), num_devices, memory_bytes, hosts)
