"""Whole-training-step memory: the predicted peak bytes per device of a placed model's train step.

XLA's memory analysis of a compiled step (``compiled.memory_analysis()``) reports, per device,
arguments + outputs - donated (aliased) buffers + temporaries. The donated train state is counted
once: parameters, model statistics (BatchNorm running averages), optimizer state, and the input
batch. The temporaries are what the step creates; this module predicts them by simulating their
liveness over the plan graph (:mod:`jaxcnn.models.graph`), in execution order, forward then backward.
Each term is per device, from the placement's own memory model (:class:`jaxcnn.cost.MemoryCost`):

==========================  =================================================================
term                        bytes, and how long they live
==========================  =================================================================
saved activations           per convolution, from its forward until its backward: what its local
                            convolution read and its gradients read again (``MemoryCost.saved``: the
                            x window with its halo, or the gathered x panel, and a gathered kernel
                            panel) and, for a Conv+BatchNorm(+ReLU) block, two output blocks (the
                            centred BatchNorm input, float32 whatever the computation dtype, and
                            the ReLU output)
working set                 at one convolution at a time: its forward working set
                            (``forward_temp + layout_copy``: halo window, gathered panels, unreduced
                            partial outputs); in the backward pass the same less the gathered panels
                            it kept (``MemoryCost.kept_panels``: read, not gathered again), plus the
                            output and input gradient blocks; a max pooling window's expansion on
                            XLA:CPU (forward: an int32 iota of its input's size per dimension and
                            the pooled values with one int32 index per dimension; the indices and
                            the spatial dimensions' iotas are saved activations, kept until the
                            backward scatter into an input-sized gradient;
                            GPU and TPU select and scatter from the input itself)
kernel copies               the kernel as the input-gradient convolution reads it
                            (``MemoryCost.kernel_read``, rewritten reversed / transposed by XLA),
                            made once the backward pass starts and freed at that layer's backward
                            (none for the first layer: no input gradient)
parameter gradients         one per parameter (float32), sharded like it, from its layer's backward
                            until the optimizer update at the end of the step
==========================  =================================================================

Sizes are those of each tensor's dtype (docs/mixed_precision.md): activations, windows and panels in
the computation dtype, parameters, their gradients and BatchNorm's centred input in float32. XLA:CPU
computes a bfloat16 step's convolutions in float32: there the convolutions' saved operands and the
working sets are float32-sized (the BatchNorm outputs stay bfloat16).

The peak is the largest sum of these at any point (the state counted throughout). Calibrated on
XLA:CPU, where tests check it: within 15% of ``memory_analysis()`` (measured -1.0% to +12.7%,
docs/step_memory.md) for every model of ``tests/runner/test_whole_step.py`` (small CNN,
ResNet-18/50, VGG-16, MobileNetV2, 2-D and 3-D U-Nets, mixed and planned placements). What it
leaves out: XLA's fusion decisions (a fused elementwise producer may not need its own buffer),
scheduling (a different order changes what overlaps) and buffer packing (fragmentation); GPU and
TPU runtimes add their own workspaces (cuDNN, collectives).

:func:`step_memory` prices a model as placed; :func:`node_memory` is one placement's share, which the
planner (:func:`jaxcnn.planner.network.plan_graph`) weighs to keep the whole step under its cap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from jaxcnn.cost import Cost
from jaxcnn.dtypes import WIDENING_PLATFORMS
from jaxcnn.geometry import ConvGeometry
from jaxcnn.models.graph import Node, Pool
from jaxcnn.planner.step import graph_nodes

#: Optimizer state per parameter, in parameter copies (Adam's two moments; SGD with momentum: 1).
ADAM_COPIES = 2


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Predicted per-device bytes of one train step.

    Attributes:
      state: the donated train state and the input batch (XLA's arguments), counted throughout.
      peak: predicted peak bytes per device: ``state`` + the largest sum of temporaries.
      at: where the peak is (``"backward of layer2.0.conv1"``, ``"end of the backward pass"``).
      components: the temporaries live at the peak, by term (see the module docstring).
    """

    state: float
    peak: float
    at: str
    components: Mapping[str, float]


