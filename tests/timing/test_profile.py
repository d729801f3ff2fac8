"""Timing profiles: keys, files, the format's round trip and the least-squares fits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxcnn.timing import profile as prof


def _profile(key: prof.ProfileKey) -> prof.Profile:
    fit = prof.CollectiveFit(5e-6, 2e9, ((2, 4096.0, 7e-6), (4, 8192.0, 2e-5)))
    conv = prof.LinearFit(1e-5, (3e9, float("inf")), ("macs", "bytes"), ((1e6, 1e5, 4e-4),))
    return prof.Profile(
        key=key,
        collectives={"all-gather": fit, "collective-permute": prof.CollectiveFit(1e-6, 4e9)},
        conv={"forward": conv},
        memory=prof.LinearFit(0.0, (8e9,), ("bytes",)),
        created="2026-12-07T00:00:00+00:00",
        calibration_s=12.5,
        notes={"quick": True},
    )


KEY = prof.ProfileKey("gpu", "NVIDIA H100 80GB HBM3", 8, 1, "0.10.2")


def test_latency_steps_follow_the_bandwidth_optimal_algorithms():
    assert [prof.latency_steps(k, 8) for k in prof.COLLECTIVE_KINDS] == [7, 7, 14, 7, 1]
    with pytest.raises(ValueError, match="unknown collective kind 'broadcast'; valid: all-gather"):
        prof.latency_steps("broadcast", 4)


def test_collective_seconds():
    fit = prof.CollectiveFit(alpha_s=1e-5, beta_bytes_per_s=1e9)
    assert fit.seconds("all-reduce", 4, 3e6) == pytest.approx(6 * 1e-5 + 3e-3)
    assert fit.seconds("all-gather", 1, 3e6) == 0.0  # a group of one device moves nothing


def test_file_names_are_safe_and_distinct():
    name = KEY.file_name()
    assert name == "gpu-NVIDIA_H100_80GB_HBM3-8x1-jax0.10.2.json"
    assert (
        prof.ProfileKey("cpu", "cpu", 8, 1, "0.10.2").file_name()
        != prof.ProfileKey("cpu", "cpu", 16, 1, "0.10.2").file_name()
    )


def test_round_trip_through_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(prof.ENV_DIR, str(tmp_path / "profiles"))
    assert prof.load_profile(KEY) is None  # none yet
    p = _profile(KEY)
    path = prof.save_profile(p)
    assert path == str(tmp_path / "profiles" / KEY.file_name())
    back = prof.load_profile(KEY)
    assert back == p
    assert math.isinf(back.conv["forward"].rates[1])  # a dropped feature survives JSON
    # an explicit directory wins over the environment
    other = tmp_path / "other"
    prof.save_profile(p, str(other))
    assert prof.load_profile(KEY, str(other)) == p


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(version=99), "profile format version 99, this jaxcnn reads 1"),
        (lambda d: d["collectives"].update(broadcast=d["collectives"]["all-gather"]), "unknown collective"),
        (lambda d: d["conv"].update(backward=d["conv"]["forward"]), "unknown convolution pass 'backward'"),
        (lambda d: d["key"].pop("platform"), "not a jaxcnn timing profile"),
    ],
)
def test_a_bad_file_names_itself_and_the_problem(tmp_path, change, message):
    data = _profile(KEY).to_json()
    change(data)
    path = tmp_path / KEY.file_name()
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        prof.load_profile(KEY, str(tmp_path))
    assert str(path) in str(err.value) and "jaxcnn calibrate" in str(err.value)


def test_fit_linear_recovers_exact_rates_and_keeps_coefficients_non_negative():
    rng = np.random.default_rng(0)
    x = rng.uniform(1e5, 1e8, size=(12, 2))
    t = 2e-5 + x[:, 0] / 5e9 + x[:, 1] / 2e10
    fit = prof.fit_linear(x, t, ("macs", "bytes"))
    assert fit.intercept_s == pytest.approx(2e-5, rel=1e-6)
    assert fit.rates == pytest.approx((5e9, 2e10), rel=1e-6)
    assert fit.seconds(*x[3]) == pytest.approx(t[3], rel=1e-9)
    # times that fall with a feature would need a negative coefficient: it is clamped at zero (rate inf)
    falling = prof.fit_linear([(1.0,), (2.0,), (3.0,)], [3.0, 2.0, 1.0], ("bytes",))
    assert math.isinf(falling.rates[0]) and falling.intercept_s > 0
    without = prof.fit_linear([(1, 10), (2, 10), (1, 30)], [1.5, 2.5, 2.5], ("a", "b"), intercept=False)
    assert without.intercept_s == 0.0 and without.rates == pytest.approx((1.0, 20.0))
    with pytest.raises(ValueError, match="2 points cannot fit 3 coefficients"):
        prof.fit_linear([(1, 1), (2, 2)], [1.0, 2.0], ("a", "b"))
    with pytest.raises(ValueError, match="times must be positive"):
        prof.fit_linear([(1,), (2,), (3,)], [1.0, 0.0, 2.0], ("a",))
