"""ResNet-18 and ResNet-50 (He et al., CVPR'16), v1.5 (stride on the 3×3 convolution), with BatchNorm.

Convolution names: ``stem``; ``layer{s}.{b}.conv1`` … (``conv2`` for basic blocks, ``conv3`` for
bottlenecks) and ``layer{s}.{b}.proj`` for a projection shortcut; stages s = 1..4, blocks b from 0.
A residual sum is formed in the layout of the block's last convolution (the shortcut is moved into
it explicitly, and the planner prices that move: :mod:`jaxcnn.models.graph`).

References:
  K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.models.common import Algorithms, ConvBN, Head, Placements, block_input, pool
from jaxcnn.models.graph import Conv as ConvNode
from jaxcnn.models.graph import Head as HeadNode
from jaxcnn.models.graph import Pool, Residual
from jaxcnn.models.protocol import Task
from jaxcnn.redistribute import redistribute


def _residual(block: Any, main: Sequence[ConvBN], x: jax.Array, src: NamedSharding) -> jax.Array:
    """``relu(main(x) + shortcut(x))``, the sum in the last main convolution's output layout (the block
    input moved once where the first main convolution and the shortcut read the same layout:
    :func:`jaxcnn.models.common.block_input`)."""
    reads = block.proj.input_sharding if block.proj is not None else main[-1].output_sharding
    (y, at), (shortcut, where) = block_input(x, src, main[0], reads)
    if block.proj is not None:
        shortcut, where = block.proj(shortcut, where), block.proj.output_sharding
    for conv in main:
        y, at = conv(y, at), conv.output_sharding
    return nnx.relu(y + redistribute(shortcut, where, at))


def block_graph(block: Any) -> Residual:
    """The plan-graph node of a residual block."""
    main = tuple(
        c.name
        for c in (
            (block.conv1, block.conv2, block.conv3) if hasattr(block, "conv3") else (block.conv1, block.conv2)
        )
    )
    return Residual(main, block.proj.name if block.proj is not None else None)


class BasicBlock(nnx.Module):
    """3×3 → 3×3 residual block (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, prefix: str, plan: Placements, **kw: Any):
        self.conv1 = ConvBN(cin, width, 3, stride, plan=plan, name=f"{prefix}.conv1", **kw)
        self.conv2 = ConvBN(width, width, 3, 1, plan=plan, name=f"{prefix}.conv2", relu=False, **kw)
        self.proj = (
            ConvBN(cin, width, 1, stride, plan=plan, name=f"{prefix}.proj", relu=False, **kw)
            if stride != 1 or cin != width
            else nnx.data(None)
        )

    @property
    def last(self) -> ConvBN:
        return self.conv2

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        return _residual(self, (self.conv1, self.conv2), x, src)


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4) residual block (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, prefix: str, plan: Placements, **kw: Any):
        cout = width * self.expansion
        self.conv1 = ConvBN(cin, width, 1, 1, plan=plan, name=f"{prefix}.conv1", **kw)
        self.conv2 = ConvBN(width, width, 3, stride, plan=plan, name=f"{prefix}.conv2", **kw)
        self.conv3 = ConvBN(width, cout, 1, 1, plan=plan, name=f"{prefix}.conv3", relu=False, **kw)
        self.proj = (
            ConvBN(cin, cout, 1, stride, plan=plan, name=f"{prefix}.proj", relu=False, **kw)
            if stride != 1 or cin != cout
            else nnx.data(None)
        )

    @property
    def last(self) -> ConvBN:
        return self.conv3

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        return _residual(self, (self.conv1, self.conv2, self.conv3), x, src)


class ResNet(nnx.Module):
    """A ResNet: 7×7/2 stem + 3×3/2 max pool (or a 3×3/1 stem for small images), stages of blocks, head.

    Args:
      block: :class:`BasicBlock` or :class:`Bottleneck`.
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)``.
      num_classes: logits.
      in_channels: image channels.
      mesh: the model's mesh.
      algorithms: per-convolution placements (:mod:`jaxcnn.models.common`).
      width: channel multiplier (1.0: stage widths 64, 128, 256, 512).
      small_images: 3×3 stride-1 stem and no max pool (CIFAR-style), for images of 32 pixels or less.
      dtype: computation dtype.
      reduce_dtype: the dtype the convolutions' sums travel in (None: float32 for 16-bit ``dtype``).
      rngs: parameter initialisation.
    """

    task: ClassVar[Task] = "classification"
    default_image: ClassVar[int] = 224  # the layer tables of jaxcnn.networks: 224×224×3 images, 1000 classes
    default_in_channels: ClassVar[int] = 3
    default_num_classes: ClassVar[int] = 1000

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        stage_sizes: Sequence[int],
        num_classes: int,
        in_channels: int,
        *,
        mesh: Mesh,
        algorithms: Algorithms = "data",
        width: float = 1.0,
        small_images: bool = False,
        dtype: Any = jnp.float32,
        reduce_dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if not stage_sizes or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in stage_sizes
        ):
            raise ValueError(f"stage_sizes must be a non-empty list of positive ints, got {stage_sizes!r}")
        plan = Placements(mesh, algorithms, reduce_dtype)
        kw = dict(dtype=dtype, rngs=rngs)
        base = max(1, int(64 * width))
        self.small_images = small_images
        self.stem = ConvBN(
            in_channels,
            base,
            3 if small_images else 7,
            1 if small_images else 2,
            plan=plan,
            name="stem",
            **kw,
        )
        blocks = []
        cin = base
        for s, count in enumerate(stage_sizes):
            stage_width = base * 2**s
            for b in range(count):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(block(cin, stage_width, stride, prefix=f"layer{s + 1}.{b}", plan=plan, **kw))
                cin = stage_width * block.expansion
        self.blocks = nnx.List(blocks)
        self.head = Head(cin, num_classes, plan=plan, **kw)
        self.conv_names = plan.finish()
        self.input_sharding = NamedSharding(mesh, P("n"))
        stem = (ConvNode("stem"),) if small_images else (ConvNode("stem"), Pool("stem", 3, 2, "SAME", "max"))
        self.plan_graph = (*stem, *(block_graph(b) for b in blocks), HeadNode(self.head.name))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, in_channels)`` images, laid out as ``input_sharding`` → ``(N, num_classes)``."""
        x = self.stem(x, self.input_sharding)
        if not self.small_images:
            x = pool(x, self.stem, 3, 2, "SAME")
        src = self.stem.output_sharding
        for blk in self.blocks:
            x, src = blk(x, src), blk.last.output_sharding
        return self.head(x, self.blocks[-1].last)


class ResNet18(ResNet):
    """ResNet-18: basic blocks, stages (2, 2, 2, 2); keyword arguments as :class:`ResNet` (``stage_sizes``
    too: fewer blocks per stage give a shorter network of the same kinds of blocks)."""

    def __init__(
        self, num_classes: int, in_channels: int, *, stage_sizes: Sequence[int] = (2, 2, 2, 2), **kwargs: Any
    ):
        super().__init__(BasicBlock, tuple(stage_sizes), num_classes, in_channels, **kwargs)


class ResNet50(ResNet):
    """ResNet-50: bottleneck blocks, stages (3, 4, 6, 3); keyword arguments as :class:`ResNet`
    (``stage_sizes`` too, as for :class:`ResNet18`)."""

    def __init__(
        self, num_classes: int, in_channels: int, *, stage_sizes: Sequence[int] = (3, 4, 6, 3), **kwargs: Any
    ):
        super().__init__(Bottleneck, tuple(stage_sizes), num_classes, in_channels, **kwargs)
