"""plan_layer / plan_network against brute force over the cost model (pure Python, no compiles)."""

from __future__ import annotations

import itertools
import math

import pytest

import jaxcnn
from jaxcnn import algorithms
from jaxcnn.cost import predict
from jaxcnn.geometry import ConvLayer
from jaxcnn.mesh import AXES
from jaxcnn.planner import NoPlanError, layout_change_bytes, plan_layer, plan_network
from jaxcnn.planner.plan import MAX_REPLICAS, keep_candidates
from jaxcnn.planner.replicas import admitted_replicas
from jaxcnn.planner.step import grid_key

LAYERS = [
    jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 16, 16)),
    jaxcnn.conv_geometry((16, 14, 14, 64), (1, 1, 64, 128), 2),
    jaxcnn.conv_geometry((4, 32, 32, 8), (3, 3, 8, 32)),
]


def _all_grids(num_devices: int):
    """Every assignment of num_devices to the five axes (independent of planner.grids)."""
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    for sizes in itertools.product(divisors, repeat=len(AXES)):
        if math.prod(sizes) == num_devices:
            yield dict(zip(AXES, sizes, strict=True))


def _replicas_planned(alg, grid, geom, num_devices):
    """A ``+replicas`` grid is planned when it replicates over ``replica_axis`` alone, by an admitted
    factor up to ``MAX_REPLICAS`` (the rule itself is tested in test_replicas_admitted_by_the_bound)."""
    algorithm = algorithms.get(alg)
    if not algorithm.replicas:
        return True
    axis = algorithms.replica_axis(algorithm)
    unsplit = {a for a in AXES if grid[a] > 1 and a not in algorithm.axes}
    factors = [r for r in admitted_replicas(geom, num_devices) if r <= MAX_REPLICAS]
    return unsplit == {axis} and grid[axis] in factors


def _brute_force(geom, num_devices, memory=math.inf):
    """Every even (algorithm, grid) whose predicted peak fits, as predict() Costs."""
    out = []
    for alg in (*jaxcnn.ALGORITHMS, *(a + algorithms.REPLICAS for a in algorithms.REPLICATING)):
        for grid in _all_grids(num_devices):
            if not _replicas_planned(alg, grid, geom, num_devices):
                continue
            try:
                cost = predict(geom, alg, grid)
            except ValueError:  # the algorithm does not use one of the grid's axes
                continue
            if cost.layout.is_even(geom) and cost.memory.peak <= memory:
                out.append(cost)
    return out


def _key(cost):
    return (cost.algorithm, tuple(cost.grid.items()))


@pytest.mark.parametrize("layer", range(len(LAYERS)))
@pytest.mark.parametrize("num_devices", [8, 16])
def test_best_is_the_brute_force_minimum(layer, num_devices):
    geom = LAYERS[layer]
    plan = plan_layer(geom, num_devices)
    everything = _brute_force(geom, num_devices)
    assert plan.best.bytes == min(c.bytes for c in everything)
    assert plan.best.layout.is_even(geom)
    # the runner-up table is exactly the brute-force set, sorted by (bytes, peak memory)
    assert sorted(map(_key, plan.candidates)) == sorted(map(_key, everything))
    keys = [(c.bytes, c.memory.peak) for c in plan.candidates]
    assert keys == sorted(keys)


def test_memory_budget_filters_and_the_best_fits():
    geom = LAYERS[0]
    unlimited = plan_layer(geom, 8)
    peaks = sorted({c.memory.peak for c in unlimited.candidates})
    budget = peaks[len(peaks) // 2]  # excludes about half of the candidates
    plan = plan_layer(geom, 8, budget)
    fitting = _brute_force(geom, 8, budget)
    assert len(fitting) < len(unlimited.candidates)
    assert all(c.memory.peak <= budget for c in plan.candidates)
    assert sorted(map(_key, plan.candidates)) == sorted(map(_key, fitting))
    assert plan.best.bytes == min(c.bytes for c in fitting)


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_no_plan_error_names_the_smallest_memory_that_fits(layer):
    geom = LAYERS[layer]
    least = min(c.memory.peak for c in _brute_force(geom, 8))
    with pytest.raises(NoPlanError) as err:
        plan_layer(geom, 8, least - 1)
    assert err.value.min_memory_bytes == least
    assert str(math.ceil(least)) in str(err.value)
    plan = plan_layer(geom, 8, err.value.min_memory_bytes)  # exactly that budget succeeds
    assert plan.best.memory.peak <= least
    assert min(c.memory.peak for c in plan.candidates) == least


def test_bad_device_counts():
    with pytest.raises(ValueError, match="positive int"):
        plan_layer(LAYERS[0], 0)
    with pytest.raises(ValueError, match="evenly"):  # 7 divides nothing in this layer
        plan_layer(LAYERS[0], 7)


def _chain():
    """Three layers whose activations chain (y of one is x of the next)."""
    a = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 32))
    b = jaxcnn.conv_geometry((8, 8, 8, 32), (1, 1, 32, 64))
    c = jaxcnn.conv_geometry((8, 8, 8, 64), (3, 3, 64, 16))
    return [a, b, c]


