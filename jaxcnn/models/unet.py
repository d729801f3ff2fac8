"""U-Net (Ronneberger et al., MICCAI'15; Çiçek et al., MICCAI'16 in 3-D) for per-voxel segmentation.

``depth`` encoder levels of [3×3 conv + BN + ReLU]×2 followed by a 2× max pool, a bottleneck of the same
two convolutions, and ``depth`` decoder levels of a 2× transposed convolution (kernel 2, stride 2), the
concatenation with the encoder level's output (the skip), and [conv + BN + ReLU]×2; a final 1×1
convolution gives ``num_classes`` logits per voxel. ``spatial_dims=2`` works on ``(N, H, W, C)``
images, ``3`` on ``(N, D, H, W, C)`` volumes (every window becomes 3×3×3 / 2×2×2; it needs jaxcnn's
N-D convolutions).

Convolution names: ``enc{l}.conv1``, ``enc{l}.conv2`` (l = 0 … depth-1, 0 the finest level),
``bottom.conv1``, ``bottom.conv2``, ``up{l}`` (the transposed convolution into level l), ``dec{l}.conv1``,
``dec{l}.conv2`` and ``out`` (the 1×1 classifier). Layouts are explicit as in every jaxcnn model
(:mod:`jaxcnn.models.common`): a skip and the upsampled activation are both moved
(:func:`jaxcnn.redistribute.redistribute`) into the *concatenation layout* - the transposed
convolution's output layout with the channels gathered, so that concatenating the channels is local -
and the result moves on to ``dec{l}.conv1``'s input layout. The logits leave ``out`` with their
classes gathered (batch and space split as ``out``'s output), where the labels are moved to meet them.

References:
  O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical Image
  Segmentation. MICCAI 2015. Ö. Çiçek et al. 3D U-Net: Learning Dense Volumetric Segmentation from
  Sparse Annotation. MICCAI 2016.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.models.common import Algorithms, ConvBN, Placements, pool
from jaxcnn.models.graph import Concat, Output, Pool, channels_gathered
from jaxcnn.models.graph import Conv as ConvNode
from jaxcnn.models.protocol import Task
from jaxcnn.nn import Conv, ConvTranspose
from jaxcnn.redistribute import redistribute


def gathered_channels(sharding: NamedSharding, rank: int) -> NamedSharding:
    """``sharding`` of a rank-``rank`` channels-last activation with its channel dimension gathered."""
    return NamedSharding(sharding.mesh, channels_gathered(sharding.spec, rank))


class UpConv(nnx.Module):
    """The named block of a 2× upsampling :class:`jaxcnn.nn.ConvTranspose` (kernel 2, stride 2, no bias,
    He-initialised; its kernel ``(*window, C, K)``) with its placement, input and output layouts."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        plan: Placements,
        name: str,
        spatial_dims: int,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        placement = plan.placement(name, rank=spatial_dims)
        self.conv = ConvTranspose(
            cin,
            cout,
            (2,) * spatial_dims,
            2,
            padding="VALID",
            use_bias=False,
            kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
            dtype=dtype,
            mesh=placement.mesh,
            algorithm=placement.algorithm,
            reduce_dtype=plan.reduce_dtype,
            rngs=rngs,
        )
        self.name = name
        self.mesh = placement.mesh
        self.input_sharding = NamedSharding(placement.mesh, placement.x_spec)
        self.output_sharding = NamedSharding(placement.mesh, placement.y_spec)
        self.concat_sharding = gathered_channels(self.output_sharding, spatial_dims + 2)

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        """``x`` laid out as ``src``; returns the upsampled activation in ``self.output_sharding``."""
        y = self.conv(redistribute(x, src, self.input_sharding))
        return jax.lax.with_sharding_constraint(y, self.output_sharding)


