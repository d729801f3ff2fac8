"""CNN models built from :mod:`jaxcnn.nn` layers, with a placement (algorithm, mesh) per convolution.

>>> model = jaxcnn.models.build("resnet18", num_classes=10, in_channels=3, mesh=mesh,
...                             algorithms={"*": "3d", "stem": "data@n=8"}, rngs=nnx.Rngs(0))
>>> model.train(); logits = model(x)        # BatchNorm uses batch statistics
>>> model.eval(); logits = model(x)         # BatchNorm uses running averages

See :mod:`jaxcnn.models.common` for the ``algorithms`` forms and :mod:`jaxcnn.nn.placement` for
placement strings such as ``"3d@n=2,k=2,c=2"``.

:data:`MODELS` is the one list of model names: configs, :mod:`jaxcnn.networks` and the planner's CLI
read names and tasks from it. Every model satisfies :class:`~jaxcnn.models.protocol.Network`. Adding
one takes its module (a class with the protocol's attributes and ``build``'s constructor) and its line
in :data:`MODELS`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxcnn.models.common import Algorithms, Placements
from jaxcnn.models.mobilenet import InvertedResidual, MobileNetV2
from jaxcnn.models.protocol import TASKS, ModelHead, Network, Task
from jaxcnn.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50
from jaxcnn.models.small_cnn import SmallCNN
from jaxcnn.models.unet import UNet
from jaxcnn.models.vgg import VGG16
from jaxcnn.nn import create_sharded

#: Every model by name (each class a :class:`~jaxcnn.models.protocol.Network`, its ``task`` declared).
MODELS: dict[str, type[Network]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "vgg16": VGG16,
    "mobilenet_v2": MobileNetV2,
    "unet": UNet,
}


def _model(name: str) -> type[Network]:
    """The class registered as ``name``.

    Raises:
      ValueError: unknown model name (the valid names are listed).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are {tuple(MODELS)}")
    return MODELS[name]


def task_of(name: str) -> Task:
    """The task of model ``name``: ``"classification"`` or ``"segmentation"``.

    Raises:
      ValueError: unknown model name (the valid names are listed).
    """
    return _model(name).task


def model_names(task: Task | None = None) -> tuple[str, ...]:
    """The registered model names in :data:`MODELS` order, those of ``task`` only when it is given.

    Raises:
      ValueError: ``task`` is not one of :data:`~jaxcnn.models.protocol.TASKS`.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are {TASKS}")
    return tuple(name for name, cls in MODELS.items() if task is None or cls.task == task)


def build(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    mesh: Mesh,
    algorithms: Algorithms = "data",
    dtype: Any = jnp.float32,
    reduce_dtype: Any = None,
    rngs: nnx.Rngs,
    sharded_init: bool = True,
    **kwargs: Any,
) -> Network:
    """Builds model ``name`` (one of :data:`MODELS`).

    Args:
      name: a key of :data:`MODELS` (:func:`model_names`).
      num_classes: logits per example (per voxel for ``unet``).
      in_channels: image channels.
      mesh: the model's mesh (:func:`jaxcnn.make_mesh`).
      algorithms: one placement for every convolution, ``{layer: placement}`` (``"*"``: default) or a
        list in :func:`conv_layer_names` order; a placement is ``"3d"`` or ``"3d@n=2,k=2,c=2"``.
      dtype: computation dtype (parameters are float32; logits are float32).
      reduce_dtype: the dtype the convolutions' sums travel in (None: float32 for a 16-bit ``dtype``;
        ``docs/mixed_precision.md``).
      rngs: parameter initialisation.
      sharded_init: create the variables in one compiled program, already sharded
        (:func:`jaxcnn.nn.create_sharded`; same values as eager construction, which ``False`` selects).
      **kwargs: model options (``width``; ``small_images`` for the ResNets and MobileNetV2; ``depth``
        and ``spatial_dims`` for the U-Net).

    Returns:
      A :class:`~jaxcnn.models.protocol.Network` (an ``nnx.Module``); ``model(x)`` maps
      ``(N, H, W, in_channels)`` to ``(N, num_classes)`` for ``model.task == "classification"``, and
      ``(N, *spatial, in_channels)`` to ``(N, *spatial, num_classes)`` for ``"segmentation"`` (the
      U-Net); ``model.train()`` / ``model.eval()`` switch BatchNorm between batch and running
      statistics.

    Raises:
      ValueError: unknown model name, or bad ``algorithms`` (unknown layer or algorithm, wrong count,
        a mesh the algorithm cannot use).
    """
    constructor = _model(name)

    def make(r: nnx.Rngs) -> Network:
        return constructor(
            num_classes,
            in_channels,
            mesh=mesh,
            algorithms=algorithms,
            dtype=dtype,
            reduce_dtype=reduce_dtype,
            rngs=r,
            **kwargs,
        )

    if not sharded_init:
        return make(rngs)
    return create_sharded(make, rngs, default_mesh=mesh)


def build_abstract(name: str, *, num_classes: int, in_channels: int, mesh: Mesh, **kwargs: Any) -> Network:
    """Model ``name`` built abstractly (``nnx.eval_shape``: nothing is allocated or computed), every
    convolution on ``data`` over all of ``mesh``'s devices: what the planner places and what the layer
    tables trace (:func:`jaxcnn.models.trace.trace_layers`). Arguments as :func:`build`.
    """
    devices = mesh.devices.size
    return nnx.eval_shape(
        lambda: build(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            mesh=mesh,
            algorithms=f"data@n={devices}",
            rngs=nnx.Rngs(0),
            sharded_init=False,
            **kwargs,
        )
    )


def conv_layer_names(model: nnx.Module) -> tuple[str, ...]:
    """Names of the model's convolutions in the order a list of ``algorithms`` is read."""
    return tuple(model.conv_names)


__all__ = [
    "MODELS",
    "TASKS",
    "VGG16",
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "MobileNetV2",
    "ModelHead",
    "Network",
    "Placements",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "SmallCNN",
    "Task",
    "UNet",
    "build",
    "build_abstract",
    "conv_layer_names",
    "model_names",
    "task_of",
]
