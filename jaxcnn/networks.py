"""Convolution layer tables of whole networks (any :mod:`jaxcnn.models` network, or a YAML list).

Each network is a list of :class:`ConvLayer` (one per convolution, in forward order). The tables of
the models are traced from the models themselves (:func:`model_layers`), so names (``stem``,
``layer2.0.proj``, ``conv5_3``, ``blocks.4.depthwise``, ``head``) and shapes are those the models run
and a plan can be pasted into a config; the geometry comes from :func:`jaxcnn.conv_geometry`, so
padding and output sizes are exactly what :func:`jaxcnn.conv2d` computes. Only convolutions are
listed (the classifier is one: a 1x1 convolution on a 1x1 map, its ``pad_outputs`` set); pooling and
normalisation are not. :data:`NETWORKS` holds every classifier of :data:`jaxcnn.models.MODELS`, traced
on its class's default input (``default_image``, ``default_in_channels``, ``default_num_classes``).

>>> layers = get_network("resnet50", batch=32)
>>> sum(layer.geom.flops * layer.repeat for layer in layers) / 2 / 32  # ≈ 4.09e9 MACs per image
>>> layers[0].name, layers[-1].name
('stem', 'head')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jaxcnn import models
from jaxcnn.geometry import ConvGeometry, ConvLayer, conv_geometry
from jaxcnn.mesh import make_mesh
from jaxcnn.models.common import HEAD_NAME
from jaxcnn.models.trace import trace_layers


def _check_sizes(batch: int, image: int) -> None:
    for name, value in (("batch", batch), ("image", image)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def model_layers(
    name: str, batch: int, image: int = 224, *, num_classes: int = 1000, in_channels: int = 3, **options: Any
) -> list[ConvLayer]:
    """Every convolution of the :mod:`jaxcnn.models` network ``name`` (the classifier ``head``, a 1x1
    convolution on a 1x1 map, included), traced from the model itself on one device (nothing is
    computed), so names and shapes are those the model runs.

    Args:
      name: a model of ``jaxcnn.models.MODELS``.
      batch: N.
      image: input height = width.
      num_classes: classifier width.
      in_channels: image channels.
      **options: model options (``width``, ``small_images``; the U-Net's ``spatial_dims``: 3 traces a
        volume of ``image`` on each side).
    """
    _check_sizes(batch, image)
    model = models.build_abstract(
        name, num_classes=num_classes, in_channels=in_channels, mesh=make_mesh(), **options
    )
    sides = (image,) * options.get("spatial_dims", 2)
    return trace_layers(model, batch, (*sides, in_channels))


def resnet50_layers(batch: int, image: int = 224) -> list[ConvLayer]:
    """The 54 convolutions of ResNet-50 v1.5 (:class:`jaxcnn.models.ResNet50`; torchvision's layout).

    Stem 7x7/2 (pad 3) then a 3x3/2 max-pool; four stages of 3, 4, 6, 3 bottlenecks of width 64, 128,
    256, 512 (1x1 → 3x3 → 1x1 with 4x expansion, the stride in the 3x3), a 1x1 projection
    shortcut (``proj``) in each stage's first block, and the 2048 → 1000 classifier (``head``).
    """
    return model_layers("resnet50", batch, image)


def vgg16_layers(batch: int, image: int = 224) -> list[ConvLayer]:
    """The 13 3x3 convolutions of VGG-16 (configuration D, :class:`jaxcnn.models.VGG16`) and its
    global-average-pool classifier (``head``, 512 → 1000)."""
    return model_layers("vgg16", batch, image)


_REQUIRED = ("h", "w", "c", "k", "r")
_OPTIONAL = ("name", "s", "stride", "padding", "dilation", "repeat", "pad_outputs")
_REQUIRED_ND = ("input", "k", "kernel")  # the N-D form: 1-, 2- or 3-D layers
_OPTIONAL_ND = ("name", "stride", "padding", "dilation", "repeat", "pad_outputs")


def _pair_or_int(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _padding(value: Any, rank: int = 2) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return ((value, value),) * rank
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else (v, v) for v in value)
    return value


def _positive_ints(where: str, key: str, values: Any) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {key!r} must be a positive int, got {value!r}")


def _check_keys(
    where: str, entry: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    unknown = sorted(set(entry) - set(required + optional))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {required + optional}")
    missing = [key for key in required if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing required keys {missing} (required: {required})")


def _shapes(where: str, entry: Mapping[str, Any], batch: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``(x_shape, kernel_shape, rank)`` of one entry, in either form (validated)."""
    both = sorted(set(entry) & {"h", "w", "c", "r", "s"}), sorted(set(entry) & {"input", "kernel"})
    if all(both):
        raise ValueError(
            f"{where}: mixes the 2-D keys {both[0]} with the N-D keys {both[1]}; give either h, w, c, k, r "
            "(, s) or input: [D, H, W, C] / [H, W, C] / [W, C], k and kernel"
        )
    if "input" not in entry and "kernel" not in entry:  # the 2-D form: h, w, c, k, r (, s)
        _check_keys(where, entry, _REQUIRED, _OPTIONAL)
        for key in (*_REQUIRED, "s"):
            _positive_ints(where, key, [entry.get(key, 1)])
        h, w, c, k, r = (entry[key] for key in _REQUIRED)
        return (batch, h, w, c), (r, entry.get("s", r), c, k), 2
    _check_keys(where, entry, _REQUIRED_ND, _OPTIONAL_ND)
    shape, kernel, k = entry["input"], entry["kernel"], entry["k"]
    if not isinstance(shape, list) or len(shape) not in (2, 3, 4):
        raise ValueError(
            f"{where}: 'input' must be [W, C], [H, W, C] or [D, H, W, C] (1, 2 or 3 spatial dimensions, "
            f"then channels), got {shape!r}"
        )
    _positive_ints(where, "input", shape)
    rank = len(shape) - 1
    window = [kernel] * rank if isinstance(kernel, int) and not isinstance(kernel, bool) else kernel
    if not isinstance(window, list) or len(window) != rank:
        raise ValueError(
            f"{where}: 'kernel' must be an int or a list of {rank} ints (one per spatial dimension of "
            f"input {shape!r}), got {kernel!r}"
        )
    _positive_ints(where, "kernel", window)
    _positive_ints(where, "k", [k])
    return (batch, *shape), (*window, shape[-1], k), rank


def layers_from_dicts(entries: Iterable[Mapping[str, Any]], batch: int) -> list[ConvLayer]:
    """Builds layers from dicts (e.g. a parsed YAML list).

    Keys of a 2-D layer: ``h, w, c, k, r`` (required: input height/width, in/out channels, kernel
    height), ``s`` (kernel width, default ``r``). Keys of a 1-, 2- or 3-D layer (instead of those):
    ``input`` ([W, C], [H, W, C] or [D, H, W, C]), ``k`` (output channels) and ``kernel`` (an int, or
    one int per spatial dimension). Both forms take ``stride`` (int or one per spatial dimension,
    default 1), ``padding`` ("SAME", "VALID", an int, or one [lo, hi] (or int) per spatial dimension;
    default "SAME"), ``dilation`` (default 1), ``name`` (default ``"conv<i>"``), ``repeat`` (default 1),
    ``pad_outputs`` (true: the output channels may be padded to the grid's ``k · c``, as a classifier
    head's are; default: for a layer named ``head``, as the tables of the models name it).

    Args:
      entries: one mapping per convolution.
      batch: N, shared by all layers.

    Raises:
      ValueError: an unknown or missing key (named, with the valid keys listed), keys of both forms, a
        non-integer size, a non-boolean ``pad_outputs``, or a geometry :func:`jaxcnn.conv_geometry`
        rejects (the layer is named).
    """
    _check_sizes(batch, 1)
    layers = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"layer {i} must be a mapping of {_REQUIRED + _OPTIONAL} (or {_REQUIRED_ND + _OPTIONAL_ND}), "
                f"got {entry!r}"
            )
        where = f"layer {i} ({entry.get('name', 'unnamed')})"
        x_shape, kernel_shape, rank = _shapes(where, entry, batch)
        _positive_ints(where, "repeat", [entry.get("repeat", 1)])
        try:
            geom = conv_geometry(
                x_shape,
                kernel_shape,
                _pair_or_int(entry.get("stride", 1)),
                _padding(entry.get("padding", "SAME"), rank),
                _pair_or_int(entry.get("dilation", 1)),
            )
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        name = str(entry.get("name", f"conv{i}"))
        pad_outputs = entry.get("pad_outputs", name == HEAD_NAME)  # a table's "head" pads, as the models'
        if not isinstance(pad_outputs, bool):
            raise ValueError(f"{where}: 'pad_outputs' must be true or false, got {pad_outputs!r}")
        layers.append(ConvLayer(name, geom, entry.get("repeat", 1), pad_outputs))
    return layers


