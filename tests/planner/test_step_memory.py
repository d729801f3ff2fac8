"""The whole-step memory model (jaxcnn.planner.step_memory) against byte counts made by hand, and the
planner's whole-step cap.

The hand counts start from each tensor's per-device shape and dtype (written out below) and the
liveness rules of the module docstring (what a train step keeps from a layer's forward to its
backward pass, and what it holds while computing one layer); none reads the model's own fields.
Against XLA's ``memory_analysis()`` the model is checked in tests/runner/test_whole_step.py (every
model's compiled step, within 15%)."""

from __future__ import annotations

import pytest

from jaxcnn.cost import predict
from jaxcnn.geometry import conv_geometry
from jaxcnn.models.graph import Conv, Head, Pool
from jaxcnn.planner.plan import NoPlanError
from jaxcnn.planner.step_memory import node_memory, step_memory

F32 = 4  # bytes of a float32: activations, kernels, BatchNorm vectors
I32 = 4  # bytes of an int32: XLA:CPU's max-pooling indices and iotas

# a → 2x2/2 max pool → b → global mean → head, on 8 devices, float32
A = conv_geometry((8, 8, 8, 4), (3, 3, 4, 16), 1, "SAME")
B = conv_geometry((8, 4, 4, 16), (3, 3, 16, 16), 1, "SAME")
HEAD = conv_geometry((8, 1, 1, 16), (1, 1, 16, 10), 1, "VALID")

