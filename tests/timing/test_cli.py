"""``jaxcnn calibrate``: a quick calibration in a fresh process, its profile file, and usage mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxcnn.timing.profile import COLLECTIVE_KINDS, CONV_PASSES, Profile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _calibrate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.pop("XLA_FLAGS", None)  # --cpu-devices sets the count
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-m", "jaxcnn", "calibrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# A real calibration in a fresh process (15-20 s here): make test-sweep; make test runs the plumbing
# below in-process and every measurement on its own (tests/timing/test_collectives.py, test_compute.py).
@pytest.mark.slow
@pytest.mark.sweep
def test_quick_calibration_writes_a_profile_of_this_backend(tmp_path):
    out = _calibrate("--cpu-devices", "4", "--quick", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    (name,) = os.listdir(tmp_path)
    assert name.startswith("cpu-cpu-4x1-jax")
    with open(tmp_path / name) as f:
        profile = Profile.from_json(json.load(f))
    assert profile.key.device_count == 4 and profile.notes["quick"] is True
    assert set(profile.collectives) == set(COLLECTIVE_KINDS) and set(profile.conv) == set(CONV_PASSES)
    assert profile.notes["groups"] == [2, 4]
    for fit in profile.collectives.values():
        assert fit.beta_bytes_per_s > 0 and fit.alpha_s >= 0 and len(fit.points) == 2 * 2
    assert profile.memory is not None and profile.memory.rates[0] > 0
    assert f"profile: {tmp_path / name}\n" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--cpu-devices", "1"],
            "jaxcnn calibrate: --cpu-devices must be >= 2 (collectives need two devices), got 1",
        ),
        (
            ["--quick", "--dir", "/proc/no-such/dir"],
            "jaxcnn calibrate: cannot write the profile under /proc/no-such",
        ),
    ],
)
def test_mistakes_are_one_line_exit_2_before_measuring(args, message, capsys, monkeypatch):
    from jaxcnn.timing import cli

    def calibrate(*_):
        raise AssertionError("measured before the mistake was reported")

    monkeypatch.setattr(cli.calibration, "calibrate", calibrate)
    assert cli.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_the_command_saves_and_prints_what_calibrate_returns(tmp_path, monkeypatch, capsys):
    from jaxcnn.timing import cli
    from jaxcnn.timing.presets import preset_profile

    fake = preset_profile("h100", 8)  # any profile: the plumbing, not the measuring
    calls = []

    def calibrate(quick, progress):
        calls.append(quick)
        progress("all-gather over 2 devices, 4,096 B per device")
        return fake

    monkeypatch.setattr(cli.calibration, "calibrate", calibrate)
    assert cli.main(["--quick", "--dir", str(tmp_path)]) == 0
    assert calls == [True]
    with open(tmp_path / fake.key.file_name()) as f:
        assert Profile.from_json(json.load(f)) == fake
    out = capsys.readouterr().out
    assert f"profile: {tmp_path / fake.key.file_name()}\n" in out  # one line, whatever the width
    out = " ".join(out.split())
    assert "all-gather α" in out and "conv forward" in out and "memory-bound" in out
