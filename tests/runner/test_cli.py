"""``jaxcnn train``: argument handling and exit codes (no training)."""

from __future__ import annotations

import pytest
import yaml

from jaxcnn.__main__ import main as jaxcnn_main
from jaxcnn.runner.config import load_config


def test_print_config_applies_overrides(capsys):
    code = jaxcnn_main(["train", "configs/default.yaml", "--print-config", "train.steps=7", "mesh.n=-1"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0
    assert printed["train"]["steps"] == 7 and printed["mesh"]["n"] == -1
    assert printed == load_config("configs/default.yaml", ["train.steps=7", "mesh.n=-1"]).to_dict()


def test_override_and_file_errors_exit_2_with_one_line(capsys):
    # The errors of the command line itself. Config values (unknown keys, meshes, placements, floats)
    # have their one home each in tests/runner/test_config.py (the message) and
    # tests/faults/test_config_faults.py (one line, exit 2, nothing written).
    assert jaxcnn_main(["train", "configs/default.yaml", "trainsteps"]) == 2
    assert capsys.readouterr().err.startswith("jaxcnn train: config error: bad override 'trainsteps'")
    assert jaxcnn_main(["train", "configs/nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config file not found: configs/nope.yaml" in err


@pytest.mark.slow
def test_cpu_devices_flag_gives_a_fresh_process_virtual_devices(tmp_path):
    """`jaxcnn train --cpu-devices 8` works without XLA_FLAGS (a laptop); it prints the 8-device mesh."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "jaxcnn", "train", "configs/default.yaml"]
    out = subprocess.run(
        [*cmd, "--cpu-devices=8", "--print-config"],
        capture_output=True, text=True, env=env, check=False, cwd=root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    no_flag = subprocess.run(
        [*cmd, "--compile-only"],
        capture_output=True, text=True, env=env, check=False, cwd=root,
    )  # fmt: skip
    assert no_flag.returncode == 2
    assert "product 8 != 1 available devices" in no_flag.stderr and "--cpu-devices N" in no_flag.stderr


def test_bad_cpu_devices_is_one_line_exit_2(capsys):
    from jaxcnn.runner.cli import main

    assert main(["configs/default.yaml", "--cpu-devices", "0"]) == 2
    assert capsys.readouterr().err == "jaxcnn train: --cpu-devices must be >= 1, got 0\n"
    # this test process runs JAX already: the request cannot take effect, and says so
    assert main(["configs/default.yaml", "--cpu-devices", "4"]) == 2
    assert capsys.readouterr().err == "jaxcnn train: --cpu-devices has no effect: JAX already started\n"