# Per device, shape x bytes. a: data n=8, one image per device, the kernel replicated.
A_X = (1 * 8 * 8 * 4) * F32  # x block (1, 8, 8, 4)
A_KERNEL = (3 * 3 * 4 * 16) * F32  # kernel (3, 3, 4, 16)
A_Y = (1 * 8 * 8 * 16) * F32  # y block (1, 8, 8, 16)
A_Y_ELEMS = 1 * 8 * 8 * 16  # elements of the max pool's input (a's y block)
A_POOLED_ELEMS = 1 * 4 * 4 * 16  # elements of its output (1, 4, 4, 16)
A_CHANNEL = 16 * F32  # one BatchNorm vector: 16 channels
# b: filter n=2 k=4: 4 images per device, output channels split 4 ways, x gathered over k.
B_X_GATHERED = (4 * 4 * 4 * 16) * F32  # x gathered over k (4, 4, 4, 16)
B_KERNEL = (3 * 3 * 16 * (16 // 4)) * F32  # kernel block (3, 3, 16, 4)
B_Y = (4 * 4 * 4 * (16 // 4)) * F32  # y block (4, 4, 4, 4)
B_CHANNEL = (16 // 4) * F32  # one BatchNorm vector: the 4 local channels
# head: data n=8 on the globally pooled (8, 1, 1, 16) features, no BatchNorm.
HEAD_KERNEL = (1 * 1 * 16 * 10) * F32  # kernel (1, 1, 16, 10), replicated


def _two_layers(b_algorithm: str = "filter", b_grid=None):
    graph = (Conv("a"), Pool("a", 2, 2, "VALID", "max"), Conv("b"), Head("head"))
    layers = {"a": A, "b": B, "head": HEAD}
    choices = {
        "a": predict(A, "data", {"n": 8}, input_grad=False),
        "b": predict(B, b_algorithm, b_grid or {"n": 2, "k": 4}),
        "head": predict(HEAD, "data", {"n": 8}),
    }
    return graph, layers, choices


def test_peak_by_hand():
    """On XLA:CPU the peak is a's backward (the last of the backward pass): the max pool's index
    buffers make a's saved activations the largest, and all three parameter gradients are live by
    then."""
    graph, layers, choices = _two_layers()
    # Live at a's backward: a's saved activations (b's and head's were freed at their backward)
    saved_a = (
        A_X  # a's x block, read again by the kernel gradient
        + 2 * A_Y  # BatchNorm's centred input and the ReLU output, each a y block
        + 4 * A_POOLED_ELEMS * I32  # max-pool indices: one int32 per pooled value per dimension (rank 4)
        + 2 * A_Y_ELEMS * I32  # the two spatial dimensions' iotas, input-sized int32
    )
    # every parameter gradient, kept until the optimizer update (BatchNorm: scale and bias)
    gradients = HEAD_KERNEL + (B_KERNEL + 2 * B_CHANNEL) + (A_KERNEL + 2 * A_CHANNEL)
    # a's backward working set: the cotangent of its y block, the select-and-scatter's indices and the
    # input-sized gradient it scatters into; no dx (first layer) and so no kernel copy
    working = A_Y + 4 * A_POOLED_ELEMS * I32 + A_Y_ELEMS * F32
    # The other candidates are smaller: b's forward holds a's and b's saved activations and b's gathered
    # x panel twice (working set and its layout copy): 21504 + 6144 + 8192 = 35840 < 39200.
    got = step_memory(graph, layers, choices, state_bytes=1000.0)
    assert got.state == 1000.0
    assert got.at == "backward of a"
    assert got.components == {
        "saved activations": saved_a,
        "kernel copies": 0.0,
        "parameter gradients": gradients,
        "working set": working,
    }
    assert got.peak == 1000.0 + saved_a + gradients + working == 1000.0 + 39200


def test_peak_by_hand_without_pool_buffers_on_gpu():
    """GPU / TPU select and scatter from the input itself: without index buffers and iotas the peak
    moves to b's forward."""
    graph, layers, choices = _two_layers()
    saved_a = A_X + 2 * A_Y  # x block for the kernel gradient; BatchNorm's centred input, ReLU output
    saved_b = B_X_GATHERED + 2 * B_Y  # the gathered x panel both gradients read; BatchNorm's two
    # b's forward working set: the gathered x panel and the layout copy the model adds for it (an
    # all-gather along the major dimension, then transposed)
    working = B_X_GATHERED + B_X_GATHERED
    got = step_memory(graph, layers, choices, state_bytes=0.0, platform="gpu")
    assert got.at == "forward of b"
    assert got.components == {"saved activations": saved_a + saved_b, "working set": working}
    assert got.peak == saved_a + saved_b + working == 23552


def test_peak_by_hand_with_a_kernel_copy():
    """Data-parallel a → 2x2 average pool → b: the peak is b's backward, where b's kernel is also held
    as its input-gradient convolution reads it (reversed and transposed)."""
    graph = (Conv("a"), Pool("a", 2, 2, "VALID", "avg"), Conv("b"))
    choices = {"a": predict(A, "data", {"n": 8}, input_grad=False), "b": predict(B, "data", {"n": 8})}
    b_x = (1 * 4 * 4 * 16) * F32  # b's x block (1, 4, 4, 16): the average pool's output
    b_y = (1 * 4 * 4 * 16) * F32  # b's y block (1, 4, 4, 16)
    b_kernel = (3 * 3 * 16 * 16) * F32  # b's kernel, replicated
    b_channel = 16 * F32
    # the model keeps no buffers for average pooling (its output is b's x block, counted as b's)
    saved = (A_X + 2 * A_Y) + (b_x + 2 * b_y)  # each layer's x and BatchNorm's two y-sized blocks
    copies = b_kernel  # b's kernel as its dx convolution reads it; a (first layer) has no dx
    gradients = b_kernel + 2 * b_channel  # b's kernel, BatchNorm scale and bias; a's come later
    working = b_y + b_x  # the cotangents of b's y (in) and x (out)
    # a's backward, the next largest: a's saved, all gradients, a's y cotangent:
    # 9216 + 9344 + 2432 + 4096 = 25088 < 32896
    got = step_memory(graph, {"a": A, "b": B}, choices, state_bytes=0.0)
    assert got.at == "backward of b"
    assert got.components == {
        "saved activations": saved,
        "kernel copies": copies,
        "parameter gradients": gradients,
        "working set": working,
    }
    assert got.peak == saved + copies + gradients + working == 32896


def test_peak_by_hand_at_a_max_pool():
    """One 1x1 convolution (a tiny kernel: few gradient bytes) and a 2x2/2 max pool: on XLA:CPU the
    peak is the forward, where the pool's reduce-window holds two more input-sized iotas; on GPU the
    backward's scatter into an input-sized gradient."""
    geom = conv_geometry((8, 8, 8, 4), (1, 1, 4, 16), 1, "VALID")
    graph = (Conv("a"), Pool("a", 2, 2, "VALID", "max"))
    choices = {"a": predict(geom, "data", {"n": 8}, input_grad=False)}
    # per device (data n=8): x (1, 8, 8, 4), y (1, 8, 8, 16), pooled (1, 4, 4, 16), kernel (1, 1, 4, 16)
    gradients = (1 * 1 * 4 * 16) * F32 + 2 * A_CHANNEL  # kernel, BatchNorm scale and bias
    bn_saved = A_X + 2 * A_Y  # x for the kernel gradient; BatchNorm's centred input, ReLU output
    pool_saved = 4 * A_POOLED_ELEMS * I32 + 2 * A_Y_ELEMS * I32  # indices; the spatial iotas
    # forward: the batch and channel iotas (input-sized int32), the pooled values and their indices
    forward = 2 * A_Y_ELEMS * I32 + A_POOLED_ELEMS * F32 + 4 * A_POOLED_ELEMS * I32
    # backward: y's cotangent, the indices and the input-sized gradient they scatter into:
    # 21504 + 384 + 12288 = 34176 < 34816
    cpu = step_memory(graph, {"a": geom}, choices, state_bytes=0.0)
    assert cpu.at == "forward of a"
    assert cpu.components == {"saved activations": bn_saved + pool_saved, "working set": forward}
    assert cpu.peak == bn_saved + pool_saved + forward == 34816
    # GPU: the pooled values alone forward (9216 + 1024); backward y's cotangent and the scattered
    # gradient, both y blocks
    gpu = step_memory(graph, {"a": geom}, choices, state_bytes=0.0, platform="gpu")
    assert gpu.at == "backward of a"
    assert gpu.components == {
        "saved activations": bn_saved,
        "kernel copies": 0.0,
        "parameter gradients": gradients,
        "working set": A_Y + A_Y_ELEMS * F32,
    }
    assert gpu.peak == bn_saved + gradients + A_Y + A_Y_ELEMS * F32 == 17792


def test_state_estimated_from_placements():
    graph, layers, choices = _two_layers()
    kernels = A_KERNEL + B_KERNEL + HEAD_KERNEL  # each device's kernel blocks
    channels = A_CHANNEL + B_CHANNEL  # one per-channel vector of each BatchNorm (the head has none)
    # Adam: parameters + 2 moments of each kernel; BatchNorm: scale, bias, running mean and variance,
    # and 2 moments of the scale and of the bias
    got = step_memory(graph, layers, choices, batch_bytes=512.0)
    assert got.state == 512.0 + 3 * kernels + (4 + 2 * 2) * channels == 16896
    # plain SGD (no optimizer state): the parameters and BatchNorm's four vectors
    sgd = step_memory(graph, layers, choices, batch_bytes=512.0, optimizer_copies=0)
    assert sgd.state == 512.0 + kernels + 4 * channels == 6080


def test_node_memory_grows_with_what_a_placement_keeps():
    data = predict(B, "data", {"n": 8})
    filt = predict(B, "filter", {"k": 8})
    # data n=8: x (1, 4, 4, 16) and y (1, 4, 4, 16) blocks, the kernel (3, 3, 16, 16) replicated: kernel,
    # gradient, two Adam moments and the copy its dx convolution reads; saved: the x block and, with a
    # BatchNorm, two y blocks; nothing gathered
    d_x, d_y, d_kernel = (1 * 4 * 4 * 16) * F32, (1 * 4 * 4 * 16) * F32, (3 * 3 * 16 * 16) * F32
    assert node_memory(data, True) == 5 * d_kernel + d_x + 2 * d_y == 49152
    assert node_memory(data, False) == 5 * d_kernel + d_x == 47104
    # filter k=8: kernel (3, 3, 16, 2), y (8, 4, 4, 2); x gathered to (8, 4, 4, 16), saved for the
    # gradients, and in the forward working set with its layout copy; the kernel x 5 as for data (the
    # block is what the convolution reads)
    f_gathered, f_y, f_kernel = (8 * 4 * 4 * 16) * F32, (8 * 4 * 4 * 2) * F32, (3 * 3 * 16 * 2) * F32
    assert node_memory(filt, True) == 5 * f_kernel + (f_gathered + 2 * f_y) + 2 * f_gathered == 32384
    # data replicates the kernel, filter splits it 8 ways
    assert node_memory(data, True) > node_memory(filt, True)


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