def _wide(itemsize: int) -> float:
    """Bytes per float32-or-wider element (parameters, BatchNorm's centred input) per computed
    element's byte: 2 for a 16-bit computation, else 1."""
    return max(itemsize, 4) / itemsize


def _kernel_bytes(choice: Cost, itemsize: int = 4) -> float:
    """The placement's local kernel block (its parameters on one device: float32, or the computation
    dtype where wider; ``choice`` priced in ``itemsize``-byte elements)."""
    return (choice.memory.inputs - choice.memory.x_block) * _wide(itemsize)


def param_bytes(choice: Cost, batchnorm: bool, itemsize: int = 4) -> float:
    """A placement's local parameters (and so its gradient): its kernel block, and with a BatchNorm
    after it the BatchNorm's float32 scale and bias."""
    return _kernel_bytes(choice, itemsize) + (2 * _channel_bytes(choice) if batchnorm else 0.0)


def _channel_bytes(choice: Cost, itemsize: int = 4) -> float:
    """One float32 per local output channel (a BatchNorm scale, bias, mean or variance)."""
    geom = choice.geom
    if geom is None:
        return 0.0
    parts = choice.layout.size("k") * choice.layout.size("c")  # a replica axis splits nothing
    return math.ceil(geom.channels_out / parts) * itemsize


def node_memory(
    choice: Cost, batchnorm: bool, optimizer_copies: int = ADAM_COPIES, itemsize: int = 4
) -> float:
    """One placement's share of the step's peak: everything of it that may be live at once (its
    parameters with their optimizer state, gradient and kernel copy, its saved activations and its
    working set). The planner's memory weight (not the peak: peaks of different layers do not add).
    ``itemsize``: bytes per element of the computation dtype ``choice`` was priced in."""
    kernel = _kernel_bytes(choice, itemsize)
    mem = choice.memory
    return (
        kernel * (2 + optimizer_copies)
        + mem.kernel_read
        + _saved(choice, batchnorm, itemsize)
        + mem.forward_temp
        + mem.layout_copy
    )


def _saved(choice: Cost, batchnorm: bool, itemsize: int = 4, scale: float = 1.0) -> float:
    """Activations one placement keeps from its forward to its backward pass (module docstring): the
    convolution's operands (``scale``: bytes held per computed byte, :func:`_computed`: XLA:CPU keeps
    the float32 operands it converts a bfloat16 convolution's to), and with a BatchNorm its output (in
    the computation dtype) and its centred input (float32, its statistics' dtype, on every platform)."""
    mem = choice.memory
    return mem.saved * scale + ((1 + _wide(itemsize)) * mem.output if batchnorm else 0.0)


def _computed(itemsize: int, platform: str) -> float:
    """Bytes a platform holds per byte of a computed ``itemsize``-byte element: XLA:CPU computes
    16-bit floats in float32 (its float normalization converts a bfloat16 convolution's or
    elementwise operation's operands; a bfloat16 step's compiled convolutions are all f32), so its
    temporaries are float32-sized: 2 for a 16-bit computation there, else 1."""
    return _wide(itemsize) if platform in WIDENING_PLATFORMS else 1.0


def _max_pool(
    pool: Pool, y_shape: Sequence[int], block: float, itemsize: int, platform: str
) -> tuple[float, float, float]:
    """(forward working set, saved, backward working set) of a max pooling window over a ``block``
    bytes input block. XLA:CPU expands its select-and-scatter gradient: in the forward pass one int32
    iota of the input's size per dimension and a variadic reduce-window giving the pooled values and
    one int32 index per dimension, whose indices are kept for the backward scatter into an input-sized
    gradient; XLA keeps the spatial dimensions' iotas until then too (measured in its live ranges).
    GPU and TPU select and scatter from the input itself. Of the ``ndim`` iotas, the batch and
    channel ones are the forward working set, the spatial ones saved."""
    kept = 1.0
    for size in y_shape[1:-1]:
        out = (size - pool.window) // pool.stride + 1 if pool.padding == "VALID" else -(-size // pool.stride)
        kept *= out / size
    pooled = block * kept
    if platform != "cpu":
        return pooled, 0.0, block
    ndim = len(y_shape)
    index = 4 / itemsize  # int32 bytes per activation byte
    indices = ndim * pooled * index
    spatial_iotas = (ndim - 2) * block * index
    return 2 * block * index + pooled + indices, indices + spatial_iotas, indices + block


