"""Collective calibration on the 8 test devices: received bytes as the cost model counts them, timings,
and the α-β fit."""

from __future__ import annotations

import jax
import pytest

from jaxcnn.timing import collectives as coll
from jaxcnn.timing.profile import COLLECTIVE_KINDS


def test_received_bytes_follow_the_cost_models_convention():
    m = 1024  # float32 per device
    assert coll.received_bytes("all-gather", 4, m) == 3 * 4096
    assert coll.received_bytes("reduce-scatter", 4, m) == 3 * 4096  # of a 4·m buffer
    assert coll.received_bytes("all-reduce", 4, m) == 2 * 4096 * 3 / 4
    assert coll.received_bytes("all-to-all", 4, m) == 4096 * 3 / 4
    assert coll.received_bytes("collective-permute", 4, m) == 4096


@pytest.mark.parametrize("kind", COLLECTIVE_KINDS)
def test_every_kind_times_on_every_device_at_once(kind):
    seconds = coll.measure_collective(kind, 4, 256, repeats=1)
    assert 0 < seconds < 1


def test_bad_groups_and_sizes_are_named():
    with pytest.raises(ValueError, match="group 3 must be >= 2 and divide the 8 devices"):
        coll.measure_collective("all-gather", 3, 96)
    with pytest.raises(ValueError, match="elements 6 must be a positive multiple of the group 4"):
        coll.measure_collective("all-to-all", 4, 6)


def test_fit_recovers_alpha_and_beta():
    points = [
        (g, b, 3e-6 * coll.latency_steps("all-reduce", g) + b / 4e9) for g in (2, 8) for b in (1e4, 1e6)
    ]
    fit = coll.fit_collective("all-reduce", points)
    assert fit.alpha_s == pytest.approx(3e-6, rel=1e-6)
    assert fit.beta_bytes_per_s == pytest.approx(4e9, rel=1e-6)
    assert fit.points == tuple(points)


def test_calibrate_collectives_fits_each_kind_it_measures():
    seen = []
    fits = coll.calibrate_collectives((2, 8), (256, 4096), kinds=("all-gather", "collective-permute"),
                                      repeats=1, progress=seen.append)  # fmt: skip
    assert set(fits) == {"all-gather", "collective-permute"} and len(seen) == 8
    assert seen[0] == "all-gather over 2 devices, 1,024 B per device"
    for fit in fits.values():
        assert fit.alpha_s >= 0 and fit.beta_bytes_per_s > 0 and len(fit.points) == 4
    assert jax.device_count() == 8
