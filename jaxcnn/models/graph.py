"""A network as the planner sees it: convolutions, pooling, residual blocks and skip concatenations.

A model's ``plan_graph`` is a tuple of nodes in execution order:

- :class:`Conv`: a convolution (with its BatchNorm and ReLU);
- :class:`Pool`: a pooling window applied in the output layout of the convolution ``after``;
- :class:`Residual`: ``relu(main(x) + shortcut(x))``: a chain of convolutions and an identity or
  projection shortcut, summed in the layout of the main chain's last convolution (MobileNetV2's
  inverted residuals have no activation after the sum; elementwise functions move nothing, so the
  node is the same);
- :class:`Concat`: the channels of an earlier convolution's output (a U-Net skip) concatenated with
  the current activation (the output of the convolution ``up`` just before it), both moved into the
  concatenation layout (``up``'s output layout with the channels gathered);
- :class:`Head`: a classifier network's last node: global average pooling of the activation, then
  the classifier, a 1×1 convolution with bias on the pooled map whose output channels are padded to
  its placement's ``k · c`` (:class:`jaxcnn.models.common.Head`), its logits meeting per-image labels;
- :class:`Output`: a segmentation network's last node: a per-voxel classifier (a 1×1 convolution with
  bias) whose logits, classes gathered, meet per-voxel labels.

A convolution node may be a transposed convolution: its traced geometry carries the input dilation.

The shapes come from the model itself (:func:`jaxcnn.models.trace.trace_layers` traces it), so the
graph only names layers and never repeats their geometry.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import PartitionSpec as P

from jaxcnn.redistribute import spec_entries


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution node (``name`` keys its placement); ``batchnorm``: followed by a BatchNorm (False
    for a U-Net's transposed convolutions)."""

    name: str
    batchnorm: bool = True


@dataclasses.dataclass(frozen=True)
class Pool:
    """A ``window × window`` pooling with ``stride`` and ``padding`` in the layout of conv ``after``."""

    after: str
    window: int
    stride: int
    padding: str
    kind: str = "max"


@dataclasses.dataclass(frozen=True)
class Residual:
    """``relu(main(x) + shortcut(x))``; ``shortcut`` is a projection conv's name or None (identity)."""

    main: tuple[str, ...]
    shortcut: str | None


@dataclasses.dataclass(frozen=True)
class Concat:
    """``concat(output of conv skip, output of conv up)`` over channels, in the concatenation layout
    (``up``'s output layout with the channels gathered); ``up`` is the convolution just before it."""

    skip: str
    up: str


@dataclasses.dataclass(frozen=True)
class Output:
    """The per-voxel classifier ``name`` (1×1 convolution with bias, no BatchNorm), last in the graph."""

    name: str


@dataclasses.dataclass(frozen=True)
class Head:
    """The classifier ``name`` (:class:`jaxcnn.models.common.Head`: global average pooling of the
    activation of the last convolution before it, then a 1×1 convolution with bias and padded output
    channels, no BatchNorm), last in the graph."""

    name: str


Node = Conv | Pool | Residual | Concat | Head | Output


def channels_gathered(spec: P, rank: int) -> P:
    """The PartitionSpec of a rank-``rank`` channels-last activation laid out as ``spec`` with its channel
    dimension gathered (the concatenation layout of :class:`Concat`, the logits' layout of
    :class:`Output`)."""
    entries = spec_entries(spec, rank)
    return P(*(e[0] if len(e) == 1 else e or None for e in entries[:-1]), None)
