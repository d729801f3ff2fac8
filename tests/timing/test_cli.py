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


@pytest.mark.slow
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
    assert f"profile: {tmp_path / name}" in out.stdout.replace("\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--cpu-devices", "1"],
            "jaxcnn calibrate: --cpu-devices must be >= 2 (collectives need two devices), got 1",
        ),
        (["--cpu-devices", "2", "--dir", "/proc/no-such/dir"], "jaxcnn calibrate: cannot write the profile"),
    ],
)
def test_mistakes_are_one_line_exit_2(args, message):
    extra = ["--quick"] if "--dir" in args else []
    out = _calibrate(*args, *extra)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