def layers_from_yaml(path: str | os.PathLike[str], batch: int) -> list[ConvLayer]:
    """Reads a YAML file holding a list of layer dicts (or ``{layers: [...]}``); see
    :func:`layers_from_dicts` for the keys."""
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    if isinstance(data, Mapping):
        if set(data) != {"layers"}:
            raise ValueError(f"{path}: a mapping must have exactly the key 'layers', got {sorted(data)}")
        data = data["layers"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of layers, got {type(data).__name__}")
    return layers_from_dicts(data, batch)


def _table(name: str) -> Callable[..., list[ConvLayer]]:
    """``(batch, image=default) -> layers`` of model ``name`` on its class's default input."""
    cls = models.MODELS[name]

    def layers(batch: int, image: int = cls.default_image) -> list[ConvLayer]:
        return model_layers(
            name, batch, image, num_classes=cls.default_num_classes, in_channels=cls.default_in_channels
        )

    layers.__doc__ = f"The convolutions of {name} (:func:`model_layers` on its default input)."
    return layers


#: ``{name: (batch, image=default) -> layers}`` of every classifier of :data:`jaxcnn.models.MODELS`.
NETWORKS: dict[str, Callable[..., list[ConvLayer]]] = {
    name: _table(name) for name in models.model_names("classification")
}


def get_network(name: str, batch: int, image: int = 224) -> list[ConvLayer]:
    """Layers of a known network (``NETWORKS``) or of a ``.yaml``/``.yml`` file (``image`` unused).

    Raises:
      ValueError: unknown name (the valid names are listed).
    """
    if name.endswith((".yaml", ".yml")):
        return layers_from_yaml(name, batch)
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names are {sorted(NETWORKS)} or a .yaml path")
    return NETWORKS[name](batch, image)


def dedupe(layers: Sequence[ConvLayer]) -> list[ConvLayer]:
    """Merges layers of equal geometry into one entry (first name kept, ``repeat`` summed)."""
    merged: dict[ConvGeometry, ConvLayer] = {}
    for layer in layers:
        seen = merged.get(layer.geom)
        merged[layer.geom] = dataclasses.replace(seen, repeat=seen.repeat + layer.repeat) if seen else layer
    return list(merged.values())
