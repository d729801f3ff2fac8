"""Where the predicted step time shows: ``--compile-only``, the run summary, ``jaxcnn plan --whole-step``;
and what happens without a profile (one line, plans by bytes)."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from jaxcnn.planner.cli import main as plan_main
from jaxcnn.runner.aot import parse_placements
from jaxcnn.runner.cli import main as train_main
from jaxcnn.timing import profile as prof
from tests.timing.test_step_time import profile

SMALL = ["train.batch_size=32", "train.eval_batch_size=32"]


def _figures(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@pytest.fixture
def with_profile(tmp_path, monkeypatch):
    """A synthetic profile of this backend (8 CPU devices) in a directory of its own."""
    monkeypatch.setenv(prof.ENV_DIR, str(tmp_path))
    current = dataclasses.replace(profile(launch=2e-4), key=prof.current_key())
    prof.save_profile(current, str(tmp_path))
    return current


def test_compile_only_prints_the_predicted_step_time(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(prof.ENV_DIR, str(tmp_path))  # empty: no profile
    assert train_main(["configs/default.yaml", "--compile-only", *SMALL]) == 0
    out = capsys.readouterr().out
    none = _figures(out)
    assert none["predicted_step_time_s"] == "None"
    # the placements: a count, then one short "<layer>  <placement>" line per convolution
    table = parse_placements(out)
    assert none["placements"] == f"{len(table)} convolutions" and len(table) >= 5
    assert table["head"].startswith("data@") and max(len(line) for line in out.splitlines()) < 300
    assert none["predicted_time_note"].startswith("no timing profile for 8 cpu devices")
    assert "`jaxcnn calibrate --cpu-devices 8`" in none["predicted_time_note"]
    current = dataclasses.replace(profile(launch=2e-4), key=prof.current_key())
    prof.save_profile(current, str(tmp_path))
    assert train_main(["configs/default.yaml", "--compile-only", *SMALL]) == 0
    figures = _figures(capsys.readouterr().out)
    seconds = float(figures["predicted_step_time_s"])
    parts = ast.literal_eval(figures["predicted_time_components"])
    assert seconds > 2e-4 and parts["launch"] == 2e-4 and parts["hidden"] == 0.0
    assert seconds == pytest.approx(sum(v for k, v in parts.items() if k != "hidden"), rel=1e-3)
    assert "predicted_time_note" not in figures
    assert figures["comm_bytes_per_step_max_device"] == figures["predicted_comm_bytes_per_step_max_device"]


def test_plan_whole_step_shows_seconds_per_layer(capsys, with_profile):
    args = ["--model", "small_cnn", "--batch", "32", "--devices", "8", "--image", "8", "--classes", "10"]
    assert plan_main([*args, "--whole-step"]) == 0
    out = capsys.readouterr().out
    assert "planned by time" in out and "seconds per layer" in out
    layers = out.split("seconds per layer")[1].split("model.algorithms:")[0]
    assert {"conv1:", "conv4:", "head:", "layout:"} <= {
        line.split()[0] for line in layers.splitlines()[1:] if line
    }
    assert plan_main([*args, "--whole-step", "--objective", "bytes"]) == 0
    assert "planned by bytes" in capsys.readouterr().out
    assert plan_main([*args, "--whole-step", "--objective", "speed"]) == 2
    err = capsys.readouterr().err
    assert err == "jaxcnn plan: error: unknown objective 'speed'; valid objectives are ['bytes', 'time']\n"


def test_plan_whole_step_without_a_profile_says_so_and_plans_by_bytes(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(prof.ENV_DIR, str(tmp_path))
    args = ["--model", "small_cnn", "--batch", "32", "--devices", "8", "--image", "8", "--classes", "10"]
    assert plan_main([*args, "--whole-step"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("jaxcnn plan: no timing profile for 8 cpu devices")
    assert captured.err.endswith("; planning by bytes\n") and captured.err.count("\n") == 1
    assert "predicted_step_time_s" not in captured.out
    # a preset prices any device count without a profile
    assert plan_main([*args, "--whole-step", "--preset", "h100"]) == 0
    assert "predicted_step_time_s" in capsys.readouterr().out
    assert plan_main([*args, "--whole-step", "--preset", "tpu-v9"]) == 2
    assert "unknown preset 'tpu-v9'; valid presets are" in capsys.readouterr().err
