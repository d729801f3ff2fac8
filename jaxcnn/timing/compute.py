"""Calibrating local compute: the three passes of a convolution and memory-bound work, every device at once.

A step runs each device's local convolutions at the same time as every other device's, inside one
compiled program. So each measurement runs under ``shard_map`` on a one-axis mesh over all of
``jax.devices()``: every device holds its own local operands (an activation's global array is ``P``
local ones along the batch, sharded on it; the kernel is replicated) and applies the operation ``n``
times in a chain inside one program, and :func:`jaxcnn.timing.clock.seconds_per_iteration` takes the
slope between chains of 1 and ``n`` applications, so neither dispatch nor program launch is counted.
``n`` (2 ... 32; ``quick``: ... 8) is set by a probe of the 1-chain so that the ``n``-chain takes about
:data:`TARGET_SECONDS` (``quick``: :data:`QUICK_TARGET_SECONDS`).

**Convolutions** (:class:`ConvShape`: NHWC activations, HWIO kernels, ``"SAME"`` padding, float32,
default precision, ``lax.conv_general_dilated`` with dimension numbers ``("NHWC", "HWIO", "NHWC")``),
each pass its own program, as a step's VJP runs it (no primal recomputed):

============  ===================  ================================================
pass          one application      computed as
============  ===================  ================================================
forward       ``y = conv(x, w)``   the convolution
input_grad    ``dx`` from ``dy``   ``jax.linear_transpose`` of ``x ↦ conv(x, w)``
kernel_grad   ``dw`` from ``dy``   ``jax.linear_transpose`` of ``w ↦ conv(x, w)``
============  ===================  ================================================

The chain is unrolled (straight-line code, as in a step): inside a while loop XLA:CPU compiles the
gradient convolutions differently, up to 100× slower than in straight-line code. Its link: each of the
pass's two operands gets its first element set to the result's first element times :data:`LINK_SCALE`
(an in-place update of one element). So every application depends on the previous one's result (a
convolution is computed whole even where one element of it is read): none can be dead-code
eliminated, merged or hoisted, nor can the layout changes and the kernel flip of its operands, which a
step pays per use; and the link adds no work that grows with the shape, whatever the pass's output
shape. (An ``optimization_barrier`` tying the result to the operands does not work: XLA drops the
unused result, and the convolution with it.)

Features of a pass on one device's shape (``G`` the feature groups, ``Ho × Wo`` the output):

- MACs ``N·Ho·Wo·K·(C/G)·R·S``, the same count for the three passes (taps on the ``"SAME"`` zero
  padding included, as the backends compute them);
- bytes ``4·(N·H·W·C + R·S·(C/G)·K + N·Ho·Wo·K)``, what the pass reads and writes of x, w and y: the
  forward reads x, w and writes y; input_grad reads dy, w and writes dx; kernel_grad reads x, dy and
  writes dw.

:data:`CONV_SHAPES` (14) are per-device shapes like those the placements of small_cnn, ResNet-18 and
U-Net produce on 8-64 devices at small sizes: batch 1-16, spatial 4-32, 3-256 channels, 1×1, 3×3
(stride 1 and 2) and 7×7 stride-2 kernels, and one depthwise convolution (``G = C``); ``quick``
measures 6 of them (not the depthwise one, far off any affine model on XLA:CPU). Each pass is fitted
to ``t = a + MACs / R + bytes / B`` (:func:`jaxcnn.timing.profile.fit_linear`, with intercept): a
fitted efficiency model (affine in MACs and bytes) rather than an interpolated grid, so a planner
query is two divisions, for any shape.

**Memory-bound work** (BatchNorm, pooling, elementwise ops, the optimizer update): ``x ← 0.5·x + 0.5``
on a float32 buffer per device (64 KiB, 512 KiB, 2 MiB and 4 MiB; ``quick``: 64 KiB and 2 MiB),
chained in a while loop (unrolled, XLA would fuse the chain into one pass; a loop iteration is one
fused kernel), ``n`` a runtime argument (up to 256). Each application reads and writes the buffer,
``bytes = 2·4m`` for ``m`` elements, fitted to ``t = a + bytes / B``.

On 8 CPU devices of a 2-core machine a calibration takes about 35 s, ``quick`` about 7 s (mostly
compiling the chains).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.geometry import DIMENSION_NUMBERS
from jaxcnn.timing.clock import median_seconds, seconds_per_iteration
from jaxcnn.timing.profile import CONV_PASSES, LinearFit, check_conv_pass, fit_linear

ITEMSIZE = 4  # float32
AXIS = "d"
#: Seconds the longer chain of a measurement should take (from a probe of one application).
TARGET_SECONDS = 0.1
#: Most applications in one unrolled convolution chain (each is compiled) and in one memory-bound loop.
MAX_CONV_CHAIN = 32
MAX_MEMORY_CHAIN = 256
#: ``quick`` calibrations: shorter chains (fewer applications to compile).
QUICK_TARGET_SECONDS = 0.02
QUICK_MAX_CONV_CHAIN = 8
#: The link of a convolution chain: each operand's first element becomes the result's first element
#: times this (small enough that the values stay bounded).
LINK_SCALE = 1e-3


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One device's convolution: ``(N, H, W, C)`` input, ``(R, R, C/G, K)`` kernel, ``"SAME"`` padding.

    Attributes:
      batch: N.
      height: H.
      width: W.
      in_channels: C.
      out_channels: K.
      kernel: R (square kernels).
      stride: σ (both spatial dimensions).
      groups: G (``feature_group_count``; ``G = C = K`` is a depthwise convolution).
    """

    batch: int
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field.name} must be a positive int, got {value!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups {self.groups} must divide the in ({self.in_channels}) and out "
                f"({self.out_channels}) channels"
            )

    @property
    def out_height(self) -> int:
        """Ho = ⌈H/σ⌉ (``"SAME"`` padding)."""
        return -(-self.height // self.stride)

    @property
    def out_width(self) -> int:
        """Wo = ⌈W/σ⌉."""
        return -(-self.width // self.stride)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(N, H, W, C)``."""
        return (self.batch, self.height, self.width, self.in_channels)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """``(R, R, C/G, K)``."""
        return (self.kernel, self.kernel, self.in_channels // self.groups, self.out_channels)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """``(N, Ho, Wo, K)``."""
        return (self.batch, self.out_height, self.out_width, self.out_channels)

    def describe(self) -> str:
        """``N×H×W×C → K, R×R/σ`` (and ``depthwise`` or ``G groups``)."""
        text = (
            f"{self.batch}×{self.height}×{self.width}×{self.in_channels} → {self.out_channels}, "
            f"{self.kernel}×{self.kernel}/{self.stride}"
        )
        if self.groups > 1:
            depthwise = self.groups == self.in_channels == self.out_channels
            text += ", depthwise" if depthwise else f", {self.groups} groups"
        return text


#: Per-device shapes of placements on 8-64 devices (module docstring); ``quick`` keeps those marked.
_SHAPES: tuple[tuple[ConvShape, bool], ...] = (
    (ConvShape(1, 4, 4, 16, 16), True),  # a tiny layer: the intercept
    (ConvShape(16, 8, 8, 3, 32), False),  # small_cnn conv1 (batch split)
    (ConvShape(16, 8, 8, 32, 32), True),  # small_cnn conv2
    (ConvShape(8, 4, 4, 64, 64), False),  # small_cnn conv4, after the pool
    (ConvShape(2, 32, 32, 3, 64, 7, 2), True),  # ResNet-18 stem, 7×7 stride 2
    (ConvShape(2, 8, 16, 64, 64), False),  # ResNet-18 layer1, spatially split
    (ConvShape(4, 16, 16, 64, 128, 3, 2), True),  # ResNet-18 downsampling 3×3 stride 2
    (ConvShape(4, 16, 16, 64, 128, 1, 2), False),  # ResNet-18 projection 1×1 stride 2
    (ConvShape(1, 4, 4, 256, 256), True),  # ResNet-18 layer4-like, batch 1
    (ConvShape(4, 8, 8, 128, 32), False),  # output channels split 8 ways
    (ConvShape(16, 4, 4, 256, 256, 1), True),  # 1×1, wide channels
    (ConvShape(2, 32, 32, 16, 16), False),  # U-Net level 0
    (ConvShape(8, 16, 16, 64, 64), False),  # the largest: 75 M MACs
    (ConvShape(4, 16, 16, 64, 64, 3, 1, 64), False),  # depthwise
)
#: The shapes of a full calibration.
CONV_SHAPES: tuple[ConvShape, ...] = tuple(shape for shape, _ in _SHAPES)
#: Per-device float32 elements of the memory-bound measurements (64 KiB ... 4 MiB: the activations of
#: placements; a 16 MiB buffer timed at an impossible 0.9 TB/s over 8 devices here, so the chain
#: stops measuring memory traffic there).
MEMORY_ELEMENTS: tuple[int, ...] = (1 << 14, 1 << 17, 1 << 19, 1 << 20)
QUICK_MEMORY_ELEMENTS: tuple[int, ...] = (1 << 14, 1 << 19)


def conv_shapes(quick: bool = False) -> tuple[ConvShape, ...]:
    """The shapes a calibration measures (``quick``: 6 of them)."""
    return tuple(shape for shape, in_quick in _SHAPES if in_quick or not quick)


def memory_elements(quick: bool = False) -> tuple[int, ...]:
    """The per-device buffer lengths of the memory-bound measurements."""
    return QUICK_MEMORY_ELEMENTS if quick else MEMORY_ELEMENTS


def conv_features(shape: ConvShape, pass_name: str) -> tuple[float, float]:
    """``(MACs, bytes)`` of one ``pass_name`` on one device's ``shape`` (module docstring).

    Raises:
      ValueError: an unknown pass.
    """
    check_conv_pass(pass_name)
    n, ho, wo, k = shape.output_shape
    r, s, cg, _ = shape.kernel_shape
    macs = n * ho * wo * k * cg * r * s
    arrays = math.prod(shape.input_shape) + math.prod(shape.kernel_shape) + math.prod(shape.output_shape)
    return float(macs), float(ITEMSIZE * arrays)


def _mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def _seconds(
    build: Callable[[int], Callable[..., jax.Array]],
    args: tuple[jax.Array, ...],
    *,
    repeats: int,
    max_chain: int,
    target_s: float,
) -> float:
    """:func:`seconds_per_iteration` over chains of 1 and ``n`` applications, ``n`` such that the longer
    chain takes about ``target_s`` by a probe of the shorter one (2 ... ``max_chain``)."""
    probe = median_seconds(build(1), *args, repeats=1)
    n = max(2, min(max_chain, round(target_s / probe)))
    return seconds_per_iteration(build, args, counts=(1, n), repeats=repeats)


def _shard_map(
    mesh: Mesh, body: Callable[..., jax.Array], in_specs: tuple[P, ...]
) -> Callable[..., jax.Array]:
    # check_vma=False: the chain links make the replicated kernel differ per device (no collectives here).
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P(AXIS), check_vma=False))


def _conv(shape: ConvShape, x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        w,
        (shape.stride, shape.stride),
        "SAME",
        dimension_numbers=DIMENSION_NUMBERS[2],
        feature_group_count=shape.groups,
    )


def _pass(shape: ConvShape, pass_name: str) -> tuple[Callable[..., jax.Array], tuple[str, str]]:
    """One application of the pass on local operands, and its operands (``x``, ``w`` or ``y``)."""
    check_conv_pass(pass_name)
    if pass_name == "forward":
        return functools.partial(_conv, shape), ("x", "w")
    if pass_name == "input_grad":
        x_type = jax.ShapeDtypeStruct(shape.input_shape, jnp.float32)

        def input_grad(dy: jax.Array, w: jax.Array) -> jax.Array:
            return jax.linear_transpose(lambda x: _conv(shape, x, w), x_type)(dy)[0]

        return input_grad, ("y", "w")
    w_type = jax.ShapeDtypeStruct(shape.kernel_shape, jnp.float32)

    def kernel_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
        return jax.linear_transpose(lambda w: _conv(shape, x, w), w_type)(dy)[0]

    return kernel_grad, ("x", "y")


def measure_conv(
    shape: ConvShape,
    pass_name: str,
    repeats: int = 5,
    *,
    max_chain: int = MAX_CONV_CHAIN,
    target_s: float = TARGET_SECONDS,
) -> float:
    """Seconds of one ``pass_name`` of ``shape`` on every device at once (the module docstring), from
    chains of 1 and up to ``max_chain`` applications (the longer taking about ``target_s``).

    Raises:
      ValueError: an unknown pass.
    """
    apply, names = _pass(shape, pass_name)
    mesh = _mesh()
    local = {"x": shape.input_shape, "w": shape.kernel_shape, "y": shape.output_shape}
    operands, specs = [], []
    for name in names:
        spec = P() if name == "w" else P(AXIS)
        dims = local[name] if name == "w" else (mesh.size * local[name][0], *local[name][1:])
        operands.append(jax.device_put(np.full(dims, 0.5, np.float32), NamedSharding(mesh, spec)))
        specs.append(spec)

    @functools.cache
    def build(n: int) -> Callable[..., jax.Array]:
        def chain(*ops: jax.Array) -> jax.Array:
            for _ in range(n):  # unrolled: see the module docstring
                result = apply(*ops)
                link = result[(0,) * result.ndim] * LINK_SCALE
                ops = tuple(op.at[(0,) * op.ndim].set(link) for op in ops)
            return ops[0]

        return _shard_map(mesh, chain, tuple(specs))

    return _seconds(build, tuple(operands), repeats=repeats, max_chain=max_chain, target_s=target_s)


def memory_bytes(elements: int) -> float:
    """Bytes one application of the memory-bound chain reads and writes on ``elements`` per device."""
    return float(2 * ITEMSIZE * elements)


def measure_memory(elements: int, repeats: int = 5, *, target_s: float = TARGET_SECONDS) -> float:
    """Seconds of one ``x ← 0.5·x + 0.5`` over ``elements`` float32 per device, every device at once.

    Raises:
      ValueError: ``elements`` < 1.
    """
    if elements < 1:
        raise ValueError(f"elements must be >= 1, got {elements}")
    mesh = _mesh()
    replicated = NamedSharding(mesh, P())
    x = jax.device_put(np.ones((mesh.size * elements,), np.float32), NamedSharding(mesh, P(AXIS)))

    def loop(n: jax.Array, v: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, n, lambda _, u: u * 0.5 + 0.5, v)  # a while loop: see the docstring

    program = _shard_map(mesh, loop, (P(), P(AXIS)))

    @functools.cache
    def build(n: int) -> Callable[..., jax.Array]:
        return functools.partial(program, jax.device_put(np.int32(n), replicated))

    return _seconds(build, (x,), repeats=repeats, max_chain=MAX_MEMORY_CHAIN, target_s=target_s)


def measurement_count(quick: bool = False) -> int:
    """How many timings :func:`calibrate_compute` takes."""
    return len(conv_shapes(quick)) * len(CONV_PASSES) + len(memory_elements(quick))


def calibrate_compute(
    quick: bool = False,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, LinearFit], LinearFit]:
    """Every pass timed on every shape, and the memory-bound chain on every buffer size, and fitted.

    Args:
      quick: the quick shapes and sizes (:func:`conv_shapes`, :func:`memory_elements`).
      repeats: runs per median.
      progress: called with a short description before each measurement.

    Returns:
      ``({pass: fit over ("macs", "bytes")}, fit over ("bytes",))``.
    """
    chain = QUICK_MAX_CONV_CHAIN if quick else MAX_CONV_CHAIN
    target = QUICK_TARGET_SECONDS if quick else TARGET_SECONDS
    conv = {}
    for pass_name in CONV_PASSES:
        features, seconds = [], []
        for shape in conv_shapes(quick):
            if progress is not None:
                progress(f"convolution {pass_name}, {shape.describe()}")
            features.append(conv_features(shape, pass_name))
            seconds.append(measure_conv(shape, pass_name, repeats, max_chain=chain, target_s=target))
        conv[pass_name] = fit_linear(features, seconds, ("macs", "bytes"))
    points, seconds = [], []
    for elements in memory_elements(quick):
        if progress is not None:
            progress(f"memory-bound, {memory_bytes(elements) / 2:,.0f} B per device")
        points.append((memory_bytes(elements),))
        seconds.append(measure_memory(elements, repeats, target_s=target))
    return conv, fit_linear(points, seconds, ("bytes",))
