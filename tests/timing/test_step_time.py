"""The step-time model: latency terms counted with the bytes, seconds priced from a profile, plans by time."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn import models
from jaxcnn.cost import latency_steps, predict
from jaxcnn.geometry import conv_geometry
from jaxcnn.links import LinkBytes
from jaxcnn.planner.model import check_objective, plan_model
from jaxcnn.planner.step import choices_for, first_conv, grid_key, step_cost
from jaxcnn.planner.step_time import step_time
from jaxcnn.timing import profile as prof
from jaxcnn.timing.model import TimeModel, backend_time_model, conv_work

LAYER = conv_geometry((8, 16, 16, 32), (3, 3, 32, 64), (1, 1), "SAME")


def profile(
    platform: str = "cpu",
    alpha: float = 1e-5,
    beta: float = 1e9,
    mac_rate: float = 1e10,
    byte_rate: float = float("inf"),
    memory_rate: float = 1e10,
    launch: float = 1e-4,
    notes: dict | None = None,
) -> prof.Profile:
    """A synthetic profile: every collective kind one fit, every conv pass one fit."""
    conv = prof.LinearFit(0.0, (mac_rate, byte_rate), ("macs", "bytes"))
    return prof.Profile(
        key=prof.ProfileKey(platform, platform, 8, 1, "test"),
        collectives={k: prof.CollectiveFit(alpha, beta) for k in prof.COLLECTIVE_KINDS},
        conv=dict.fromkeys(prof.CONV_PASSES, conv),
        memory=prof.LinearFit(0.0, (memory_rate,), ("bytes",)),
        launch_s=launch,
        notes=notes or {},
    )


def test_the_ledger_counts_each_collectives_latency_terms_with_its_bytes():
    data = predict(LAYER, "data", {"n": 8})
    # one kernel-gradient all-reduce over 8 devices: 2 (8 - 1) latency terms on every device
    assert set(data.backward.steps_per_device) == {"all-reduce"}
    assert np.all(data.backward.steps_per_device["all-reduce"] == latency_steps("all-reduce", 8))
    spatial = predict(LAYER, "spatial", {"n": 2, "h": 4})
    permutes = spatial.forward.steps_per_device["collective-permute"]
    # a 3x3 halo over h=4: interior devices receive from both neighbours, the edges from one
    assert sorted(set(permutes.tolist())) == [1.0, 2.0]
    streaming = predict(LAYER, "2d", {"n": 2, "h": 2, "k": 2})
    m = streaming.layout.panels
    gathers = streaming.forward.steps_per_device["all-gather"]
    # per panel: x over k (2 devices), the kernel over the rows n, h (4 devices)
    assert np.all(gathers == m * (latency_steps("all-gather", 2) + latency_steps("all-gather", 4)))


def test_comm_seconds_is_alpha_steps_plus_bytes_over_beta_per_kind():
    model = TimeModel.of(profile(alpha=2e-6, beta=4e9))
    link = LinkBytes(
        {"all-gather": np.array([4e6, 8e6]), "collective-permute": np.array([0.0, 1e6])},
        np.zeros(2),
        {"all-gather": np.array([3.0, 3.0]), "collective-permute": np.array([0.0, 1.0])},
        np.zeros(2),
    )
    np.testing.assert_allclose(model.comm_seconds(link), [6e-6 + 1e-3, 8e-6 + 2.25e-3])


def test_bytes_that_cross_hosts_are_priced_on_the_slow_links():
    slow = {"dcn": {"alpha_s": 1e-4, "beta_bytes_per_s": 1e8}}
    model = TimeModel.of(profile(alpha=1e-6, beta=1e10, notes=slow))
    link = LinkBytes(
        {"all-reduce": np.array([1e6])}, np.array([1e6]), {"all-reduce": np.array([2.0])}, np.array([2.0])
    )
    assert model.comm_seconds(link)[0] == pytest.approx(2e-4 + 1e6 / 1e8)


def test_local_work_is_the_devices_share_of_the_layer():
    macs = 8 * 16 * 16 * 64 * 32 * 9  # N·Ho·Wo·K·C·R·S
    data = conv_work(predict(LAYER, "data", {"n": 8}))
    assert data.work.macs * 8 == macs and data.applications == {
        "forward": 1,
        "input_grad": 1,
        "kernel_grad": 1,
    }
    spatial = conv_work(predict(LAYER, "spatial", {"n": 2, "h": 4}), input_grad=False)
    assert spatial.work.macs * 8 == macs and spatial.applications["input_grad"] == 0
    # its x is the halo-extended window: 4 rows + 2 halo rows of 16 x 32, 4 images
    assert spatial.work.bytes == 4 * (4 * 6 * 16 * 32 + 9 * 32 * 64 + 4 * 4 * 16 * 64)
    streaming = predict(LAYER, "2d", {"n": 2, "h": 2, "k": 2})
    work = conv_work(streaming)
    m = streaming.layout.panels
    assert m > 1 and work.work.macs * m * 8 == macs and work.applications["forward"] == m


def _small_cnn(devices: int = 8, batch: int = 32):
    sizes = jaxcnn.mesh.batch_mesh_sizes({"n": devices}, batch)
    mesh = jaxcnn.make_mesh(**sizes)
    built = models.build_abstract("small_cnn", num_classes=10, in_channels=1, mesh=mesh)
    return built, sizes


def test_a_cpu_step_is_the_sum_of_its_parts_and_a_gpu_step_hides_gradient_reductions():
    built, sizes = _small_cnn()
    plan = plan_model(built, 32, (8, 8, 1), sizes, time_model=TimeModel.of(profile()))
    assert plan.time is not None
    parts = plan.time.components
    assert parts["hidden"] == 0.0
    assert plan.time.seconds == pytest.approx(sum(v for k, v in parts.items() if k != "hidden"))
    assert set(plan.time.layers) == {*plan.placements, "layout"}
    graph, layers = built.plan_graph, plan.layers
    source = (P("n"), grid_key(sizes))
    data = {name: ("data", {"n": 8}) for name in layers}
    choices = choices_for(layers, data, first=first_conv(graph))
    for platform in ("cpu", "gpu"):
        t = step_time(graph, layers, choices, source, TimeModel.of(profile(platform)))
        reduce = t.components["hidden"]
        if platform == "cpu":
            assert reduce == 0.0
        else:  # data parallelism: every gradient all-reduce can hide behind the backward convolutions
            grads = step_cost(graph, layers, choices, source).parts["conv"]
            alone = LinkBytes(
                {"all-reduce": grads.kinds["all-reduce"]}, steps={"all-reduce": grads.steps["all-reduce"]}
            )
            expected = TimeModel.of(profile(platform)).comm_seconds(alone).max()
            assert reduce == pytest.approx(min(expected, t.components["compute"]))


def _plan(time_model=None, objective="bytes"):
    built, sizes = _small_cnn()
    return plan_model(built, 32, (8, 8, 1), sizes, time_model=time_model, objective=objective)


def _priced(plan, model: TimeModel) -> float:
    """A plan's placements priced by ``model``."""
    built, sizes = _small_cnn()
    grids = {
        name: (p.split("@")[0], dict(kv.split("=") for kv in p.split("@")[1].split(",")))
        for name, p in plan.placements.items()
    }
    grids = {name: (alg, {a: int(v) for a, v in grid.items()}) for name, (alg, grid) in grids.items()}
    choices = choices_for(plan.layers, grids, first=first_conv(built.plan_graph))
    return step_time(built.plan_graph, plan.layers, choices, (P("n"), grid_key(sizes)), model).seconds


