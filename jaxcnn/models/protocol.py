"""What every :mod:`jaxcnn.models` network provides: the :class:`Network` protocol and its :class:`ModelHead`.

A model is a ``flax.nnx.Module`` class registered by name in :data:`jaxcnn.models.MODELS`, built as
``cls(num_classes, in_channels, *, mesh, algorithms, dtype, reduce_dtype, rngs, **options)``
(:func:`jaxcnn.models.build`).
Its instances provide:

- ``conv_names``: its convolutions, in the order a list of placements is read;
- ``plan_graph``: the graph the planner places (:mod:`jaxcnn.models.graph`), ending with the head's
  node (a classifier's :class:`~jaxcnn.models.graph.Head`, a segmentation
  :class:`~jaxcnn.models.graph.Output`);
- ``head``: the :class:`ModelHead` that turns features into logits, with the layouts its logits leave
  in and its labels must meet;
- ``input_sharding``: the images' layout;
- ``__call__(x)`` and ``train()`` / ``eval()`` (BatchNorm on batch or running statistics).

Its class declares ``task`` (what its logits classify: an image or every voxel) and the input the
layer tables of :mod:`jaxcnn.networks` trace it on (``default_image``, ``default_in_channels``,
``default_num_classes``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import jax
from jax.sharding import NamedSharding

from jaxcnn.models.graph import Node

#: What a model's logits classify: a whole image (logits ``(N, classes)``) or each voxel
#: (``(N, *spatial, classes)``).
Task = Literal["classification", "segmentation"]

#: Every task a model may declare.
TASKS: tuple[Task, ...] = ("classification", "segmentation")


@runtime_checkable
class ModelHead(Protocol):
    """The block that turns a network's features into logits (:class:`jaxcnn.models.common.Head`, the
    U-Net's :class:`jaxcnn.models.unet.SegmentationHead`).

    Attributes:
      name: its convolution's name (its placement key, the name of the plan graph's last node).
      conv: its distributed convolution (a ``jaxcnn.nn.Conv``).
      pad_outputs: whether its output channels are padded to a multiple of its placement's ``k · c``
        (the planner ranks each grid with the channels it will then have).
      logits_sharding: the layout the logits leave the model in.
      label_sharding: the layout the labels are moved into to meet them.
    """

    pad_outputs: ClassVar[bool]
    name: str
    conv: Any
    logits_sharding: NamedSharding
    label_sharding: NamedSharding


@runtime_checkable
class Network(Protocol):
    """A :mod:`jaxcnn.models` network (see the module docstring).

    Attributes:
      task: ``"classification"`` or ``"segmentation"``.
      default_image: the image side the layer tables of :mod:`jaxcnn.networks` trace it on.
      default_in_channels: their image channels.
      default_num_classes: their classes.
      conv_names: its convolutions in placement order.
      plan_graph: its plan graph (:mod:`jaxcnn.models.graph`).
      head: its :class:`ModelHead`.
      input_sharding: the images' layout.
    """

    task: ClassVar[Task]
    default_image: ClassVar[int]
    default_in_channels: ClassVar[int]
    default_num_classes: ClassVar[int]
    conv_names: tuple[str, ...]
    plan_graph: tuple[Node, ...]
    head: ModelHead
    input_sharding: NamedSharding

    def __call__(self, x: jax.Array) -> jax.Array:
        """Images (or volumes) laid out as ``input_sharding`` → float32 logits in ``head.logits_sharding``."""
        ...

    def train(self, **attributes: Any) -> None:
        """BatchNorm on batch statistics."""
        ...

    def eval(self, **attributes: Any) -> None:
        """BatchNorm on running statistics."""
        ...