class SegmentationHead(nnx.Module):
    """The final 1×1 convolution (named ``out``, with bias) → float32 logits with the classes gathered.

    ``logits_sharding``: batch and space split as ``out``'s output, classes whole (the softmax is
    local); ``label_sharding``: the labels' layout that meets them. Its classes are not padded.
    """

    #: Its output channels are exactly the classes (:class:`~jaxcnn.models.protocol.ModelHead`).
    pad_outputs: ClassVar[bool] = False

    def __init__(
        self,
        features: int,
        num_classes: int,
        *,
        plan: Placements,
        spatial_dims: int,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        placement = plan.placement("out", default=f"data@n={plan.mesh.devices.size}", rank=spatial_dims)
        self.name = "out"
        self.conv = Conv(
            features,
            num_classes,
            (1,) * spatial_dims,
            1,
            padding="VALID",
            use_bias=True,
            mesh=placement.mesh,
            algorithm=placement.algorithm,
            reduce_dtype=plan.reduce_dtype,
            dtype=dtype,
            rngs=rngs,
        )
        self.mesh = placement.mesh
        self.input_sharding = NamedSharding(placement.mesh, placement.x_spec)
        self.output_sharding = NamedSharding(placement.mesh, placement.y_spec)
        self.logits_sharding = gathered_channels(self.output_sharding, spatial_dims + 2)
        self.label_sharding = NamedSharding(placement.mesh, P(*self.logits_sharding.spec[:-1]))

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        """``x`` laid out as ``src`` → ``(N, *spatial, num_classes)`` float32 logits, laid out as
        ``logits_sharding``."""
        y = self.conv(redistribute(x, src, self.input_sharding))
        return redistribute(y, self.output_sharding, self.logits_sharding).astype(jnp.float32)


class Level(nnx.Module):
    """Two 3×3 Conv+BN+ReLU blocks named ``{prefix}.conv1`` and ``{prefix}.conv2``."""

    def __init__(self, cin: int, cout: int, *, prefix: str, plan: Placements, **kw: Any):
        self.conv1 = ConvBN(cin, cout, 3, 1, plan=plan, name=f"{prefix}.conv1", **kw)
        self.conv2 = ConvBN(cout, cout, 3, 1, plan=plan, name=f"{prefix}.conv2", **kw)

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        return self.conv2(self.conv1(x, src), self.conv1.output_sharding)


class UNet(nnx.Module):
    """The U-Net of the module docstring.

    Args:
      num_classes: logits per voxel (2 for a binary foreground).
      in_channels: image channels.
      mesh: the model's mesh.
      algorithms: per-convolution placements (:mod:`jaxcnn.models.common`; the transposed convolutions
        ``up{l}`` and the classifier ``out`` are placed like the others).
      width: channel multiplier (1.0: 16 channels at the finest level, doubling per level).
      depth: number of pooling levels (the spatial sides must be divisible by ``2**depth``).
      spatial_dims: 2 (images) or 3 (volumes).
      dtype: computation dtype (parameters and logits are float32).
      reduce_dtype: the dtype the convolutions' sums travel in (None: float32 for 16-bit ``dtype``).
      rngs: parameter initialisation.

    Raises:
      ValueError: ``depth`` < 1 or ``spatial_dims`` not 2 or 3.
    """

    task: ClassVar[Task] = "segmentation"
    default_image: ClassVar[int] = 32  # configs/unet.yaml's ellipses: 32×32×1 images, 2 classes per pixel
    default_in_channels: ClassVar[int] = 1
    default_num_classes: ClassVar[int] = 2

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        mesh: Mesh,
        algorithms: Algorithms = "data",
        width: float = 1.0,
        depth: int = 2,
        spatial_dims: int = 2,
        dtype: Any = jnp.float32,
        reduce_dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if spatial_dims not in (2, 3):
            raise ValueError(f"unet: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"unet: depth must be an int >= 1 (pooling levels), got {depth!r}")
        plan = Placements(mesh, algorithms, reduce_dtype)
        kw = dict(plan=plan, dtype=dtype, spatial_dims=spatial_dims, rngs=rngs)
        base = max(1, int(16 * width))
        widths = [base * 2**level for level in range(depth + 1)]
        self.spatial_dims, self.depth = spatial_dims, depth
        enc, cin = [], in_channels
        for level in range(depth):
            enc.append(Level(cin, widths[level], prefix=f"enc{level}", **kw))
            cin = widths[level]
        self.enc = nnx.List(enc)
        self.bottom = Level(cin, widths[depth], prefix="bottom", **kw)
        ups, dec = [], []
        for level in reversed(range(depth)):
            ups.append(UpConv(widths[level + 1], widths[level], name=f"up{level}", **kw))
            dec.append(Level(2 * widths[level], widths[level], prefix=f"dec{level}", **kw))
        self.ups, self.dec = nnx.List(ups), nnx.List(dec)
        self.head = SegmentationHead(widths[0], num_classes, **kw)
        self.conv_names = plan.finish()
        self.input_sharding = NamedSharding(mesh, P("n"))
        graph: list[Any] = []
        for level in range(depth):
            graph += [ConvNode(f"enc{level}.conv1"), ConvNode(f"enc{level}.conv2")]
            graph.append(Pool(f"enc{level}.conv2", 2, 2, "VALID", "max"))
        graph += [ConvNode("bottom.conv1"), ConvNode("bottom.conv2")]
        for level in reversed(range(depth)):
            graph += [ConvNode(f"up{level}", batchnorm=False), Concat(f"enc{level}.conv2", f"up{level}")]
            graph += [ConvNode(f"dec{level}.conv1"), ConvNode(f"dec{level}.conv2")]
        self.plan_graph = (*graph, Output(self.head.name))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, *spatial, in_channels)`` laid out as ``input_sharding`` → ``(N, *spatial, num_classes)``
        float32 logits in ``head.logits_sharding``.

        Raises:
          ValueError: a spatial side is not divisible by ``2**depth``.
        """
        sides = x.shape[1:-1]
        if len(sides) != self.spatial_dims or any(s % 2**self.depth for s in sides):
            raise ValueError(
                f"unet(spatial_dims={self.spatial_dims}, depth={self.depth}) needs inputs (N, *spatial, C) "
                f"with {self.spatial_dims} sides divisible by {2**self.depth}, got shape {x.shape}"
            )
        rank = x.ndim
        src, skips = self.input_sharding, []
        for level in self.enc:
            x = level(x, src)
            skips.append((x, level.conv2.output_sharding))
            x, src = pool(x, level.conv2, 2, 2), level.conv2.output_sharding
        x, src = self.bottom(x, src), self.bottom.conv2.output_sharding
        for up, level, (skip, skip_at) in zip(self.ups, self.dec, reversed(skips), strict=True):
            y = up(x, src)
            at = up.concat_sharding
            x = jnp.concatenate(
                [redistribute(skip, skip_at, at), redistribute(y, up.output_sharding, at)], axis=rank - 1
            )
            x = jax.lax.with_sharding_constraint(x, at)
            x, src = level(x, at), level.conv2.output_sharding
        return self.head(x, src)
