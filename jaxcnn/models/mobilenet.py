"""MobileNetV2 (Sandler et al., CVPR'18): inverted residual blocks of depthwise separable convolutions.

Architecture (torchvision's ``mobilenet_v2``, 3,504,872 parameters for 1000 classes at width 1.0):
a 3×3/2 stem of 32 channels; 17 inverted-residual blocks in the seven ``(t, c, n, s)`` stages of
:data:`MOBILENET_V2_SETTINGS`, each a 1×1 *expand* convolution to ``t·cin`` channels (absent when
``t = 1``) + BN + ReLU6, a 3×3 *depthwise* convolution (``feature_group_count`` = its channels; the
stage's stride on the first block) + BN + ReLU6, and a 1×1 *project* convolution + BN with no
activation (the linear bottleneck); an identity shortcut is added when the stride is 1 and the block
keeps its channel count; then a 1×1 convolution to 1280 channels + BN + ReLU6, global average
pooling and the classifier (:class:`jaxcnn.models.common.Head`; torchvision's dropout before it is
omitted: it moves nothing and has no parameters).

Convolution names: ``stem``; ``blocks.{i}.expand``, ``blocks.{i}.depthwise``, ``blocks.{i}.project``
for blocks i = 0..16 (block 0 has no ``expand``); ``final`` (the 1×1 convolution to 1280); ``head``.

Placing the depthwise convolutions (G = C, :mod:`jaxcnn.algorithms.groups`): data, spatial and
filter run them on every grid; channel needs its ``c`` to divide C; 2d / 2.5d / 3d need ``k·c`` to
divide C and ``n·h·w`` to divide ``C/(k·c)``. Any other placement raises ``ValueError`` when the model
is built; the planner (:func:`jaxcnn.planner.plan_layer`) never proposes one.

References:
  M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen. MobileNetV2: Inverted Residuals and
  Linear Bottlenecks. CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.models.common import Algorithms, ConvBN, Head, Placements, block_input
from jaxcnn.models.graph import Conv as ConvNode
from jaxcnn.models.graph import Head as HeadNode
from jaxcnn.models.graph import Node, Residual
from jaxcnn.models.protocol import Task
from jaxcnn.redistribute import redistribute

#: The stages ``(t, c, n, s)``: expansion factor, output channels, blocks, stride of the first block.
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than
    10% below ``value`` (the channel rounding of the reference implementations)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nnx.Module):
    """1×1 expand (+BN+ReLU6) → 3×3 depthwise (+BN+ReLU6) → 1×1 project (+BN), with an identity
    shortcut when ``stride == 1`` and ``cin == cout``.

    The sum is formed in the project convolution's output layout (the block input is moved into it
    explicitly, as :class:`jaxcnn.models.graph.Residual` prices it, or read where the first
    convolution's input already is: :func:`jaxcnn.models.common.block_input`); no activation follows it.

    Args:
      cin, cout: channels in and out.
      stride: the depthwise convolution's stride.
      expansion: hidden channels ``round(cin · expansion)``; 1: no expand convolution.
      prefix: the block's name (``"blocks.3"``).
      plan: the model's :class:`Placements`.
      **kw: ``dtype``, ``rngs``.
    """

    def __init__(
        self, cin: int, cout: int, stride: int, expansion: float, *, prefix: str, plan: Placements, **kw: Any
    ):
        hidden = round(cin * expansion)
        self.expand = (
            ConvBN(cin, hidden, 1, 1, plan=plan, name=f"{prefix}.expand", relu6=True, **kw)
            if expansion != 1
            else nnx.data(None)
        )
        self.depthwise = ConvBN(
            hidden, hidden, 3, stride, plan=plan, name=f"{prefix}.depthwise", relu6=True, groups=hidden, **kw
        )
        self.project = ConvBN(hidden, cout, 1, 1, plan=plan, name=f"{prefix}.project", relu=False, **kw)
        self.identity = stride == 1 and cin == cout

    @property
    def convs(self) -> tuple[ConvBN, ...]:
        """The block's convolutions in execution order."""
        return tuple(c for c in (self.expand, self.depthwise, self.project) if c is not None)

    @property
    def last(self) -> ConvBN:
        return self.project

    def graph(self) -> tuple[Node, ...]:
        """The block's plan-graph nodes: a :class:`Residual` with identity shortcut, or a chain."""
        names = tuple(c.name for c in self.convs)
        return (Residual(names, None),) if self.identity else tuple(ConvNode(n) for n in names)

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        """``x`` laid out as ``src``; returns the block output in ``self.last.output_sharding``."""
        if self.identity:
            (y, at), (shortcut, where) = block_input(x, src, self.convs[0], self.last.output_sharding)
        else:
            y, at = x, src
        for conv in self.convs:
            y, at = conv(y, at), conv.output_sharding
        return y + redistribute(shortcut, where, at) if self.identity else y


class MobileNetV2(nnx.Module):
    """MobileNetV2 (see the module docstring).

    Args:
      num_classes: logits.
      in_channels: image channels.
      mesh: the model's mesh.
      algorithms: per-convolution placements (:mod:`jaxcnn.models.common`).
      width: width multiplier α (1.0: the published widths); every width is ``α·c`` rounded by
        :func:`make_divisible` (multiples of 8), the last convolution keeps ``1280·max(1, α)``.
      small_images: a stride-1 stem (CIFAR-style), for images of 32 pixels or less.
      settings: the stages ``(t, c, n, s)`` (default :data:`MOBILENET_V2_SETTINGS`; torchvision's
        ``inverted_residual_setting``); a shorter table builds a shallower network of the same blocks.
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
        num_classes: int,
        in_channels: int,
        *,
        mesh: Mesh,
        algorithms: Algorithms = "data",
        width: float = 1.0,
        small_images: bool = False,
        settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS,
        dtype: Any = jnp.float32,
        reduce_dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if not settings or any(len(row) != 4 or min(row) < 1 for row in settings):
            raise ValueError(f"settings must be a non-empty list of positive (t, c, n, s), got {settings!r}")
        if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
            raise ValueError(f"width must be a number > 0, got {width!r}")
        plan = Placements(mesh, algorithms, reduce_dtype)
        kw = dict(dtype=dtype, rngs=rngs)
        cin = make_divisible(32 * width)
        self.stem = ConvBN(
            in_channels, cin, 3, 1 if small_images else 2, plan=plan, name="stem", relu6=True, **kw
        )
        blocks = []
        for t, c, n, s in settings:
            cout = make_divisible(c * width)
            for b in range(n):
                prefix = f"blocks.{len(blocks)}"
                blocks.append(
                    InvertedResidual(cin, cout, s if b == 0 else 1, t, prefix=prefix, plan=plan, **kw)
                )
                cin = cout
        self.blocks = nnx.List(blocks)
        last = make_divisible(1280 * max(1.0, width))
        self.final = ConvBN(cin, last, 1, 1, plan=plan, name="final", relu6=True, **kw)
        self.head = Head(last, num_classes, plan=plan, **kw)
        self.conv_names = plan.finish()
        self.input_sharding = NamedSharding(mesh, P("n"))
        chain = (node for block in blocks for node in block.graph())
        self.plan_graph = (ConvNode("stem"), *chain, ConvNode("final"), HeadNode(self.head.name))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, in_channels)`` images, laid out as ``input_sharding`` → ``(N, num_classes)``."""
        x, src = self.stem(x, self.input_sharding), self.stem.output_sharding
        for block in self.blocks:
            x, src = block(x, src), block.last.output_sharding
        return self.head(self.final(x, src), self.final)
