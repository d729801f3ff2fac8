"""``experiments/gspmd_step.py`` on the test session's 8 fake devices: the data-parallel GSPMD train step
of the plain Flax VGG-16-BN (batch 8, 32² images, compile only) moves what a gradient all-reduce moves,
2 · parameter bytes · (P-1)/P per device, and the mesh search only proposes even factorizations."""

from __future__ import annotations

import importlib.util

import jax
import pytest

from tests.fake_devices import ROOT


def _gspmd_step():
    spec = importlib.util.spec_from_file_location("gspmd_step", ROOT / "experiments" / "gspmd_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mesh_candidates_are_even_factorizations():
    g = _gspmd_step()
    assert g.mesh_candidates("dp", 64, 32, 224) == [{"data": 32, "rep": 2}]
    assert g.mesh_candidates("fsdp", 512, 8, 1024) == [{"data": 8, "rep": 64}]
    spatial = g.mesh_candidates("spatial", 64, 32, 224)
    assert [(m["data"], m["spatial"]) for m in spatial] == [(32, 2), (16, 4), (8, 8), (4, 16), (2, 32)]
    for m in g.mesh_candidates("channel", 512, 32, 224):
        assert m["data"] * m["model"] == 512 and 32 % m["data"] == 0 and 2 <= m["model"] <= 64


@pytest.mark.slow
def test_data_parallel_step_is_one_gradient_all_reduce():
    p = jax.device_count()
    assert p == 8
    g = _gspmd_step()
    row = g.compile_and_meter("vgg16", "dp", {"data": p, "rep": 1}, batch=p, image=32, num_classes=10)
    expected = 2 * row["param_bytes"] * (p - 1) / p
    # the gradient all-reduce dominates; BatchNorm statistics and the loss add a little (< 1 %)
    assert expected <= row["bytes"] <= 1.01 * expected, (row, expected)
    assert set(row["collectives"]) == {"all-reduce"}, row["collectives"]
    assert row["param_bytes"] == 4 * 14_724_042  # VGG-16-BN convs + BN + a 512x10 dense head
