"""The validation bench's diagnosis (experiments/bench_step_time.py): the collective executions it counts
in a compiled step, the refit bound and the same-program pairs."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.fake_devices import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_step_time", ROOT / "experiments" / "bench_step_time.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _bench()
Case, collective_executions, refit, same_program_spread = (
    bench.Case,
    bench.collective_executions,
    bench.refit,
    bench.same_program_spread,
)


def _case(name, model, compute, collectives, executions, measured, placements=None):
    components = {"compute": compute, "collectives": collectives}
    placements = placements or {"conv1": name}
    return Case(name, model, compute + collectives, components, placements, executions, [measured])


def test_collective_executions_count_every_iteration_of_a_loop_on_the_busiest_device():
    mesh = jax.make_mesh((2, 4), ("a", "b"))

    def body(x):
        x = jax.lax.psum(x, "a")  # every device: 1
        shift = [(i, (i + 1) % 4) for i in range(4)]
        return jax.lax.fori_loop(
            0, 3, lambda _, y: jax.lax.ppermute(y, "b", shift) * 0.5, x
        )  # every device: 3

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("a", "b"), out_specs=P("a", "b")))
    x = jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=NamedSharding(mesh, P("a", "b")))
    assert collective_executions(f.lower(x).compile()) == 4


def test_refit_recovers_weights_that_explain_the_measurements_exactly():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(6):
        compute, collectives, executions = (
            rng.uniform(1e-3, 1e-2),
            rng.uniform(1e-3, 1e-2),
            rng.integers(5, 200),
        )
        measured = 1.5 * compute + 2.0 * collectives + 3e-4 * executions
        cases.append(_case(f"c{i}", "m", compute, collectives, float(executions), measured))
    weights, mape = refit(cases)
    assert weights == pytest.approx({"compute": 1.5, "collectives": 2.0, "per_execution_s": 3e-4}, rel=1e-6)
    assert mape == pytest.approx(0.0, abs=1e-9)
    cases[0].rounds = [cases[0].rounds[0] * 2]  # one case the three terms cannot explain
    assert refit(cases)[1] > 0.05


def test_same_program_pairs_are_those_of_one_model_with_equal_placements():
    same = {"conv1": "data@n=8", "head": "data@n=8"}
    cases = [
        _case("a-data", "a", 1e-3, 1e-3, 9, 0.010, same),
        _case("a-auto", "a", 1e-3, 1e-3, 9, 0.011, dict(same)),
        _case("a-3d", "a", 1e-3, 1e-3, 9, 0.020, {"conv1": "3d@n=2,k=2,c=2", "head": "data@n=8"}),
        _case("b-data", "b", 1e-3, 1e-3, 9, 0.030, same),
    ]
    ((x, y, spread),) = same_program_spread(cases)
    assert (x, y) == ("a-data", "a-auto") and spread == pytest.approx(0.1)
