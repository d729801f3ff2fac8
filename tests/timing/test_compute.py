"""Local compute calibration on the 8 test devices: convolution features, timings of the three passes
and of memory-bound work, and the fits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.timing import compute
from jaxcnn.timing.compute import ConvShape, conv_features
from jaxcnn.timing.profile import CONV_PASSES, fit_linear

FAST = {"max_chain": 8, "target_s": 0.01}  # short chains: these tests check the plumbing, not the rates


@pytest.mark.parametrize(
    "shape, macs, arrays",
    [
        # N·Ho·Wo·K·(C/G)·R·S; x + w + y elements
        (ConvShape(2, 8, 8, 3, 16), 2 * 8 * 8 * 16 * 3 * 9, 2 * 8 * 8 * 3 + 3 * 3 * 3 * 16 + 2 * 8 * 8 * 16),
        (
            ConvShape(1, 7, 7, 4, 8, 3, 2),
            1 * 4 * 4 * 8 * 4 * 9,
            7 * 7 * 4 + 3 * 3 * 4 * 8 + 4 * 4 * 8,
        ),  # Ho = 4
        (
            ConvShape(1, 4, 4, 8, 8, 3, 1, 8),
            4 * 4 * 8 * 1 * 9,
            4 * 4 * 8 + 3 * 3 * 1 * 8 + 4 * 4 * 8,
        ),  # depthwise
        (ConvShape(2, 6, 6, 4, 4, 1, 2), 2 * 3 * 3 * 4 * 4, 2 * 6 * 6 * 4 + 4 * 4 + 2 * 3 * 3 * 4),
    ],
)
def test_conv_features_count_macs_and_bytes_by_hand(shape, macs, arrays):
    for pass_name in CONV_PASSES:  # every pass reads and writes the same three arrays
        assert conv_features(shape, pass_name) == (macs, 4 * arrays)
    y = jax.eval_shape(
        lambda x, w: compute._conv(shape, x, w),
        jax.ShapeDtypeStruct(shape.input_shape, jnp.float32),
        jax.ShapeDtypeStruct(shape.kernel_shape, jnp.float32),
    )
    assert y.shape == shape.output_shape  # "SAME": Ho = ⌈H/σ⌉, as lax computes it


def test_bad_shapes_and_passes_are_named():
    with pytest.raises(ValueError, match="groups 3 must divide the in"):
        ConvShape(1, 4, 4, 8, 8, 3, 1, 3)
    with pytest.raises(ValueError, match="kernel must be a positive int"):
        ConvShape(1, 4, 4, 8, 8, 0)
    with pytest.raises(ValueError, match="unknown convolution pass 'backward'"):
        conv_features(ConvShape(1, 4, 4, 8, 8), "backward")
    with pytest.raises(ValueError, match="unknown convolution pass"):
        compute.measure_conv(ConvShape(1, 4, 4, 8, 8), "backward")


def test_the_passes_compute_the_vjp():
    shape = ConvShape(2, 7, 7, 4, 6, 3, 2)
    keys = jax.random.split(jax.random.key(0), 3)
    shapes = (shape.input_shape, shape.kernel_shape, shape.output_shape)
    x, w, dy = (jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True))
    y, vjp = jax.vjp(lambda x, w: compute._conv(shape, x, w), x, w)
    dx, dw = vjp(dy)
    for pass_name, args, expected in (("forward", (x, w), y), ("input_grad", (dy, w), dx),
                                      ("kernel_grad", (x, dy), dw)):  # fmt: skip
        apply, _ = compute._pass(shape, pass_name)
        np.testing.assert_allclose(apply(*args), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_each_pass_times_on_every_device_at_once(pass_name):
    seconds = compute.measure_conv(ConvShape(1, 4, 4, 4, 8), pass_name, repeats=1, **FAST)
    assert math.isfinite(seconds) and 0 < seconds < 1


def test_a_conv_of_512x_the_macs_is_slower():
    # 512x the MACs (~19 MMAC, milliseconds on any CPU, against microseconds): a shared machine's noise
    # (back-to-back timings of one shape vary by ±30% here, a 64x pair once timed inverted) cannot
    # invert it; the medians of three alternating measurements each.
    small, big = ConvShape(1, 4, 4, 16, 16), ConvShape(8, 32, 32, 16, 16)
    assert conv_features(big, "forward")[0] == 512 * conv_features(small, "forward")[0]
    times: dict[ConvShape, list[float]] = {small: [], big: []}
    for _ in range(3):
        for shape in (small, big):
            times[shape].append(compute.measure_conv(shape, "forward", repeats=1, **FAST))
    t_small, t_big = (float(np.median(times[s])) for s in (small, big))
    assert t_big > t_small, times
    assert t_big > conv_features(big, "forward")[0] / 1e11  # computed, not skipped: no CPU does 100 GMAC/s


def test_memory_bound_chain_times():
    seconds = compute.measure_memory(1 << 12, repeats=1, target_s=0.01)
    assert math.isfinite(seconds) and 0 < seconds < 1
    assert compute.memory_bytes(1 << 12) == 2 * 4 * 4096
    with pytest.raises(ValueError, match="elements must be >= 1"):
        compute.measure_memory(0)


def test_fit_recovers_the_rates_of_exact_data():
    a, rate, bandwidth = 2e-5, 5e9, 2e9
    features = [conv_features(shape, "forward") for shape in compute.CONV_SHAPES]
    seconds = [a + m / rate + b / bandwidth for m, b in features]
    fit = fit_linear(features, seconds, ("macs", "bytes"))
    assert fit.intercept_s == pytest.approx(a, rel=1e-6)
    assert fit.rates == pytest.approx((rate, bandwidth), rel=1e-6)
    assert fit.seconds(*features[0]) == pytest.approx(seconds[0], rel=1e-9)


def test_shape_sets():
    full, quick = compute.conv_shapes(), compute.conv_shapes(quick=True)
    assert full == compute.CONV_SHAPES and 12 <= len(full) <= 16 and set(quick) < set(full)
    assert any(s.groups == s.in_channels == s.out_channels > 1 for s in full)  # a depthwise case
    assert {s.kernel for s in full} == {1, 3, 7} and {s.stride for s in full} == {1, 2}
    assert compute.measurement_count() == 3 * len(full) + len(compute.memory_elements())


def test_quick_calibration_fits_every_pass_and_memory(monkeypatch):
    monkeypatch.setattr(compute, "QUICK_MAX_CONV_CHAIN", 2)  # the plumbing, not the rates: fewer to compile
    seen: list[str] = []
    conv, memory = compute.calibrate_compute(quick=True, repeats=1, progress=seen.append)
    assert len(seen) == compute.measurement_count(True)
    assert seen[0] == "convolution forward, 1×4×4×16 → 16, 3×3/1"
    assert set(conv) == set(CONV_PASSES)
    for fit in conv.values():
        assert fit.features == ("macs", "bytes") and len(fit.points) == len(compute.conv_shapes(True))
        assert fit.intercept_s >= 0 and all(r > 0 for r in fit.rates)
    assert memory.features == ("bytes",) and len(memory.points) == len(compute.memory_elements(True))
    assert memory.rates[0] > 0
