"""The ``model`` section of the run config, and placement strings checked without a mesh.

Re-exported by :mod:`jaxcnn.runner.config`. A placement's syntax, algorithm and axis use are checked
here, at load time (:func:`parse_placement_text`); :meth:`jaxcnn.runner.config.Config` checks what
needs the mesh sizes (a layer mesh must use all the devices), and the model build what needs the network
(layer names, list length: :func:`jaxcnn.runner.setup.build_model`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from jaxcnn.mesh import AXES
from jaxcnn.runner.config.typed import (
    Bool,
    ByteSize,
    Float,
    FrozenDict,
    FrozenMapping,
    Int,
    Section,
    Str,
    fail,
)

MESH_AXES = AXES  # ("n", "d", "h", "w", "k", "c")
#: Models that label every voxel (the rest classify whole images).
SEGMENTATION_MODELS = ("unet",)


def _finite_option(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"must be finite, got {value!r}")
    return value


OptionValue = Annotated[Int | Float | Bool | Str, AfterValidator(_finite_option)]
"""A ``model.options`` value: int, finite float, bool or str."""


class ModelConfig(Section):
    """Which network to train and how its convolutions are distributed."""

    key_path: ClassVar[str] = "model"

    name: Literal["small_cnn", "resnet18", "resnet50", "vgg16", "mobilenet_v2", "unet"] = Field(
        "small_cnn",
        description="network from jaxcnn.models: the classifiers small_cnn, resnet18, resnet50, vgg16, "
        "mobilenet_v2, or unet (segmentation: one label per voxel, needs data.source: ellipsoids)",
    )
    algorithms: Str | tuple[Str, ...] | FrozenMapping[Str, Str] = Field(
        "data",
        description="distributed convolution algorithm(s): one name for every conv layer (data), a list "
        "with one name per conv layer in order (jaxcnn.models.conv_layer_names), a mapping "
        "{layer_name: algorithm} (key '*': the default for layers not listed), or 'auto' to let "
        "jaxcnn.plan_network choose (jaxcnn/runner/autoplan.py). A name may carry its own arrangement "
        "of the same devices, '3d@n=2,k=2,c=2' (jaxcnn.nn.placement), so layers can mix algorithms "
        "that split different mesh axes",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="computation dtype (parameters and logits stay float32)"
    )
    options: FrozenMapping[Str, OptionValue] = Field(
        default_factory=FrozenDict,
        description="extra keyword arguments of the model's constructor, e.g. {width: 0.5} (channel "
        "multiplier) or {small_images: true} for the ResNets and MobileNetV2 on 32x32 images",
    )
    plan_memory_bytes: ByteSize = Field(
        0,
        description="algorithms: auto only: per-device memory budget of the whole train step (its "
        "predicted peak, Adam's state estimated: jaxcnn.planner.step_memory), in bytes or as 16GiB, "
        "512MiB, 2e9 (the units of jaxcnn plan --memory); 0: unlimited",
    )

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, algorithms: Any) -> Any:
        if not isinstance(algorithms, str | Mapping) and not algorithms:
            fail("the list of algorithms is empty")
        for sub, placement in _placements(algorithms):
            parse_placement_text(placement, sub)
        return algorithms

    @field_validator("options")
    @classmethod
    def _positive_width(cls, options: Mapping[str, Any]) -> Mapping[str, Any]:
        width = options.get("width", 1.0)
        if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
            fail(
                f"must be a finite number > 0 (the channel multiplier of every model), got {width!r}",
                ".width",
            )
        return options

    def placements(self) -> list[tuple[str, str]]:
        """``(key suffix, placement)`` of every placement string in ``algorithms`` (none for ``auto``):
        ``("", "data")``, ``("[1]", "2d")`` or ``(".conv1", "3d@n=2,k=2,c=2")``."""
        return _placements(self.algorithms)


def _placements(algorithms: Any) -> list[tuple[str, str]]:
    if isinstance(algorithms, str):
        return [] if algorithms == "auto" else [("", algorithms)]
    if isinstance(algorithms, Mapping):
        return [(f".{k}", v) for k, v in algorithms.items()]
    return [(f"[{i}]", v) for i, v in enumerate(algorithms)]


def parse_placement_text(placement: str, sub: str = "") -> tuple[str, dict[str, int] | None]:
    """Checks a placement string's syntax without a mesh (see :mod:`jaxcnn.nn.placement`).

    Args:
      placement: ``"3d"`` or ``"3d@n=2,k=2,c=2"``.
      sub: key suffix for the error, e.g. ``".conv1"``.

    Returns:
      ``(algorithm, {axis: size} with every axis, or None without an "@" shape)``.

    Raises:
      PydanticCustomError: (inside validation) unknown algorithm, a malformed shape (unknown or
        repeated axis, a size that is not an int >= 1), or a shape with an axis the algorithm does not use.
    """
    import jaxcnn
    from jaxcnn import algorithms

    valid = tuple(jaxcnn.ALGORITHMS)
    name, at, shape = placement.partition("@")
    if name not in valid:
        quoting = (
            " (a placement with a layer mesh inside a YAML [list] or {mapping} needs quotes: "
            "['3d@n=2,k=2,c=2'], else YAML splits it at the commas)"
            if "=" in name
            else ""
        )
        fail(
            f"unknown algorithm {placement!r}; valid algorithms are {valid}, optionally with a layer "
            f"mesh such as '3d@n=2,k=2,c=2'{quoting}",
            sub,
        )
    if not at:
        return name, None
    sizes = dict.fromkeys(MESH_AXES, 1)
    seen: set[str] = set()
    for item in shape.split(","):
        axis, _, value = (part.strip() for part in item.partition("="))
        problem = (
            f"unknown axis {axis!r}"
            if axis not in MESH_AXES
            else f"axis {axis!r} given twice"
            if axis in seen
            else f"size {value!r} of axis {axis!r} is not an int >= 1"
            if not value.isdigit() or int(value) < 1
            else None
        )
        if problem:
            fail(
                f"bad layer mesh in placement {placement!r}: {problem}; expected comma-separated "
                f"axis=size items with axes from {', '.join(MESH_AXES)} and sizes >= 1, e.g. "
                "'3d@n=2,k=2,c=2'",
                sub,
            )
        seen.add(axis)
        sizes[axis] = int(value)
    try:
        algorithms.get(name).check_mesh(sizes)
    except ValueError as e:
        fail(f"placement {placement!r}: {e}", sub)
    return name, sizes


__all__ = ["MESH_AXES", "SEGMENTATION_MODELS", "ModelConfig", "OptionValue", "parse_placement_text"]
