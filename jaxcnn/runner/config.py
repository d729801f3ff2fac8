"""The run config: one frozen, typed, validated object built from YAML and ``key.sub=value`` overrides.

Config flow (see ``/work/shared/CONVENTIONS.md``, "Config flow"):

1. the YAML file; its optional ``base_config:`` (a path relative to the file) is loaded first and the
   file is deep-merged on top, recursively (a chain of bases is fine, a cycle is an error);
2. command-line overrides ``key.sub=value`` (the value is parsed as YAML, so ``3``, ``1e-3``,
   ``true``, ``[a, b]`` and ``{conv1: 3d}`` have their natural types), applied in order;
3. :func:`typed.build` turns the merged mapping into :class:`Config`: unknown keys, wrong types and bad
   values are :class:`ConfigError` s naming the key and the valid choices.

Sections: ``model`` (:class:`ModelConfig`), ``mesh`` (:class:`MeshConfig`), ``data``
(:class:`DataConfig`), ``train`` (:class:`TrainConfig`), ``optimizer`` (:class:`OptimizerConfig`),
``checkpoint`` (:class:`CheckpointConfig`). ``configs/base.yaml`` lists every key with its default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from jaxcnn.runner import typed
from jaxcnn.runner.typed import ConfigError
from jaxcnn.runner.yaml_io import apply_overrides, load_yaml, parse_override

MODEL_NAMES = ("small_cnn", "resnet18", "resnet50", "vgg16")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network to train and how its convolutions are distributed.

    Attributes:
      name: network from ``jaxcnn.models`` (small_cnn, resnet18, resnet50, vgg16).
      algorithms: distributed convolution algorithm(s): one name for every conv layer (``data``), a list
        with one name per conv layer in order (``jaxcnn.models.conv_layer_names``), a mapping
        ``{layer_name: algorithm}`` (key ``"*"``: the default for layers not listed), or ``auto`` to
        let ``jaxcnn.plan_network`` choose (when available). A name may
        carry its own arrangement of the same devices, ``"3d@n=2,k=2,c=2"`` (see
        :mod:`jaxcnn.nn.placement`), so layers can mix algorithms that split different mesh axes.
      dtype: computation dtype (``float32`` or ``bfloat16``; parameters and logits stay float32).
      options: extra keyword arguments of the model's constructor, e.g. ``{width: 32}`` or
        ``{small_images: true}`` for the ResNets on 32x32 images.
      plan_memory_bytes: per-device memory budget of each layer for ``algorithms: auto`` (0: unlimited).
    """

    name: Literal["small_cnn", "resnet18", "resnet50", "vgg16"] = "small_cnn"
    algorithms: str | tuple[str, ...] | Mapping[str, str] = "data"
    dtype: Literal["float32", "bfloat16"] = "float32"
    options: Mapping[str, int | float | bool | str] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    plan_memory_bytes: float = 0.0

    def __post_init__(self) -> None:
        import jaxcnn

        valid = tuple(jaxcnn.ALGORITHMS)
        if isinstance(self.algorithms, str):
            if self.algorithms == "auto":
                _check(
                    hasattr(jaxcnn, "plan_network"),
                    "model.algorithms: 'auto' is not available (jaxcnn.plan_network does not exist in "
                    f"this version); give an algorithm from {valid}, a list or a {{layer: algorithm}} "
                    "mapping",
                )
                return
            names = [("model.algorithms", self.algorithms)]
        elif isinstance(self.algorithms, Mapping):
            names = [(f"model.algorithms.{k}", v) for k, v in self.algorithms.items()]
        else:
            _check(len(self.algorithms) > 0, "model.algorithms: the list of algorithms is empty")
            names = [(f"model.algorithms[{i}]", v) for i, v in enumerate(self.algorithms)]
        for key, alg in names:
            _check(
                alg.partition("@")[0] in valid,
                f"{key}: unknown algorithm {alg!r}; valid algorithms are {valid}, optionally with a layer "
                "mesh such as '3d@n=2,k=2,c=2'",
            )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes, one per jaxcnn mesh axis (see :mod:`jaxcnn.mesh`).

    Exactly the product of the sizes must equal the number of devices; one size may be ``-1``, meaning
    "the rest of the devices".

    The run's input batches (train and eval) are sharded ``P("n")`` on this mesh: split over ``n``,
    replicated over the other axes, so ``n`` must divide ``train.batch_size`` and
    ``train.eval_batch_size``. With ``model.algorithms: auto`` and ``n: -1`` a batch smaller than (or
    not divisible by) the device count still works: ``n`` becomes the largest divisor of the rest of the
    devices that divides the batches, and the remaining factor goes to ``c`` (see :meth:`resolve`).

    Attributes:
      n: batch axis.
      h: output-row axis.
      w: output-column axis.
      k: output-channel axis.
      c: input-channel axis (the 2.5d replication depth).
    """

    n: int = -1
    h: int = 1
    w: int = 1
    k: int = 1
    c: int = 1

    def __post_init__(self) -> None:
        sizes = self.sizes()
        for axis, size in sizes.items():
            _check(size == -1 or size >= 1, f"mesh.{axis}: must be a positive int or -1, got {size}")
        wild = [a for a, s in sizes.items() if s == -1]
        _check(len(wild) <= 1, f"mesh: at most one axis may be -1, got -1 for {', '.join(wild)}")

    def sizes(self) -> dict[str, int]:
        """``{axis: size}`` as configured (may contain one -1)."""
        return {a: getattr(self, a) for a in ("n", "h", "w", "k", "c")}

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
            _check(
                num_devices % fixed == 0,
                f"mesh {sizes}: the fixed sizes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices, so mesh.{wild[0]}=-1 has no valid size",
            )
            sizes[wild[0]] = num_devices // fixed
        _check(
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
        fit = math.gcd(n, *batches.values())
        other = wild[0] if wild and wild[0] != "n" else None
        if other:
            mesh = f"mesh.n={fit} (mesh.{other}=-1 takes the rest) and placements that use {other}"
        else:
            mesh = f"mesh.n={fit} with mesh.c={sizes['c'] * (n // fit)} and a placement that uses c"
        raise ConfigError(
            f"{key}={bad} does not divide over mesh.n={n} ({where}); the input batch is split over "
            f"mesh.n, so use {mesh}, or {auto_hint}, or a batch divisible by {n}"
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from. Images are NHWC float32 scaled to [0, 1] then standardised.

    Attributes:
      source: ``digits`` (scikit-learn's bundled 8x8 digits), ``synthetic`` (random images and labels,
        for benchmarks), ``npz`` (arrays ``x_train, y_train, x_test, y_test`` in ``path``) or
        ``folder`` (``path/<class>/*.png|jpg``, one subfolder per class).
      path: file (npz) or directory (folder); ignored otherwise.
      test_fraction: fraction held out as the test split (digits, folder), fixed by ``seed``.
      image_size: ``[H, W]``: synthetic image size; for folder images, the size to resize to
        (needs Pillow) or ``[]`` to keep the files' own (equal) size.
      channels: synthetic image channels.
      num_classes: synthetic label count.
      num_train: synthetic training-set size.
      num_test: synthetic test-set size.
    """

    source: Literal["digits", "synthetic", "npz", "folder"] = "digits"
    path: str = ""
    test_fraction: float = 0.2
    image_size: tuple[int, ...] = ()
    channels: int = 3
    num_classes: int = 10
    num_train: int = 1024
    num_test: int = 256

    def __post_init__(self) -> None:
        _check(
            0.0 < self.test_fraction < 1.0, f"data.test_fraction: must be in (0, 1), got {self.test_fraction}"
        )
        _check(
            len(self.image_size) in (0, 2) and all(s > 0 for s in self.image_size),
            f"data.image_size: expected [] or [H, W] with positive sizes, got {list(self.image_size)}",
        )
        if self.source in ("npz", "folder"):
            _check(bool(self.path), f"data.path: required for data.source={self.source!r}")
        if self.source == "synthetic":
            _check(len(self.image_size) == 2, "data.image_size: synthetic data needs [H, W]")
        for key in ("channels", "num_classes", "num_train", "num_test"):
            _check(getattr(self, key) >= 1, f"data.{key}: must be >= 1, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
      steps: optimizer steps in total (a resumed run continues up to this many).
      batch_size: global batch size (all devices, all hosts); divisible by mesh.n (with mesh.n=-1 and
        ``model.algorithms: auto`` any size works: see :meth:`MeshConfig.resolve`). It may be smaller
        than the device count: devices that share a batch shard hold the same rows (replicas), and
        each process loads the rows its devices hold.
      eval_every: evaluate on the test split every this many steps (and at the end); 0 = only at the end.
      eval_batch_size: global batch size for evaluation (the last batch is padded and masked); divisible
        by mesh.n like ``batch_size``.
      log_every: fetch metrics, append to ``metrics.jsonl`` and check for NaN/inf every this many steps.
    """

    steps: int = 500
    batch_size: int = 64
    eval_every: int = 100
    eval_batch_size: int = 128
    log_every: int = 10

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_batch_size", "log_every"):
            _check(getattr(self, key) >= 1, f"train.{key}: must be >= 1, got {getattr(self, key)}")
        _check(self.eval_every >= 0, f"train.eval_every: must be >= 0, got {self.eval_every}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optax optimizer and learning-rate schedule.

    Attributes:
      name: ``sgd``, ``momentum`` (SGD with Nesterov-free momentum), ``adam`` or ``adamw``.
      learning_rate: peak learning rate.
      schedule: ``constant``, ``cosine`` (decay to ``final_lr_fraction`` over ``train.steps``) or
        ``warmup_cosine`` (linear warmup over ``warmup_steps`` then cosine).
      warmup_steps: warmup length for ``warmup_cosine``.
      final_lr_fraction: final learning rate as a fraction of the peak (cosine schedules).
      momentum: momentum coefficient (``momentum``).
      b1: Adam beta1.
      b2: Adam beta2.
      weight_decay: decoupled weight decay (``adamw``) or L2 added to the gradient (others); 0 = off.
      grad_clip_norm: clip the global gradient norm to this value; 0 = off.
    """

    name: Literal["sgd", "momentum", "adam", "adamw"] = "adam"
    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine", "warmup_cosine"] = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, f"optimizer.learning_rate: must be > 0, got {self.learning_rate}")
        _check(self.warmup_steps >= 0, f"optimizer.warmup_steps: must be >= 0, got {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"optimizer.weight_decay: must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip_norm >= 0, f"optimizer.grad_clip_norm: must be >= 0, got {self.grad_clip_norm}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under ``<run dir>/checkpoints``.

    Attributes:
      every: save every this many steps (and always at the end); 0 = only at the end.
      max_to_keep: keep this many most recent checkpoints.
      enabled: write checkpoints at all.
    """

    every: int = 100
    max_to_keep: int = 3
    enabled: bool = True

    def __post_init__(self) -> None:
        _check(self.every >= 0, f"checkpoint.every: must be >= 0, got {self.every}")
        _check(self.max_to_keep >= 1, f"checkpoint.max_to_keep: must be >= 1, got {self.max_to_keep}")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run.

    Attributes:
      name: run name; outputs go to ``<output_dir>/<name>``.
      output_dir: parent directory of run directories.
      seed: seed for parameters, data split and shuffling (per epoch).
      resume: continue from the latest checkpoint in the run directory (bit-identical to not stopping).
      distributed: call ``jax.distributed.initialize()`` first (multi-host; arguments from the environment).
      model: see :class:`ModelConfig`.
      mesh: see :class:`MeshConfig`.
      data: see :class:`DataConfig`.
      train: see :class:`TrainConfig`.
      optimizer: see :class:`OptimizerConfig`.
      checkpoint: see :class:`CheckpointConfig`.
    """

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = False
    distributed: bool = False
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and "/" not in self.name,
            f"name: must be a non-empty file name, got {self.name!r}",
        )

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
        return typed.to_plain(self)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Validates plain data into a :class:`Config` (see :func:`typed.build`)."""
    return typed.build(Config, data)


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
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "save_config",
]
