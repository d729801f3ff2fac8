"""The run config: one frozen, typed, validated object built from YAML and ``key.sub=value`` overrides.

Config flow (``docs/conventions.md``, "Config flow"):

1. the YAML file; its optional ``base_config:`` (a path relative to the file) is loaded first and the
   file is deep-merged on top, recursively (a chain of bases is fine, a cycle is an error);
2. command-line overrides ``key.sub=value`` (the value is parsed as YAML, so ``3``, ``1e-3``,
   ``true``, ``[a, b]`` and ``{conv1: 3d}`` have their natural types), applied in order
   (:mod:`jaxcnn.yaml_io`);
3. pydantic validates the merged mapping into :class:`Config`: unknown keys, wrong types and bad values
   (every float finite and bounded) are one-line :class:`ConfigError` s naming the key and the valid
   choices (:mod:`jaxcnn.runner.config.typed`). What needs only the config is checked here, before JAX starts:
   an explicit ``mesh.n`` must divide the batches, placement strings must parse, and with every mesh
   size explicit each layer mesh must use all the devices. What needs the devices or the network is
   checked when the mesh and model are built (:mod:`jaxcnn.runner.setup`), and whether the model fits
   the devices' memory before it is allocated (:mod:`jaxcnn.runner.fit`).

The models below (the ``model`` section in :mod:`jaxcnn.runner.config.model`, the training sections in
:mod:`jaxcnn.runner.config.train`, all re-exported here) are the one definition of every key: its type,
default, constraints and ``Field(description=...)``. ``configs/base.yaml`` lists every key with its
default (a test checks it against these models); ``Config.model_json_schema()`` gives the whole schema.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from jaxcnn import algorithms, models
from jaxcnn.runner.config.cluster import ClusterConfig
from jaxcnn.runner.config.data import CLASSIFICATION_SOURCES, SEGMENTATION_SOURCES, DataConfig
from jaxcnn.runner.config.mesh import MeshConfig
from jaxcnn.runner.config.model import ModelConfig, placement_sizes
from jaxcnn.runner.config.train import CheckpointConfig, OptimizerConfig, TrainConfig
from jaxcnn.runner.config.typed import Bool, Int, Section, Str, fail, to_plain, validate
from jaxcnn.yaml_io import apply_overrides, load_yaml


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
        "stopping); the config must agree with the run's saved config.yaml on what the checkpoints hold "
        "(jaxcnn.runner.run_directory.RESUME_KEYS), else the run stops before anything is read. false: a "
        "new run, which stops if the run directory already holds checkpoints (see overwrite)",
    )
    overwrite: Bool = Field(
        False,
        description="start over in a run directory that already holds checkpoints: its checkpoints, "
        "metrics, summary and plots are deleted and the run starts at step 0 (without it, such a "
        "directory stops the run with resume=false)",
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
        model_task = models.task_of(self.model.name)
        if model_task != self.data.task:
            wanted = (
                f"a segmentation source ({', '.join(SEGMENTATION_SOURCES)})"
                if model_task == "segmentation"
                else f"one of the classification sources ({', '.join(CLASSIFICATION_SOURCES)})"
            )
            others = (
                f"a segmentation model ({', '.join(models.model_names('segmentation'))})"
                if self.data.task == "segmentation"
                else f"a classifier ({', '.join(models.model_names('classification'))})"
            )
            fail(
                f"model {self.model.name!r} does {model_task} but data.source={self.data.source!r} is a "
                f"{self.data.task} dataset; use {wanted}, or {others}",
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
            name, shape = placement_sizes(placement, f"model.algorithms{sub}")
            if shape is None:
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

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> Config:
        """``resume`` keeps the run directory's checkpoints, ``overwrite`` deletes them: not both."""
        if self.resume and self.overwrite:
            fail(
                "resume=true continues the run in the run directory and overwrite=true deletes it; set one "
                "of them",
                "overwrite",
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


__all__ = ["Config", "from_dict", "load_config", "save_config"]