def test_planning_by_time_follows_the_profile():
    # bytes dear, latency and compute free: the time plan moves as few bytes as the bytes plan
    by_bytes = _plan()
    per_byte = TimeModel.of(profile(alpha=0.0, beta=1e6, mac_rate=1e18, memory_rate=1e18, launch=0.0))
    by_time = _plan(per_byte, "time")
    assert by_bytes.time is None and by_time.time is not None
    assert by_time.cost.max_bytes == pytest.approx(by_bytes.cost.max_bytes, rel=0.02)
    # latency dear: no slower than the bytes plan or data parallelism (fewer collectives)
    per_call = TimeModel.of(profile(alpha=1e-3, beta=1e15, mac_rate=1e18, memory_rate=1e18, launch=0.0))
    by_time = _plan(per_call, "time")
    data = dataclasses.replace(by_time, placements=dict.fromkeys(by_time.placements, "data@n=8"))
    assert by_time.time.seconds <= min(_priced(by_bytes, per_call), _priced(data, per_call)) * (1 + 1e-9)
    assert by_time.time.seconds < _priced(by_bytes, per_call)  # it found fewer latency terms
    # every local convolution dear (1 ms a call), communication free: one channel panel per layer
    per_conv = TimeModel.of(
        dataclasses.replace(
            profile(alpha=0.0, beta=1e18, memory_rate=1e18, launch=0.0),
            conv=dict.fromkeys(
                prof.CONV_PASSES, prof.LinearFit(1e-3, (1e18, float("inf")), ("macs", "bytes"))
            ),
        )
    )
    by_time = _plan(per_conv, "time")
    passes = 3 * len(by_time.placements) - 1  # no input gradient for the first layer
    assert by_time.time.components["compute"] == pytest.approx(passes * 1e-3)
    # objective bytes with a time model: the same plan as without, its time predicted
    priced = _plan(per_conv, "bytes")
    assert priced.placements == by_bytes.placements and priced.time is not None


