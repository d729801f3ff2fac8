"""Using a trained model: a run's checkpoint, restored on any devices, evaluated or asked for predictions.

>>> run = jaxcnn.runner.load("configs/default.yaml")          # or a run directory: load("runs/default")
>>> run.evaluate()["eval_accuracy"]                          # == summary.json's final_eval_accuracy
>>> out = run.predict(images)                                 # raw images, as the training data holds them
>>> out.predictions, out.probabilities                        # (N,) classes, (N, classes) softmax
>>> logits = nnx.jit(lambda m, x: m(x))(run.model, normalized)  # the nnx model itself, in eval mode

:func:`load` reads the run the config names (``<output_dir>/<name>``), after checking, with nothing
written, that it has a checkpoint and that the config agrees with the run's saved ``config.yaml`` on
what its checkpoints hold or mean (:func:`jaxcnn.runner.run_directory.check_readable`: the model, the
data and its split, the optimizer state's layout; not the mesh, the placements, the device count or
the batch sizes). It then builds the mesh, the data and the abstract model of the run's one preparation
(:func:`jaxcnn.runner.prepare.assemble`: nothing allocated, the train step never compiled) and restores
the newest checkpoint (or ``step``) into the model's shardings on *these* devices: a run trained on 8
devices with mixed placements is read on 1 device, or on another mesh or placement
(:class:`jaxcnn.runner.checkpoint.Checkpointer`, read-only: a run still training is left as it is;
only the parameters and statistics are read, never the optimizer state).

- :meth:`Loaded.evaluate` is the training loop's own evaluation (:func:`jaxcnn.runner.train.evaluate`
  with :func:`jaxcnn.runner.step.jit_eval_step`) on the test split: on the run's mesh it gives the run's
  final figures exactly; on another mesh only rounding differs (a logit within rounding of a tie could
  flip a prediction).
- :meth:`Loaded.predict` normalises raw images with the training set's mean and standard deviation and
  runs them in padded, sharded batches of ``train.eval_batch_size`` (the eval loop's batches,
  :func:`jaxcnn.runner.data.eval_batches`; the padding is dropped): class ids and softmax probabilities,
  per pixel / voxel for segmentation.

``jaxcnn eval`` and ``jaxcnn predict`` (:mod:`jaxcnn.runner.inference_cli`) are these two on the command
line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxcnn.runner import run_directory, setup
from jaxcnn.runner.checkpoint import Checkpointer, CheckpointError
from jaxcnn.runner.config import Config, from_dict, load_config
from jaxcnn.runner.data import Dataset, eval_batches
from jaxcnn.runner.data.inputs import as_batch
from jaxcnn.runner.prepare import assemble
from jaxcnn.runner.state import Graphs, TrainState, merge
from jaxcnn.runner.step import jit_eval_step, jit_predict_step
from jaxcnn.runner.train import evaluate
from jaxcnn.yaml_io import apply_overrides, load_yaml

#: The entries of the train state a reader restores (the optimizer state is never read).
READ = ("params", "rest")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A model's predictions for a batch of images.

    Attributes:
      predictions: int32 class ids, ``(N,)``; for segmentation one per pixel / voxel, ``(N, *spatial)``.
      probabilities: float32 softmax of the logits, ``(N, classes)`` or ``(N, *spatial, classes)``.
    """

    predictions: np.ndarray
    probabilities: np.ndarray


