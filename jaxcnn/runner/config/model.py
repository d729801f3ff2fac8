"""The ``model`` section of the run config.

Re-exported by :mod:`jaxcnn.runner.config`. A placement's syntax, algorithm and axis use are checked
here, at load time, by the one placement parser (:func:`jaxcnn.nn.placement.parse_placement_text`,
its errors wrapped with the key: :func:`placement_sizes`); :meth:`jaxcnn.runner.config.Config` checks what
needs the mesh sizes (a layer mesh must use all the devices), and the model build what needs the network
(layer names, list length: :func:`jaxcnn.runner.setup.model_builder`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from jaxcnn import models
from jaxcnn.dtypes import Dtypes
from jaxcnn.nn.placement import parse_placement_text
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

#: Every model name, read from the registry (jaxcnn.models.MODELS).
ModelName = Literal[models.model_names()]  # type: ignore[valid-type]


def _finite_option(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"must be finite, got {value!r}")
    return value


OptionValue = Annotated[
    Int | Float | Bool | Str | tuple[Int, ...] | tuple[tuple[Int, ...], ...], AfterValidator(_finite_option)
]
"""A ``model.options`` value: int, finite float, bool, str, or a list of ints or of lists of ints (a ResNet's
``stage_sizes``, MobileNetV2's ``settings``)."""


class ModelConfig(Section):
    """Which network to train and how its convolutions are distributed."""

    key_path: ClassVar[str] = "model"

    name: ModelName = Field(
        "small_cnn",
        description="network from the registry jaxcnn.models.MODELS: the classifiers "
        f"{', '.join(models.model_names('classification'))}, or the segmentation models "
        f"{', '.join(models.model_names('segmentation'))} (one label per voxel, needs data.source: "
        "ellipsoids)",
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
        "float32",
        description="computation dtype: activations, halos, gathered panels and layout changes "
        "(parameters, optimizer state, BatchNorm statistics, logits and loss stay float32)",
    )
    reduce_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype the convolutions' sums travel in: the reduce-scatters of partial outputs and "
        "gradients, the all-reduce of a replicated kernel's gradient (docs/mixed_precision.md: "
        "bfloat16 halves those bytes on GPU/TPU at a measured cost in accuracy; XLA:CPU carries "
        "16-bit sums as float32 either way)",
    )
    options: FrozenMapping[Str, OptionValue] = Field(
        default_factory=FrozenDict,
        description="extra keyword arguments of the model's constructor, e.g. {width: 0.5} (channel "
        "multiplier), {small_images: true} for the ResNets and MobileNetV2 on 32x32 images, "
        "{stage_sizes: [2, 1, 1, 1]} (blocks per stage of a ResNet) or {settings: [[1, 16, 1, 1], "
        "[6, 24, 2, 2]]} (MobileNetV2's stages (t, c, n, s))",
    )
    plan_memory_bytes: ByteSize = Field(
        0,
        description="algorithms: auto only: per-device memory budget of the whole train step (its "
        "predicted peak, Adam's state estimated: jaxcnn.planner.step_memory), in bytes or as 16GiB, "
        "512MiB, 2e9 (the units of jaxcnn plan --memory); 0: unlimited",
    )

    plan_objective: Literal["time", "bytes"] = Field(
        "time",
        description="algorithms: auto (and jaxcnn plan's --objective): minimise the step's predicted "
        "seconds (time: needs the backend's timing profile, jaxcnn calibrate; without one the run says "
        "so in one line and plans by bytes) or its predicted bytes per device (bytes)",
    )

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, algorithms: Any) -> Any:
        if not isinstance(algorithms, str | Mapping) and not algorithms:
            fail("the list of algorithms is empty")
        for sub, placement in _placements(algorithms):
            placement_sizes(placement, sub)
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

    @property
    def dtypes(self) -> Dtypes:
        """``dtype`` and ``reduce_dtype``, as the planner and the predictions take them."""
        return Dtypes(self.dtype, self.reduce_dtype)


def _placements(algorithms: Any) -> list[tuple[str, str]]:
    if isinstance(algorithms, str):
        return [] if algorithms == "auto" else [("", algorithms)]
    if isinstance(algorithms, Mapping):
        return [(f".{k}", v) for k, v in algorithms.items()]
    return [(f"[{i}]", v) for i, v in enumerate(algorithms)]


def placement_sizes(placement: str, key: str) -> tuple[str, dict[str, int] | None]:
    """:func:`jaxcnn.nn.placement.parse_placement_text` inside config validation: its error becomes
    the one-line error of ``key`` (e.g. ``"model.algorithms.conv1"``; relative to the section, as
    ``".conv1"``, inside the section's own validators)."""
    try:
        return parse_placement_text(placement)
    except ValueError as e:
        fail(str(e), key)


__all__ = ["ModelConfig", "ModelName", "OptionValue", "placement_sizes"]