@pytest.mark.parametrize("candidates", [2, 4])
def test_plan_network_equals_brute_force_over_combinations(candidates):
    layers = _chain()
    plan = plan_network(layers, 8, candidates=candidates)

    def brute_force(options):
        best = math.inf
        for combo in itertools.product(*options):
            total = sum(c.bytes for c in combo)
            for i in range(1, len(combo)):
                prev, cur = combo[i - 1], combo[i]
                total += sum(
                    layout_change_bytes(
                        layers[i].x_shape, (prev.layout.y_spec, prev.grid), (cur.layout.x_spec, cur.grid)
                    )
                )
            best = min(best, total)
        return best

    # The DP's candidate sets: each layer's cheapest, plus the cheapest reading each layout the layer
    # before may leave; a superset of the cheapest alone, so never worse than them.
    options = []
    for g in layers:
        previous = {(c.layout.y_spec, grid_key(c.grid)) for c in options[-1]} if options else ()
        options.append(keep_candidates(plan_layer(g, 8), candidates, previous))
    assert plan.bytes == brute_force(options)
    assert plan.bytes <= brute_force([plan_layer(g, 8).candidates[:candidates] for g in layers])
    # the steps add up: own bytes + transitions, the first layer has none
    assert plan.steps[0].transition_forward == plan.steps[0].transition_backward == 0
    assert plan.bytes == sum(
        s.choice.bytes + s.transition_forward + s.transition_backward for s in plan.steps
    )


def test_plan_network_is_no_worse_than_per_layer_choices():
    layers = _chain()
    plan = plan_network(layers, 8)
    greedy = [plan_layer(g, 8).best for g in layers]
    greedy_total = sum(c.bytes for c in greedy) + sum(
        sum(
            layout_change_bytes(
                layers[i].x_shape,
                (greedy[i - 1].layout.y_spec, greedy[i - 1].grid),
                (c.layout.x_spec, c.grid),
            )
        )
        for i, c in enumerate(greedy)
        if i
    )
    assert plan.bytes <= greedy_total
    assert sum(s.choice.bytes for s in plan.steps) >= sum(c.bytes for c in greedy)


def test_plan_network_no_plan_error_and_fixed():
    layers = _chain()
    with pytest.raises(NoPlanError):
        plan_network(layers, 8, 1024.0)
    plan = plan_network(layers, 8, fixed={"conv": "channel"})  # ConvGeometry layers are all named "conv"
    assert {s.choice.algorithm for s in plan.steps} == {"channel"}
    assert plan.bytes == sum(s.bytes for s in plan.steps)


def test_a_layer_pads_its_outputs_by_its_flag_not_its_name():
    """A classifier's ``ConvLayer`` (``pad_outputs``, set by the trace) is ranked with the classes each
    grid pads to (10 → 12 on k · c = 4); a layer merely named ``head`` is not."""
    geom = jaxcnn.conv_geometry((8, 1, 1, 16), (1, 1, 16, 10), 1, "VALID")
    padded = plan_layer(ConvLayer("classifier", geom, pad_outputs=True), 8)
    assert [_key(c) for c in padded.candidates] == [
        _key(c) for c in plan_layer(geom, 8, pad_outputs=True).candidates
    ]
    assert any(c.layout.padded[-1] == 12 for c in padded.candidates)
    named = plan_layer(ConvLayer("head", geom), 8)
    assert [_key(c) for c in named.candidates] == [_key(c) for c in plan_layer(geom, 8).candidates]
    assert all(c.layout.padded[-1] == 10 for c in named.candidates)