@dataclasses.dataclass
class Loaded:
    """A run's checkpoint restored on this process's devices (:func:`load`).

    Attributes:
      config: the config it was loaded with (the run's, with the mesh and placements of these devices).
      step: the checkpoint's step.
      mesh: the mesh it is placed on.
      graphs: the model's train and eval graphdefs.
      state: ``{"params", "rest"}``: the parameters and statistics, placed on ``mesh``.
      data: the run's dataset (its test split; the training set's mean and standard deviation).
      model: the nnx model in eval mode (``graphs.eval`` merged with ``state``): it takes normalised
        images ``(N, *image_shape)`` sharded as the batches (``P("n")``) and returns logits (call it
        under ``nnx.jit``: eagerly every distributed layer dispatches op by op).
    """

    config: Config
    step: int
    mesh: Mesh
    graphs: Graphs
    state: TrainState
    data: Dataset
    model: nnx.Module
    _steps: dict[str, Callable[..., Any]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One input image, ``(*spatial, channels)``."""
        return self.data.image_shape

    @property
    def task(self) -> str:
        """``"classification"`` or ``"segmentation"``."""
        return self.data.task

    def evaluate(self) -> dict[str, float]:
        """The test split's ``eval_accuracy`` and ``eval_loss`` (and ``eval_dice`` for segmentation), as
        the training loop computes them (:func:`jaxcnn.runner.train.evaluate`), in batches of
        ``train.eval_batch_size``."""
        if "eval" not in self._steps:
            self._steps["eval"] = jit_eval_step(self.graphs, self.state, self.mesh, self.task)
        return evaluate(
            self._steps["eval"], self.state, self.data, self.config.train.eval_batch_size, self.mesh
        )

    def predict(self, images: np.ndarray, batch_size: int | None = None) -> Predictions:
        """Class ids and probabilities for raw ``images`` (the training data's units: they are
        normalised here with the training set's mean and standard deviation).

        Args:
          images: ``(N, *image_shape)``; ``(N, *spatial)`` for one channel; one image or volume alone
            is a batch of one (:func:`jaxcnn.runner.data.inputs.as_batch`).
          batch_size: images per compiled step (default ``train.eval_batch_size``; a multiple of the
            mesh's ``n``); the last batch is padded and the padding dropped.

        Raises:
          InputError: the images do not have the run's shape (naming both), are not numeric or finite.
        """
        batch = as_batch(images, self.image_shape, "images")
        size = batch_size or self.config.train.eval_batch_size
        if "predict" not in self._steps:
            self._steps["predict"] = jit_predict_step(self.graphs, self.state, self.mesh)
        # The eval loop's padded, normalised batches, with the images as the "test split".
        inputs = dataclasses.replace(self.data, x_test=batch, y_test=np.zeros(len(batch), np.int32))
        outputs = []
        with jax.transfer_guard("disallow"):
            for x, _, _ in eval_batches(inputs, size, self.mesh):
                outputs.append(self._steps["predict"](self.state, x))
        predictions, probabilities = (
            np.concatenate(a)[: len(batch)] for a in zip(*jax.device_get(outputs), strict=True)
        )
        return Predictions(predictions, probabilities)


def run_config(config: Config | str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """The config of the run to read: a :class:`Config`, a YAML config file, or a run directory (its
    saved ``config.yaml``, with ``output_dir`` and ``name`` pointing at that directory); then
    ``overrides`` (``key.sub=value``).

    Raises:
      ConfigError: the file is missing or invalid, or an override is (one line naming the key).
    """
    if isinstance(config, Config):
        return from_dict(apply_overrides(config.to_dict(), overrides)) if overrides else config
    path = os.fspath(config)
    if not os.path.isdir(path):
        return load_config(path, overrides)
    run_dir = os.path.normpath(path)
    data = load_yaml(os.path.join(run_dir, "config.yaml"))
    data.update(output_dir=os.path.dirname(run_dir) or ".", name=os.path.basename(run_dir))
    return from_dict(apply_overrides(data, overrides))


def load(
    config: Config | str | os.PathLike,
    overrides: Sequence[str] = (),
    step: int | None = None,
    *,
    builder: setup.ModelBuilder | None = None,
    warn: Callable[[str], None] | None = None,
) -> Loaded:
    """Restores a run's newest checkpoint (or ``step``) onto this process's devices (module docstring).

    Args:
      config: the run's config (a :class:`Config` or a YAML file: the run is ``<output_dir>/<name>``),
        or its run directory (:func:`run_config`).
      overrides: ``key.sub=value`` config overrides, e.g. ``["mesh.n=1", "model.algorithms=data"]`` to
        read an 8-device run on one device.
      step: the checkpoint step to restore (default: the newest readable one).
      builder: a function with ``jaxcnn.models.build``'s signature (default: ``jaxcnn.models.build``).
      warn: called with one line for each damaged newer step that is skipped.

    Returns:
      The restored model (:class:`Loaded`).

    Raises:
      ConfigError: the config is invalid or does not fit these devices; the run has no checkpoint; the
        config differs from the run's saved one on :data:`jaxcnn.runner.run_directory.READ_KEYS`.
      CheckpointError: no step ``step``, no readable checkpoint, or one of another model or optimizer.
    """
    cfg = run_config(config, overrides)
    setup.init_distributed(cfg)
    run_directory.check_readable(cfg)
    parts = assemble(cfg, builder)
    ckpt = Checkpointer(os.path.join(cfg.run_dir, "checkpoints"), read_only=True)
    try:
        state, _, restored = ckpt.restore(parts.state, warn, step=step, keys=READ)
    except (FileNotFoundError, ValueError) as e:  # no such step; another model's or optimizer's state
        raise CheckpointError(str(e)) from None
    finally:
        ckpt.close()
    assert parts.data is not None  # assemble reads the data unless compile_only
    return Loaded(cfg, restored, parts.mesh, parts.graphs, state, parts.data, merge(parts.graphs.eval, state))
