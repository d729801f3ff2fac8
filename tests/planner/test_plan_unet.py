"""``jaxcnn plan`` of the U-Net (2-D images and, with ``--spatial-dims 3``, volumes): the per-layer table
and ``--whole-step``; and the status line ``jaxcnn plan`` shows on a terminal while it plans."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from flax import nnx
from rich.console import Console

from jaxcnn import models
from jaxcnn.mesh import make_mesh
from jaxcnn.planner import cli
from jaxcnn.runner.autoplan import plan_algorithms
from jaxcnn.timing import profile as prof

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNET = ["--model", "unet", "--batch", "8", "--devices", "8", "--memory", "16GiB"]


@pytest.fixture(autouse=True)
def _no_profile(tmp_path, monkeypatch):
    """No timing profile: --whole-step plans by bytes (one stderr line says so)."""
    monkeypatch.setenv(prof.ENV_DIR, str(tmp_path))


def _placements(out: str) -> dict[str, str]:
    table = out.split("model.algorithms:\n")[1]
    return dict(line.strip().split(": ") for line in table.splitlines())


@pytest.mark.parametrize(
    ("spatial", "image", "header"),
    [
        ([], "16", "unet 16x16,"),
        pytest.param(["--spatial-dims", "3"], "8", "unet 8x8x8,", marks=pytest.mark.slow),  # 9 s
    ],
)
def test_plan_unet_prints_its_table_and_whole_step(spatial, image, header, capsys):
    assert cli.main([*UNET, "--image", image, *spatial, "--whole-step"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(header)
    dims = 3 if spatial else 2
    unet = models.build_abstract("unet", num_classes=2, in_channels=1, mesh=make_mesh(), spatial_dims=dims)
    rows = {line.split()[0] for line in captured.out.splitlines() if line.strip()}
    placements = _placements(captured.out)
    assert set(placements) == set(models.conv_layer_names(unet))  # every convolution, up0, up1, out included
    assert set(placements) <= rows  # every convolution also has a row of the per-layer table
    assert "predicted_comm_bytes_per_step_max_device: " in captured.out
    if dims == 2:  # what `jaxcnn train` auto-plans for the same model, batch and devices (by bytes)

        def build(algorithms):
            return models.build(
                "unet", num_classes=2, in_channels=1, mesh=mesh, algorithms=algorithms, rngs=nnx.Rngs(0)
            )

        mesh = make_mesh(n=8)
        assert placements == plan_algorithms(build, mesh, 8, (16, 16, 1), 16 * 2**30, "float32")
    assert captured.err.endswith("; planning by bytes\n") and captured.err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "resnet50", "--spatial-dims", "3"],
            "spatial_dims=3 needs a model with volumes: one of ['unet'], got 'resnet50'",
        ),
        (["--model", "unet", "--spatial-dims", "4"], "spatial_dims must be 2 or 3, got 4"),
    ],
)
def test_spatial_dims_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"jaxcnn plan: error: {message}\n"


def test_whole_step_shows_each_phase_on_a_terminal(monkeypatch, capsys):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "progress_console", lambda: Console(file=screen, force_terminal=True, width=200))
    argv = ["--model", "small_cnn", "--batch", "32", "--devices", "8", "--image", "8", "--classes", "10"]
    assert cli.main([*argv, "--whole-step"]) == 0
    shown = screen.getvalue()
    phases = [
        "tracing small_cnn",
        "planning the per-layer table (5 convolutions)",
        "building small_cnn on 8 devices",
        "tracing the convolutions",
        "placing 5 convolutions as a graph (by bytes)",
        "predicting the step's bytes, seconds and memory",
    ]
    at = [shown.find(f"jaxcnn plan: {phase}") for phase in phases]
    assert -1 not in at and at == sorted(at), shown[-2000:]
    assert "0:00:0" in shown  # the time since the first phase
    assert "predicted_comm_bytes_per_step_max_device" not in shown  # the plan itself goes to stdout
    captured = capsys.readouterr()
    assert "predicted_comm_bytes_per_step_max_device" in captured.out
    assert "jaxcnn plan: tracing" not in captured.err  # stderr is no terminal here: no status


@pytest.mark.slow
def test_whole_step_sets_the_device_count_before_tracing(tmp_path):
    """In a fresh process, --whole-step asks for its devices before the layers are traced (which starts
    JAX): it plans in that process, not a second time in a subprocess."""
    script = (
        "import sys, jax; from jaxcnn.planner.cli import main; rc = main(sys.argv[1:]); "
        "print('DEVICES', len(jax.devices()), rc)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(PYTHONPATH=str(ROOT), **{prof.ENV_DIR: str(tmp_path)})
    argv = ["--model", "small_cnn", "--batch", "32", "--devices", "8", "--image", "8", "--whole-step"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "DEVICES 8 0"
    assert "model.algorithms:" in proc.stdout
