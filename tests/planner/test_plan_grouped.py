"""The planner on grouped and transposed layers: plan_layer skips the (algorithm, grid) pairs that cannot
split a layer's groups and picks the brute-force cheapest of the rest; the planned placement runs,
equals lax (forward and gradients), and moves exactly the bytes it predicts."""

from __future__ import annotations

import pytest

import jaxcnn
from jaxcnn.measure import measure_conv
from jaxcnn.planner import plan_layer, plan_network
from tests.algorithms.test_conv_transpose import _reference as transposed_reference
from tests.algorithms.test_transposed_cost import transposed_geometry
from tests.planner.test_plan import _brute_force, _key
from tests.test_cost import _assert_same
from tests.utils import assert_close, first_fast, loss_and_grads, random_inputs, reference_conv

GROUPED = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 4, 16), 1, "SAME", 1, 4)
TRANSPOSED = transposed_geometry((8, 8, 8, 16), (3, 3, 16, 8), 2, "SAME")
RTOL = 2e-5


@pytest.mark.parametrize("geom", [GROUPED, TRANSPOSED], ids=["grouped", "transposed"])
def test_best_is_the_brute_force_minimum_over_supported_placements(geom):
    plan = plan_layer(geom, 8)
    everything = _brute_force(geom, 8)  # predict() raising (groups it cannot split) is skipped there too
    assert plan.best.bytes == min(c.bytes for c in everything)
    assert sorted(map(_key, plan.candidates)) == sorted(map(_key, everything))


def test_grouped_candidates_leave_out_the_unsupported_ones():
    plan = plan_layer(GROUPED, 8)
    chosen = {_key(c) for c in plan.candidates}
    # 3d on k=2, c=4 would cut the 4 groups (k·c = 8 does not divide G = 4): not a candidate.
    assert ("3d", (("n", 1), ("d", 1), ("h", 1), ("w", 1), ("k", 2), ("c", 4))) not in chosen
    assert ("3d", (("n", 2), ("d", 1), ("h", 1), ("w", 1), ("k", 2), ("c", 2))) in chosen
    with pytest.raises(ValueError, match="feature_group_count=3"):  # every 3d grid cuts G = 3
        plan_layer(jaxcnn.conv_geometry((8, 8, 8, 12), (3, 3, 4, 12), 1, "SAME", 1, 3), 8, allowed=("3d",))


def _programs(geom, algorithm, mesh):
    """(planned, lax reference) ``loss_and_grads`` programs of ``geom`` on ``mesh``."""
    if geom.input_dilation == (1, 1):
        kw = dict(strides=geom.strides, padding=geom.padding, feature_group_count=geom.groups)
        return (
            loss_and_grads(lambda a, b: jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, **kw)),
            loss_and_grads(lambda a, b: reference_conv(a, b, **kw)),
        )
    kw = dict(strides=geom.input_dilation, padding=geom.padding)
    return (
        loss_and_grads(lambda a, b: jaxcnn.conv_transpose(a, b, mesh=mesh, algorithm=algorithm, **kw)),
        transposed_reference(geom.input_dilation, geom.padding, 1, False),
    )


@pytest.mark.parametrize(
    ("geom", "allowed"),
    first_fast(
        [
            (GROUPED, jaxcnn.ALGORITHMS),
            (TRANSPOSED, jaxcnn.ALGORITHMS),
            (TRANSPOSED, ("spatial", "3d")),  # halos of undilated rows, or gathers over k / c
            (GROUPED, ("2d", "2.5d", "3d")),
        ],
        keep=2,
    ),
    ids=lambda v: "grouped" if v is GROUPED else "transposed" if v is TRANSPOSED else "-".join(v),
)
def test_planned_placement_runs_equals_lax_and_moves_what_it_predicts(geom, allowed):
    best = plan_layer(geom, 8, allowed=allowed).best
    mesh = jaxcnn.make_mesh(**best.grid)
    planned, reference = _programs(geom, best.algorithm, mesh)
    x, kernel = random_inputs(1, geom.x_shape, geom.kernel_shape)
    (_, y), grads = planned(x, kernel)
    (_, y_ref), grads_ref = reference(x, kernel)
    assert_close(y, y_ref, RTOL, "y")
    for got, want, name in zip(grads, grads_ref, ("dx", "dkernel"), strict=True):
        assert_close(got, want, RTOL, name)
    fwd, bwd = measure_conv(geom, mesh=mesh, algorithm=best.algorithm)
    _assert_same(fwd, best.forward, f"{best.algorithm} {best.grid} forward")
    _assert_same(bwd, best.backward, f"{best.algorithm} {best.grid} backward")


def test_plan_network_places_a_chain_with_grouped_and_transposed_layers():
    dense = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16))
    layers = [dense, GROUPED, TRANSPOSED]
    plan = plan_network(layers, 8)
    assert [s.geom for s in plan.steps] == layers
    for step in plan.steps:  # each choice is one of the layer's supported, even placements
        assert _key(step.choice) in {_key(c) for c in plan_layer(step.geom, 8).candidates}
    # the dynamic program cannot beat any layer's own best
    assert plan.bytes >= sum(plan_layer(g, 8).best.bytes for g in layers)
