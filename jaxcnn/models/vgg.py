"""VGG16 with batch normalisation (Simonyan & Zisserman, ICLR'15; BN variant)."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.models.common import Algorithms, ConvBN, Head, Placements, pool
from jaxcnn.models.graph import Conv, Pool
from jaxcnn.models.graph import Head as HeadNode
from jaxcnn.models.protocol import Task

#: Channels of the 13 convolutions, ``"M"`` a 2×2/2 max pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16(nnx.Module):
    """VGG16-BN: 13 3×3 Conv+BN+ReLU layers in five stages, each closed by a 2×2/2 max pool.

    The classifier is global average pooling + one dense layer (the CIFAR-style head; the three
    4096-wide dense layers of the ImageNet model are not part of the convolution study). Convolutions
    are named ``conv1_1`` … ``conv5_3`` (stage_index) and ``head``.

    Args:
      num_classes: logits.
      in_channels: image channels.
      mesh: the model's mesh.
      algorithms: per-convolution placements (:mod:`jaxcnn.models.common`).
      width: channel multiplier (1.0 = the published widths).
      dtype: computation dtype.
      reduce_dtype: the dtype the convolutions' sums travel in (None: float32 for 16-bit ``dtype``).
      rngs: parameter initialisation.

    References:
      K. Simonyan, A. Zisserman. Very Deep Convolutional Networks for Large-Scale Image
      Recognition. ICLR 2015.
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
        dtype: Any = jnp.float32,
        reduce_dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        plan = Placements(mesh, algorithms, reduce_dtype)
        convs: list[ConvBN] = []
        pool_after: list[int] = []
        cin, stage, index = in_channels, 1, 1
        for item in VGG16_CONFIG:
            if item == "M":
                pool_after.append(len(convs) - 1)
                stage, index = stage + 1, 1
                continue
            cout = max(1, int(int(item) * width))
            name = f"conv{stage}_{index}"
            convs.append(ConvBN(cin, cout, 3, 1, plan=plan, name=name, dtype=dtype, rngs=rngs))
            cin, index = cout, index + 1
        self.convs = nnx.List(convs)
        self.pool_after = tuple(pool_after)
        self.head = Head(cin, num_classes, plan=plan, dtype=dtype, rngs=rngs)
        self.conv_names = plan.finish()
        self.input_sharding = NamedSharding(mesh, P("n"))
        graph: list = []
        for i, layer in enumerate(convs):
            graph.append(Conv(layer.name))
            if i in self.pool_after:
                graph.append(Pool(layer.name, 2, 2, "VALID", "max"))
        self.plan_graph = (*graph, HeadNode(self.head.name))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, in_channels)`` images (H, W ≥ 32) → ``(N, num_classes)`` logits."""
        src = self.input_sharding
        for i, layer in enumerate(self.convs):
            x, src = layer(x, src), layer.output_sharding
            if i in self.pool_after:
                x = pool(x, layer, 2, 2)
        return self.head(x, self.convs[-1])
