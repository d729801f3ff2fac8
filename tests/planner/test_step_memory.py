"""The whole-step memory model (jaxcnn.planner.step_memory) by hand, and the planner's whole-step cap.

Against XLA's ``memory_analysis()`` it is checked in tests/runner/test_whole_step.py (every model's
compiled step, within 15%)."""

from __future__ import annotations

import pytest

from jaxcnn.cost import predict
from jaxcnn.geometry import conv_geometry
from jaxcnn.models.graph import Conv, Pool
from jaxcnn.planner.plan import NoPlanError
from jaxcnn.planner.step_memory import node_memory, step_memory

A = conv_geometry((8, 8, 8, 4), (3, 3, 4, 16), 1, "SAME")
B = conv_geometry((8, 4, 4, 16), (3, 3, 16, 16), 1, "SAME")
HEAD = conv_geometry((8, 1, 1, 16), (1, 1, 16, 10), 1, "VALID")


def _two_layers(b_algorithm: str = "filter", b_grid=None):
    graph = (Conv("a"), Pool("a", 2, 2, "VALID", "max"), Conv("b"), Conv("head"))
    layers = {"a": A, "b": B, "head": HEAD}
    choices = {
        "a": predict(A, "data", {"n": 8}, input_grad=False),
        "b": predict(B, b_algorithm, b_grid or {"n": 2, "k": 4}),
        "head": predict(HEAD, "data", {"n": 8}),
    }
    return graph, layers, choices


def test_peak_by_hand():
    graph, layers, choices = _two_layers()
    a, b, head = (choices[n].memory for n in ("a", "b", "head"))
    kernel = {n: c.memory.inputs - c.memory.x_block for n, c in choices.items()}
    # conv a's 2x2 max pool on XLA:CPU (float32, rank 4): 4 int32 indices per pooled value, kept with
    # the 2 spatial iotas of the input's size; forward 2 iotas + pooled values + indices; backward the
    # indices and the input-sized gradient
    pooled = a.output / 4
    saved = {
        "a": a.saved + 2 * a.output + 4 * pooled + 2 * a.output,
        "b": b.saved + 2 * b.output,
        "head": head.saved,
    }
    forward = {n: c.memory.forward_temp + c.memory.layout_copy for n, c in choices.items()}
    forward["a"] += 2 * a.output + pooled + 4 * pooled
    grads = {n: kernel[n] + (2 * 4 * 16 / (4 if n == "b" else 1) if n != "head" else 0) for n in choices}
    backward = {
        "head": head.forward_temp - head.kept_panels + head.output + head.x_block,
        "b": b.forward_temp - b.kept_panels + b.output + b.x_block,
        "a": a.forward_temp - a.kept_panels + a.output + 4 * pooled + a.output,  # no dx (first layer)
    }
    copies = {"head": head.kernel_read, "b": b.kernel_read, "a": 0.0}
    events = [
        saved["a"] + forward["a"],
        saved["a"] + saved["b"] + forward["b"],
        sum(saved.values()) + forward["head"],
    ]
    live, left, done = sum(saved.values()), sum(copies.values()), 0.0
    for name in ("head", "b", "a"):
        events.append(live + left + done + grads[name] + backward[name])
        live, left, done = live - saved[name], left - copies[name], done + grads[name]
    events.append(done)
    got = step_memory(graph, layers, choices, state_bytes=1000.0)
    assert got.state == 1000.0
    assert got.peak == pytest.approx(1000.0 + max(events))
    assert sum(got.components.values()) == pytest.approx(max(events))
    assert got.at.startswith(("forward of", "backward of", "end of"))


def test_state_estimated_from_placements_and_platform():
    graph, layers, choices = _two_layers()
    kernels = sum(c.memory.inputs - c.memory.x_block for c in choices.values())
    channels = 4 * (16 + 16 / 4)  # the two BatchNorms' float32 per local channel
    got = step_memory(graph, layers, choices, batch_bytes=512.0)
    assert got.state == pytest.approx(512.0 + 3 * kernels + channels * (4 + 2 * 2))
    sgd = step_memory(graph, layers, choices, batch_bytes=512.0, optimizer_copies=0)
    assert sgd.state == pytest.approx(512.0 + kernels + channels * 4)
    # a GPU / TPU selects and scatters from the input itself: no index buffers or iotas
    gpu = step_memory(graph, layers, choices, state_bytes=0.0, platform="gpu")
    assert gpu.peak < got.peak - got.state


def test_node_memory_grows_with_what_a_placement_keeps():
    data = predict(B, "data", {"n": 8})
    filt = predict(B, "filter", {"k": 8})
    # data replicates the kernel (parameters, two Adam moments, gradient, copy); filter splits it 8 ways
    assert node_memory(data, True) > node_memory(filt, True)
    assert node_memory(data, True) - node_memory(data, False) == 2 * data.memory.output


def test_planner_keeps_the_whole_step_under_its_cap():
    from jaxcnn.planner.whole_step import whole_step

    free = whole_step("small_cnn", 32, 8, 8, float("inf"), "float32", 10)
    peak = free["predicted_memory_bytes_per_device"]
    capped = whole_step("small_cnn", 32, 8, 8, 0.8 * peak, "float32", 10)
    assert capped["predicted_memory_bytes_per_device"] <= 0.8 * peak
    moved = "predicted_comm_bytes_per_step_max_device"
    assert capped[moved] >= free[moved]
    with pytest.raises(NoPlanError, match=r"whole train step needs at least .* per device") as err:
        whole_step("small_cnn", 32, 8, 8, 0.3 * peak, "float32", 10)
    assert 0.3 * peak < err.value.min_memory_bytes <= 0.8 * peak
