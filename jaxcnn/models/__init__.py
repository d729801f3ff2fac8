"""CNN models built from :mod:`jaxcnn.nn` layers, with a placement (algorithm, mesh) per convolution.

>>> model = jaxcnn.models.build("resnet18", num_classes=10, in_channels=3, mesh=mesh,
...                             algorithms={"*": "3d", "stem": "data@n=8"}, rngs=nnx.Rngs(0))
>>> model.train(); logits = model(x)        # BatchNorm uses batch statistics
>>> model.eval(); logits = model(x)         # BatchNorm uses running averages

See :mod:`jaxcnn.models.common` for the ``algorithms`` forms and :mod:`jaxcnn.nn.placement` for
placement strings such as ``"3d@n=2,k=2,c=2"``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxcnn.models.common import Algorithms, Placements
from jaxcnn.models.mobilenet import InvertedResidual, MobileNetV2
from jaxcnn.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50
from jaxcnn.models.small_cnn import SmallCNN
from jaxcnn.models.unet import UNet
from jaxcnn.models.vgg import VGG16
from jaxcnn.nn import create_sharded

MODELS: dict[str, Any] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "vgg16": VGG16,
    "mobilenet_v2": MobileNetV2,
    "unet": UNet,
}


def build(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    mesh: Mesh,
    algorithms: Algorithms = "data",
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    sharded_init: bool = True,
    **kwargs: Any,
) -> nnx.Module:
    """Builds model ``name`` (one of ``MODELS``).

    Args:
      name: ``"small_cnn"``, ``"resnet18"``, ``"resnet50"``, ``"vgg16"``, ``"mobilenet_v2"`` or ``"unet"``
        (segmentation).
      num_classes: logits per example (per voxel for ``unet``).
      in_channels: image channels.
      mesh: the model's mesh (:func:`jaxcnn.make_mesh`).
      algorithms: one placement for every convolution, ``{layer: placement}`` (``"*"``: default) or a
        list in :func:`conv_layer_names` order; a placement is ``"3d"`` or ``"3d@n=2,k=2,c=2"``.
      dtype: computation dtype (parameters are float32; logits are float32).
      rngs: parameter initialisation.
      sharded_init: create the variables in one compiled program, already sharded
        (:func:`jaxcnn.nn.create_sharded`; same values as eager construction, which ``False`` selects).
      **kwargs: model options (``width``; ``small_images`` for the ResNets and MobileNetV2; ``depth``
        and ``spatial_dims`` for the U-Net).

    Returns:
      An ``nnx.Module``; ``model(x)`` maps ``(N, H, W, in_channels)`` to ``(N, num_classes)`` (the U-Net:
      ``(N, *spatial, in_channels)`` to ``(N, *spatial, num_classes)``, and ``model.task`` is
      ``"segmentation"``);
      ``model.train()`` / ``model.eval()`` switch BatchNorm between batch and running statistics.

    Raises:
      ValueError: unknown model name, or bad ``algorithms`` (unknown layer or algorithm, wrong count,
        a mesh the algorithm cannot use).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are {tuple(MODELS)}")
    constructor = MODELS[name]

    def make(r: nnx.Rngs) -> nnx.Module:
        return constructor(
            num_classes, in_channels, mesh=mesh, algorithms=algorithms, dtype=dtype, rngs=r, **kwargs
        )

    if not sharded_init:
        return make(rngs)
    return create_sharded(make, rngs, default_mesh=mesh)


def conv_layer_names(model: nnx.Module) -> tuple[str, ...]:
    """Names of the model's convolutions in the order a list of ``algorithms`` is read."""
    return tuple(model.conv_names)


__all__ = [
    "MODELS",
    "VGG16",
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "MobileNetV2",
    "Placements",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "SmallCNN",
    "UNet",
    "build",
    "conv_layer_names",
]