def step_memory(
    graph: Sequence[Node],
    layers: Mapping[str, ConvGeometry],
    choices: Mapping[str, Cost],
    *,
    state_bytes: float | None = None,
    batch_bytes: float = 0.0,
    optimizer_copies: int = ADAM_COPIES,
    platform: str = "cpu",
    itemsize: int = 4,
) -> StepMemory:
    """Predicts the peak memory per device of one train step of a model placed by ``choices``.

    Args:
      graph: the model's ``plan_graph``.
      layers: ``{conv name: geometry}`` for the run's batch.
      choices: ``{conv name: jaxcnn.cost.predict(...)}`` of the placements the model runs (the first
        layer's predicted without an input gradient).
      state_bytes: the train state and batch per device when known (``jaxcnn.runner.fit``'s
        footprint without its gradients); else estimated from the placements: each layer's kernel
        block and its BatchNorm's four per-channel vectors, ``optimizer_copies`` more of the
        kernel block and of its scale and bias, plus ``batch_bytes``.
      batch_bytes: the input batch per device (with ``state_bytes=None`` only).
      optimizer_copies: optimizer state per parameter, in parameter copies (Adam: 2).
      platform: ``"cpu"`` (max-pooling gradients expanded into index buffers; 16-bit floats computed
        in float32) or ``"gpu"`` / ``"tpu"``.
      itemsize: bytes per element of the computation dtype the placements were priced in (max
        pooling's int32 indices, the float32 parameters, gradients and BatchNorm inputs are priced
        against it).
    """
    nodes = graph_nodes(graph)
    names = nodes.names
    pools = nodes.pools
    first = names[0] if names else None
    if state_bytes is None:
        state_bytes = batch_bytes + sum(
            _kernel_bytes(c, itemsize) * (1 + optimizer_copies)
            + (_channel_bytes(c) * (4 + 2 * optimizer_copies) if nodes.batchnorm(n) else 0.0)
            for n, c in choices.items()
        )
    scale = _computed(itemsize, platform)
    saved, kernels, grads, forward_work, backward_work = {}, {}, {}, {}, {}
    for name in names:
        c = choices[name]
        mem = c.memory
        saved[name] = _saved(c, nodes.batchnorm(name), itemsize, scale)
        grads[name] = param_bytes(c, nodes.batchnorm(name), itemsize)
        kernels[name] = 0.0 if name == first else mem.kernel_read * scale
        pool_fwd = pool_saved = pool_bwd = 0.0
        if name in pools and pools[name].kind == "max":
            pool_fwd, pool_saved, pool_bwd = _max_pool(
                pools[name], layers[name].y_shape, mem.output * scale, itemsize * scale, platform
            )
        saved[name] += pool_saved
        forward_work[name] = (mem.forward_temp + mem.layout_copy) * scale + pool_fwd
        dx = 0.0 if name == first else mem.x_block
        backward_work[name] = (mem.forward_temp - mem.kept_panels + mem.output + dx) * scale + pool_bwd
    best = (0.0, "start of the step", {})
    live = 0.0
    for name in names:  # forward: saved activations accumulate
        live += saved[name]
        total = live + forward_work[name]
        if total > best[0]:
            best = (
                total,
                f"forward of {name}",
                {"saved activations": live, "working set": forward_work[name]},
            )
    copies = sum(kernels.values())
    done = 0.0  # parameter gradients made so far
    for name in reversed(names):
        parts = {
            "saved activations": live,
            "kernel copies": copies,
            "parameter gradients": done + grads[name],
            "working set": backward_work[name],
        }
        total = sum(parts.values())
        if total > best[0]:
            best = (total, f"backward of {name}", parts)
        live -= saved[name]
        copies -= kernels[name]
        done += grads[name]
    if done > best[0]:
        best = (done, "end of the backward pass", {"parameter gradients": done})
    return StepMemory(float(state_bytes), float(state_bytes + best[0]), best[1], best[2])
