"""The run config: one frozen, typed, validated object built from YAML and ``key.sub=value`` overrides.

Config flow (``docs/conventions.md``, "Config flow"):

1. the YAML file; its optional ``base_config:`` (a path relative to the file) is loaded first and the
   file is deep-merged on top, recursively (a chain of bases is fine, a cycle is an error);
2. command-line overrides ``key.sub=value`` (the value is parsed as YAML, so ``3``, ``1e-3``,
   ``true``, ``[a, b]`` and ``{conv1: 3d}`` have their natural types), applied in order
   (:mod:`jaxcnn.yaml_io`);
3. pydantic validates the merged mapping into :class:`Config`: unknown keys, wrong types and bad values
   (every float finite and bounded) are one-line :class:`ConfigError` s naming the key and the valid
   choices (:mod:`jaxcnn.runner.typed`). What needs only the config is checked here, before JAX starts:
   an explicit ``mesh.n`` must divide the batches, placement strings must parse, and with every mesh
   size explicit each layer mesh must use all the devices. What needs the devices or the network is
   checked when the mesh and model are built (:mod:`jaxcnn.runner.setup`), and whether the model fits
   the devices' memory before it is allocated (:mod:`jaxcnn.runner.fit`).

The models below (the ``model`` section in :mod:`jaxcnn.runner.config_model`, the training sections in
:mod:`jaxcnn.runner.config_train`, all re-exported here) are the one definition of every key: its type,
default, constraints and ``Field(description=...)``. ``configs/base.yaml`` lists every key with its
default (a test checks it against these models); ``Config.model_json_schema()`` gives the whole schema.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, Field, Strict, field_validator, model_validator

from jaxcnn.runner.cluster import ClusterConfig
from jaxcnn.runner.config_model import MESH_AXES, ModelConfig, parse_placement_text
from jaxcnn.runner.config_train import (
    CheckpointConfig,
    Fraction,
    NonNegativeFloat,
    OptimizerConfig,
    TrainConfig,
    bounded_float,
)
from jaxcnn.runner.typed import (
    Bool,
    ConfigError,
    Int,
    NonNegativeInt,
    PositiveInt,
    Section,
    Str,
    check,
    fail,
    to_plain,
    validate,
)
from jaxcnn.yaml_io import apply_overrides, load_yaml, parse_override


def _mesh_size(size: int) -> int:
    if size != -1 and size < 1:
        fail(f"must be a positive int or -1, got {size}")
    return size


MeshSize = Annotated[int, Strict(), AfterValidator(_mesh_size)]


class MeshConfig(Section):
    """Device mesh sizes, one per jaxcnn mesh axis (see :mod:`jaxcnn.mesh`).

    Exactly the product of the sizes must equal the number of devices; one size may be ``-1``, meaning
    "the rest of the devices".

    The run's input batches (train and eval) are sharded ``P("n")`` on this mesh: split over ``n``,
    replicated over the other axes, so ``n`` must divide ``train.batch_size`` and
    ``train.eval_batch_size`` (an explicit ``n`` is checked when the config loads,
    :meth:`check_batches`; ``-1`` once the devices are known, :meth:`resolve`). With
    ``model.algorithms: auto`` and ``n: -1`` a batch smaller than (or not divisible by) the device count
    still works: ``n`` becomes the largest divisor of the rest of the devices that divides the batches,
    and the remaining factor goes to ``c`` (see :meth:`resolve`).
    """

    key_path: ClassVar[str] = "mesh"

    n: MeshSize = Field(-1, description="batch axis")
    d: MeshSize = Field(1, description="output-depth axis (3-D convolutions only)")
    h: MeshSize = Field(1, description="output-row axis")
    w: MeshSize = Field(1, description="output-column axis")
    k: MeshSize = Field(1, description="output-channel axis")
    c: MeshSize = Field(1, description="input-channel axis (the 2.5d replication depth)")

    @model_validator(mode="after")
    def _one_wildcard(self) -> MeshConfig:
        wild = [a for a, s in self.sizes().items() if s == -1]
        if len(wild) > 1:
            fail(f"at most one axis may be -1, got -1 for {', '.join(wild)}")
        return self

    def sizes(self) -> dict[str, int]:
        """``{axis: size}`` as configured (may contain one -1)."""
        return {a: getattr(self, a) for a in MESH_AXES}

    def resolve(
        self,
        num_devices: int,
        batch_size: int | None = None,
        *,
        auto: bool = False,
        eval_batch_size: int | None = None,
    ) -> dict[str, int]:
        """Concrete axis sizes for ``num_devices`` devices (and, if given, the global batch sizes).

        Args:
          num_devices: devices of the run (``jax.device_count()``).
          batch_size: ``train.batch_size``; None skips the batch checks.
          auto: ``model.algorithms`` is ``auto``.
          eval_batch_size: ``train.eval_batch_size``; None skips its check.

        With ``n: -1`` and ``auto``, when the batches do not divide over the rest of the devices ``R``,
        ``n`` becomes ``gcd(R, batch_size, eval_batch_size)`` and the factor ``R / n`` multiplies ``c``
        (e.g. batch 32 on 64 devices: ``n=32, c=2``). This is free for ``auto``: every convolution gets
        its own arrangement of all the devices (a ``"alg@n=..,c=.."`` placement), so the run mesh only
        decides how the input batch is laid out - split over ``n``, replicated over the rest - before the
        first convolution reshards it to its own layout (as it does for any run mesh).

        Raises:
          ConfigError: the product does not equal ``num_devices``, the fixed sizes do not divide it, or
            (not ``auto``, or an explicit ``n``) ``n`` does not divide a batch size; the message says
            which mesh would work.
        """
        sizes = self.sizes()
        fixed = math.prod(s for s in sizes.values() if s != -1)
        wild = [a for a, s in sizes.items() if s == -1]
        if wild:
            check(
                num_devices % fixed == 0,
                f"mesh {sizes}: the fixed sizes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices, so mesh.{wild[0]}=-1 has no valid size",
            )
            sizes[wild[0]] = num_devices // fixed
        check(
            math.prod(sizes.values()) == num_devices,
            f"mesh {sizes}: product {math.prod(sizes.values())} != {num_devices} available devices; "
            "make the sizes multiply to the device count or set one axis to -1 (on a CPU-only machine, "
            "`jaxcnn train --cpu-devices N ...` gives the CPU N virtual devices)",
        )
        if batch_size is None:
            return sizes
        n = sizes["n"]
        batches = {"train.batch_size": batch_size}
        if eval_batch_size is not None:
            batches["train.eval_batch_size"] = eval_batch_size
        if all(b % n == 0 for b in batches.values()):
            return sizes
        if auto and self.n == -1:
            fit = math.gcd(n, *batches.values())
            sizes["n"], sizes["c"] = fit, sizes["c"] * (n // fit)
            return sizes
        key, bad = next((k, b) for k, b in batches.items() if b % n)
        if self.n != -1:
            where = f"{num_devices} devices"
        elif fixed == 1:
            where = f"mesh.n=-1: all {num_devices} devices"
        else:
            where = f"mesh.n=-1: the {n} of {num_devices} devices the other axes leave"
        auto_hint = "model.algorithms=auto" if self.n == -1 else "mesh.n=-1 with model.algorithms=auto"
        if key == "train.eval_batch_size":
            raise ConfigError(
                f"train.eval_batch_size={bad} does not divide over mesh.n={n} ({where}); eval batches are "
                f"split over mesh.n like train batches: use a multiple of {n} (the last eval batch is "
                f"padded and masked), or {auto_hint}"
            )
        mesh = self._mesh_hint(n, sizes["c"], math.gcd(n, *batches.values()))
        raise ConfigError(
            f"{key}={bad} does not divide over mesh.n={n} ({where}); the input batch is split over "
            f"mesh.n, so use {mesh}, or {auto_hint}, or a batch divisible by {n}"
        )

    def _mesh_hint(self, n: int, c: int, fit: int) -> str:
        """A mesh whose ``n`` is ``fit`` (a divisor of ``n`` that divides the batches), same devices."""
        other = next((a for a, s in self.sizes().items() if s == -1 and a != "n"), None)
        if other:
            return f"mesh.n={fit} (mesh.{other}=-1 takes the rest) and placements that use {other}"
        return f"mesh.n={fit} with mesh.c={c * (n // fit)} and a placement that uses c"

    def check_batches(self, batch_size: int, eval_batch_size: int) -> None:
        """The load-time half of :meth:`resolve`'s batch check: an explicit ``mesh.n`` must divide both
        batch sizes, whatever the device count (``-1`` is checked by :meth:`resolve`, once the devices
        are known).

        Raises:
          PydanticCustomError: (inside validation) naming the batch key, ``mesh.n``, the nearest valid
            batches and a mesh that would work.
        """
        n = self.n
        if n == -1:
            return
        for key, bad in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if bad % n == 0:
                continue
            near = " or ".join(str(b) for b in (bad // n * n, bad // n * n + n) if b > 0)
            if key == "eval_batch_size":
                why = "eval batches are split over mesh.n like train batches (the last is padded and masked)"
                hint = f"use {near}, or mesh.n=-1 with model.algorithms=auto"
            else:
                why = "the input batch is split over mesh.n (each process loads the rows its devices hold)"
                mesh = self._mesh_hint(n, max(self.c, 1), math.gcd(n, batch_size, eval_batch_size))
                hint = f"use {near}, or {mesh}, or mesh.n=-1 with model.algorithms=auto"
            fail(f"must be a multiple of mesh.n={n}, got {bad}: {why}; {hint}", f"train.{key}")


SEGMENTATION_SOURCES = ("ellipsoids",)
CLASSIFICATION_SOURCES = ("digits", "synthetic", "npz", "folder", "array_record")


class DataConfig(Section):
    """Where images come from. Images are NHWC float32 scaled to [0, 1] then standardised."""

    key_path: ClassVar[str] = "data"

    source: Literal["digits", "synthetic", "npz", "folder", "array_record", "ellipsoids"] = Field(
        "digits",
        description="digits (scikit-learn's bundled 8x8 digits), synthetic (random images and labels, "
        "for benchmarks), npz (arrays x_train, y_train, x_test, y_test in path), folder "
        "(path/<class>/*.png|jpg, one subfolder per class), array_record (written by jaxcnn data "
        "convert; read from disk by row, never loaded whole) or ellipsoids (a generated segmentation "
        "task: noisy 2-D images or 3-D volumes of image_size with random ellipsoids, one label per "
        "voxel; needs a segmentation model such as unet)",
    )
    path: Str = Field(
        "",
        description="file (npz), directory (folder) or the OUT.array_record name given to jaxcnn data "
        "convert (array_record: OUT.array_record.json, OUT-train.array_record, OUT-test.array_record); "
        "ignored otherwise",
    )
    test_fraction: Fraction = Field(
        0.2, description="fraction held out as the test split (digits, folder), fixed by seed"
    )
    image_size: tuple[Int, ...] = Field(
        (),
        description="[H, W]: synthetic image size; for folder images, the size to resize to (needs "
        "Pillow) or [] to keep the files' own (equal) size; ellipsoids: [H, W] images or [D, H, W] "
        "volumes",
    )
    channels: PositiveInt = Field(3, description="synthetic image channels")
    num_classes: PositiveInt = Field(10, description="synthetic label count")
    num_train: PositiveInt = Field(1024, description="synthetic / ellipsoids training-set size")
    num_test: PositiveInt = Field(256, description="synthetic / ellipsoids test-set size (held out)")
    num_ellipsoids: tuple[PositiveInt, PositiveInt] = Field(
        (1, 3), description="ellipsoids only: [min, max] ellipsoids per image or volume"
    )
    noise_std: NonNegativeFloat = Field(
        0.5,
        description="ellipsoids only: standard deviation of the background noise (ellipsoids add an "
        "intensity offset in [0.75, 1.25])",
    )
    workers: NonNegativeInt = Field(
        0,
        description="grain worker processes reading training batches, per process (0: read in the "
        "training process)",
    )
    prefetch: PositiveInt = Field(
        2, description="training batches read ahead, and read threads, per process (and per worker)"
    )

    @field_validator("image_size")
    @classmethod
    def _h_w(cls, size: tuple[int, ...]) -> tuple[int, ...]:
        if len(size) not in (0, 2, 3) or not all(s > 0 for s in size):
            fail(f"expected [] or [H, W] with positive sizes (ellipsoids: also [D, H, W]), got {list(size)}")
        return size

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source in ("npz", "folder", "array_record") and not self.path:
            fail(f"required for data.source={self.source!r}", ".path")
        if self.source == "ellipsoids":
            if len(self.image_size) not in (2, 3):
                fail("ellipsoids need [H, W] (2-D images) or [D, H, W] (3-D volumes)", ".image_size")
            if self.num_ellipsoids[0] > self.num_ellipsoids[1]:
                fail(
                    f"must be [min, max] with min <= max, got {list(self.num_ellipsoids)}", ".num_ellipsoids"
                )
        elif len(self.image_size) == 3:
            fail(f"[D, H, W] volumes are for data.source='ellipsoids', not {self.source!r}", ".image_size")
        if self.source == "synthetic" and len(self.image_size) != 2:
            fail("synthetic data needs [H, W]", ".image_size")
        return self

    @property
    def task(self) -> str:
        """``"segmentation"`` (one label per voxel: ``ellipsoids``) or ``"classification"``."""
        return "segmentation" if self.source == "ellipsoids" else "classification"


class Config(Section):
    """A whole run: top-level keys and one section per concern."""

    name: Str = Field(
        "run",
        description="run name; outputs go to <output_dir>/<name> (config.yaml, metrics.jsonl, plots, "
        "checkpoints)",
    )
    output_dir: Str = Field("runs", description="parent directory of run directories")
    seed: Int = Field(0, description="seed for parameters, data split and shuffling (per epoch)")
    resume: Bool = Field(
        False,
        description="continue from the latest checkpoint in the run directory (bit-identical to not "
        "stopping); false starts over (deleting old checkpoints)",
    )
    distributed: Bool = Field(
        False,
        description="join a multi-process job first: jax.distributed.initialize() with the cluster "
        "section (auto-detected on TPU, SLURM, Open MPI)",
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="see ClusterConfig")
    model: ModelConfig = Field(default_factory=ModelConfig, description="see ModelConfig")
    mesh: MeshConfig = Field(default_factory=MeshConfig, description="see MeshConfig")
    data: DataConfig = Field(default_factory=DataConfig, description="see DataConfig")
    train: TrainConfig = Field(default_factory=TrainConfig, description="see TrainConfig")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="see OptimizerConfig")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="see CheckpointConfig")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section written with no value (``model:``) means all its defaults."""
        if isinstance(data, Mapping):
            sections = [
                k
                for k, f in cls.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
            ]
            return {k: {} if v is None and k in sections else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _task_fits(self) -> Config:
        """The model and the data agree on the task: a segmentation model (``unet``) needs per-voxel labels
        (``data.source: ellipsoids``), a classifier one label per image; the U-Net's ``spatial_dims``
        option matches the image rank."""
        from jaxcnn.runner.config_model import SEGMENTATION_MODELS

        model_task = "segmentation" if self.model.name in SEGMENTATION_MODELS else "classification"
        if model_task != self.data.task:
            wanted = (
                f"a segmentation source ({', '.join(SEGMENTATION_SOURCES)})"
                if model_task == "segmentation"
                else f"one of the classification sources ({', '.join(CLASSIFICATION_SOURCES)})"
            )
            models = (
                f"a segmentation model ({', '.join(SEGMENTATION_MODELS)})"
                if self.data.task == "segmentation"
                else "a classifier (small_cnn, resnet18, resnet50, vgg16)"
            )
            fail(
                f"model {self.model.name!r} does {model_task} but data.source={self.data.source!r} is a "
                f"{self.data.task} dataset; use {wanted}, or {models}",
                "model.name",
            )
        dims = self.model.options.get("spatial_dims", 2)
        if model_task == "segmentation" and dims != len(self.data.image_size):
            fail(
                f"model.options.spatial_dims={dims} but data.image_size={list(self.data.image_size)} has "
                f"{len(self.data.image_size)} sides; set spatial_dims to {len(self.data.image_size)}",
                "model.options.spatial_dims",
            )
        return self

    @model_validator(mode="after")
    def _mesh_fits(self) -> Config:
        """What can be checked against the mesh before JAX starts: an explicit ``mesh.n`` divides the
        batches; with every mesh size explicit, each layer mesh uses all the devices and each plain
        algorithm can run on the run mesh (with a ``-1`` these are checked when the model is built)."""
        self.mesh.check_batches(self.train.batch_size, self.train.eval_batch_size)
        sizes = self.mesh.sizes()
        known = {a: max(s, 1) for a, s in sizes.items()}  # a -1 axis counts as 1 for the axis-use check
        devices = math.prod(sizes.values()) if -1 not in sizes.values() else None
        for sub, placement in self.model.placements():
            name, shape = parse_placement_text(placement, f"model.algorithms{sub}")
            if shape is None:
                from jaxcnn import algorithms

                try:
                    algorithms.get(name).check_mesh(known)
                except ValueError as e:
                    fail(
                        f"placement {placement!r} runs on the run mesh {sizes}: {e}, or give the layer "
                        f"its own arrangement such as '{name}@n=...'",
                        f"model.algorithms{sub}",
                    )
            elif devices is not None and math.prod(shape.values()) != devices:
                used = math.prod(shape.values())
                example = (
                    f", e.g. '{name}@"
                    + ",".join(
                        f"{a}={s * devices // used if a == 'n' else s}"
                        for a, s in shape.items()
                        if s > 1 or a == "n"
                    )
                    + "'"
                    if devices % used == 0
                    else ""
                )
                fail(
                    f"placement {placement!r} uses {used} devices but the mesh {sizes} has {devices}; a "
                    f"layer mesh re-arranges all the run's devices, so its sizes must multiply to "
                    f"{devices}{example}",
                    f"model.algorithms{sub}",
                )
        return self

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        if not name or "/" in name:
            fail(f"must be a non-empty file name, got {name!r}")
        return name

    def mesh_sizes(self, num_devices: int) -> dict[str, int]:
        """The run mesh on ``num_devices`` devices: :meth:`MeshConfig.resolve` with this run's train and
        eval batch sizes and ``model.algorithms`` (``auto`` may move devices from ``n`` to ``c``).

        Raises:
          ConfigError: the mesh does not fit the devices or the batches (see :meth:`MeshConfig.resolve`).
        """
        return self.mesh.resolve(
            num_devices,
            self.train.batch_size,
            auto=isinstance(self.model.algorithms, str) and self.model.algorithms == "auto",
            eval_batch_size=self.train.eval_batch_size,
        )

    @property
    def run_dir(self) -> str:
        """``<output_dir>/<name>``."""
        return os.path.join(self.output_dir, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-safe data (loading it back gives an equal config)."""
        return to_plain(self)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Validates plain data into a :class:`Config`.

    Raises:
      ConfigError: the first problem, on one line, naming the key (see :func:`typed.explain`).
    """
    return validate(Config, data)


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """YAML file (+ ``base_config`` chain) + overrides → validated :class:`Config`.

    Args:
      path: the YAML config file.
      overrides: ``key.sub=value`` strings, applied in order after the file.

    Returns:
      The frozen config.

    Raises:
      ConfigError: any problem, with a message naming the key.
    """
    return from_dict(apply_overrides(load_yaml(path), overrides))


def save_config(config: Config, path: str) -> None:
    """Writes the resolved config as YAML (``load_config(path)`` gives it back)."""
    with open(path, "w") as f:
        f.write(f"# Resolved config of run {config.name!r}: jaxcnn train {path}\n")
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "apply_overrides",
    "bounded_float",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "parse_placement_text",
    "save_config",
]
