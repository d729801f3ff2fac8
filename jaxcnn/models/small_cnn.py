"""SmallCNN: four 3×3 Conv+BN+ReLU layers with one 2×2 max pool, for tiny images (8×8 digits)."""

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


class SmallCNN(nnx.Module):
    """conv(c)→conv(c)→maxpool 2×2→conv(2c)→conv(2c)→global average pool→dense.

    Convolutions are named ``conv1`` … ``conv4`` and ``head`` (the classifier, :class:`Head`). On 8×8×1
    scikit-learn digits (``width=1``: 32 and 64 channels) it reaches ≥95% test accuracy within a minute
    of CPU training.

    Args:
      num_classes: logits.
      in_channels: image channels.
      mesh: the model's mesh.
      algorithms: per-convolution placements (:mod:`jaxcnn.models.common`).
      width: channel multiplier, as for every model (1.0: 32 channels in the first two convolutions,
        64 in the last two).
      dtype: computation dtype.
      reduce_dtype: the dtype the convolutions' sums travel in (None: float32 for 16-bit ``dtype``).
      rngs: parameter initialisation.
    """

    task: ClassVar[Task] = "classification"
    default_image: ClassVar[int] = 8  # the layer tables of jaxcnn.networks: 8×8×1 images, 10 classes
    default_in_channels: ClassVar[int] = 1
    default_num_classes: ClassVar[int] = 10

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
        kw = dict(plan=plan, dtype=dtype, rngs=rngs)
        c = max(1, int(32 * width))
        self.conv1 = ConvBN(in_channels, c, 3, 1, name="conv1", **kw)
        self.conv2 = ConvBN(c, c, 3, 1, name="conv2", **kw)
        self.conv3 = ConvBN(c, 2 * c, 3, 1, name="conv3", **kw)
        self.conv4 = ConvBN(2 * c, 2 * c, 3, 1, name="conv4", **kw)
        self.head = Head(2 * c, num_classes, plan=plan, dtype=dtype, rngs=rngs)
        self.conv_names = plan.finish()
        self.input_sharding = NamedSharding(mesh, P("n"))
        self.plan_graph = (
            Conv("conv1"), Conv("conv2"), Pool("conv2", 2, 2, "VALID", "max"), Conv("conv3"), Conv("conv4"),
            HeadNode(self.head.name),
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, in_channels)`` images, laid out as ``input_sharding`` → ``(N, num_classes)``."""
        x = self.conv2(self.conv1(x, self.input_sharding), self.conv1.output_sharding)
        x = pool(x, self.conv2, 2, 2)
        x = self.conv4(self.conv3(x, self.conv2.output_sharding), self.conv3.output_sharding)
        return self.head(x, self.conv4)
