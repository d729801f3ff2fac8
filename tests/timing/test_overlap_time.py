"""How the step-time model prices ``+overlap`` (jaxcnn.algorithms.overlap): the pieces' fixed costs
everywhere, the halos hidden behind the core only where collectives are asynchronous, and a planner
that takes overlap exactly where it is faster."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxcnn.cost import predict
from jaxcnn.geometry import conv_geometry
from jaxcnn.links import LinkBytes
from jaxcnn.planner.model import plan_model
from jaxcnn.timing import profile as prof
from jaxcnn.timing.model import TimeModel, conv_work
from tests.timing.test_step_time import _small_cnn, profile

LAYER = conv_geometry((8, 64, 64, 32), (3, 3, 32, 32), (1, 1), "SAME")
GRID = {"n": 2, "h": 2, "w": 2}


def _with_intercept(p: prof.Profile, intercept: float) -> prof.Profile:
    fit = prof.LinearFit(intercept, (1e10, float("inf")), ("macs", "bytes"))
    return dataclasses.replace(p, conv=dict.fromkeys(prof.CONV_PASSES, fit))


def _kind_seconds(model: TimeModel, comm, kind: str) -> float:
    link = comm.link_bytes()
    only = LinkBytes({kind: link.kinds[kind]}, steps={kind: link.steps[kind]}, calls={kind: link.calls[kind]})
    return float(model.comm_seconds(only).max())


def test_the_pieces_cost_their_fixed_costs_and_the_core_is_the_interior_share():
    plain, overlapped = predict(LAYER, "spatial", GRID), predict(LAYER, "spatial+overlap", GRID)
    work = conv_work(overlapped)
    # a 32 x 32 block, a 3 x 3 kernel: rows 1..30 of each dimension are interior; 4 strips around the core
    assert overlapped.layout.interior == ((1, 31), (1, 31))
    assert (work.pieces, work.core) == (5, pytest.approx((30 / 32) ** 2))
    assert work.work == conv_work(plain).work  # the same multiply-adds and bytes
    model = TimeModel.of(_with_intercept(profile(), 1e-4))
    extra = {k: overlapped_s - plain_s for (k, overlapped_s), plain_s in zip(
        model.conv_seconds(overlapped).items(), model.conv_seconds(plain).values(), strict=True
    )}  # fmt: skip
    assert extra == pytest.approx(dict.fromkeys(extra, 4 * 1e-4))


@pytest.mark.parametrize("beta", [1e12, 1e6])  # halos cheaper than the core's work, and dearer
def test_halos_hide_behind_the_core_only_where_collectives_are_asynchronous(beta):
    overlapped = predict(LAYER, "spatial+overlap", GRID)
    for platform in ("cpu", "gpu"):
        model = TimeModel.of(profile(platform, alpha=1e-6, beta=beta))
        conv = model.conv_seconds(overlapped)
        forward, backward = model.overlap_hidden(overlapped, conv)
        if platform == "cpu":
            assert (forward, backward) == (0.0, 0.0)
            continue
        core = conv_work(overlapped).core
        halo_fwd = _kind_seconds(model, overlapped.forward, "collective-permute")
        halo_bwd = _kind_seconds(model, overlapped.backward, "collective-permute")
        assert forward == pytest.approx(min(halo_fwd, core * conv["forward"]))
        assert backward == pytest.approx(min(halo_bwd, core * (conv["input_grad"] + conv["kernel_grad"])))
        assert (forward == pytest.approx(halo_fwd)) == (beta == 1e12)  # cheap halos hide whole
    plain = predict(LAYER, "spatial", GRID)
    gpu = TimeModel.of(profile("gpu"))
    assert gpu.overlap_hidden(plain, gpu.conv_seconds(plain)) == (0.0, 0.0)


def test_the_planner_takes_overlap_only_where_it_is_faster():
    built, sizes = _small_cnn()
    # collectives as dear as compute, asynchronous: overlap pays for its pieces' fixed costs
    gpu = TimeModel.of(profile("gpu", alpha=1e-5, beta=1e8, mac_rate=1e9))
    plan = plan_model(built, 32, (28, 28, 1), sizes, time_model=gpu, objective="time")
    overlapped = [p for p in plan.placements.values() if p.split("@")[0].endswith("+overlap")]
    assert overlapped, plan.placements
    assert plan.time.components["hidden"] > 0
    # the same machine with synchronous collectives: overlap would only add fixed costs
    cpu = TimeModel.of(
        dataclasses.replace(gpu.profile, key=dataclasses.replace(gpu.profile.key, platform="cpu"))
    )
    plan = plan_model(built, 32, (28, 28, 1), sizes, time_model=cpu, objective="time")
    assert not [p for p in plan.placements.values() if "+overlap" in p], plan.placements
    # by bytes, overlap never appears (it moves the same bytes as without)
    plan = plan_model(built, 32, (28, 28, 1), sizes, time_model=gpu, objective="bytes")
    assert not [p for p in plan.placements.values() if "+overlap" in p], plan.placements
    assert np.isfinite(plan.time.seconds)


def test_pipelined_gathers_hide_behind_the_previous_panel():
    """2d+overlap with k > 1: the gathers of panels 1..m-1 hide behind the passes of panels 0..m-2,
    one panel's gathers up to one panel's pass, forward and backward; none on the CPU."""
    grid = {"n": 2, "h": 2, "k": 2}
    cost = predict(LAYER, "2d+overlap", grid)
    m = cost.layout.panels
    assert cost.layout.pipelined and m > 1
    for beta in (1e12, 1e6):
        gpu = TimeModel.of(profile("gpu", alpha=1e-6, beta=beta))
        conv = gpu.conv_seconds(cost)
        gathers = _kind_seconds(gpu, cost.forward, "all-gather") / m
        forward, backward = gpu.overlap_hidden(cost, conv)
        assert forward == pytest.approx((m - 1) * min(gathers, conv["forward"] / m))
        assert backward == pytest.approx(
            (m - 1) * min(gathers, (conv["input_grad"] + conv["kernel_grad"]) / m)
        )
    cpu = TimeModel.of(profile("cpu"))
    assert cpu.overlap_hidden(cost, cpu.conv_seconds(cost)) == (0.0, 0.0)