def test_objective_errors():
    with pytest.raises(ValueError, match="objective must be one of bytes, time, got 'speed'"):
        check_objective("speed", None)
    with pytest.raises(ValueError, match="needs a timing profile"):
        check_objective("time", None)


def test_without_a_profile_the_note_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv(prof.ENV_DIR, str(tmp_path))
    model, note = backend_time_model()
    assert model is None
    assert (
        note.startswith("no timing profile for 8 cpu devices") and "jaxcnn calibrate --cpu-devices 8" in note
    )
    current = prof.Profile(**{**profile().__dict__, "key": prof.current_key()})
    path = prof.save_profile(current, str(tmp_path))
    model, note = backend_time_model()
    assert note == "" and model is not None and model.profile.launch_s == pytest.approx(1e-4)
    assert math.isclose(model.collective("all-gather").alpha_s, 1e-5)
    with open(path, "w") as f:
        f.write("{")
    model, note = backend_time_model()
    assert model is None and note.startswith(f"timing profile unreadable ({path}:")


def test_every_device_takes_part_in_a_permute_and_a_layout_change_counts_its_calls():
    spatial = predict(LAYER, "spatial", {"n": 2, "h": 4})
    calls = spatial.forward.calls_per_device["collective-permute"]
    steps = spatial.forward.steps_per_device["collective-permute"]
    assert np.all(calls == calls.max()) and calls.max() >= steps.max()  # edge devices wait too
    from jaxcnn import redistribute

    grid = grid_key({"n": 8})
    change = redistribute.plan((8, 4, 4, 16), (P("n"), grid), (P(None, None, None, "n"), grid))
    link = change.link_bytes(4)
    assert set(link.calls) == {"all-to-all"} and np.all(link.calls["all-to-all"] == 1)
    assert np.all(link.steps["all-to-all"] == latency_steps("all-to-all", 8))


def test_a_collective_in_a_step_costs_its_sync_and_the_work_before_it_straggles():
    from jaxcnn.timing.barrier import barrier_fit

    # (latency steps, convolution s, extra s): psums over 2 and 8 devices after 1 ms, over 8 after 10 ms
    fit = barrier_fit([(2.0, 1e-3, 4e-4), (14.0, 1e-3, 1.6e-3), (14.0, 1e-2, 3.6e-3)])
    model = TimeModel.of(dataclasses.replace(profile(alpha=0.0, beta=1e18), barrier=fit))
    assert model.sync_step_s == pytest.approx(1e-4) and model.sync_s == pytest.approx(2e-4)
    assert model.straggle_seconds(1e-2) == pytest.approx(2e-3)
    link = LinkBytes(
        {"all-reduce": np.array([0.0])},
        steps={"all-reduce": np.array([28.0])},
        calls={"all-reduce": np.array([2.0])},
    )
    assert model.comm_seconds(link)[0] == pytest.approx(2 * 2e-4 + 28 * 1e-4)
    noise = barrier_fit([(2.0, 1e-3, -1e-4), (14.0, 1e-3, -3e-4), (14.0, 1e-2, -2e-4)])
    assert noise.intercept_s == 0.0 and noise.rates == (float("inf"), float("inf"))  # below zero: none
    assert TimeModel.of(profile()).straggle_seconds(1.0) == 0.0  # not measured: none


def test_a_profile_keeps_its_launch_and_barrier_through_json():
    from jaxcnn.timing.barrier import barrier_fit

    fit = barrier_fit([(2.0, 1e-3, 4e-4), (14.0, 1e-3, 1.6e-3), (14.0, 1e-2, 3.6e-3)])
    original = dataclasses.replace(profile(launch=3e-4), barrier=fit)
    back = prof.Profile.from_json(original.to_json())
    assert back.launch_s == 3e-4 and back.barrier == original.barrier
    older = original.to_json()
    del older["launch_s"], older["barrier"]  # a profile written before they were measured
    assert prof.Profile.from_json(older).barrier is None


def test_kernel_gradient_all_reduces_over_the_same_devices_are_one_call():
    """As XLA's all-reduce combiner runs them (small_cnn's data-parallel HLO: one all-reduce of every
    kernel gradient); the bytes are unchanged."""
    from jaxcnn.planner.step_time import combined_reductions

    graph, layers = _small_cnn()[0].plan_graph, _plan().layers
    data = choices_for(layers, {name: ("data", {"n": 8}) for name in layers}, first=first_conv(graph))
    adjust = combined_reductions(data)
    assert not adjust.kinds and np.all(adjust.calls["all-reduce"] == 1 - len(layers))
    assert np.all(adjust.steps["all-reduce"] == (1 - len(layers)) * latency_steps("all-reduce", 8))
    mixed = dict(data, conv2=predict(layers["conv2"], "spatial", {"n": 2, "h": 2, "w": 2}))
    assert np.all(combined_reductions(mixed).calls["all-reduce"] == 1 - (len(layers) - 1))  # two groups
