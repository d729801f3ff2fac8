"""The run directory ``<output_dir>/<name>``: what a new run may replace, what a resumed run must match.

:func:`check_run_dir` runs before the model is built (nothing on disk changes). Every process of a
multi-process job reads the run directory and reaches the same verdict (on the shared file system the
checkpoints need), so all of them stop together rather than waiting on the one that stopped:

- **Writable.** An ``output_dir`` that cannot be written (read-only or full file system, a path under a
  file) is one line naming it.
- **No silent deletion.** A run directory that holds a checkpoint (a complete step under
  ``checkpoints/``) is another run's work: without ``resume=true`` the run stops with one line that names
  ``resume=true`` (continue it), ``overwrite=true`` (delete it and start over) and ``name=`` (a new run
  beside it). A directory without a checkpoint (a run that stopped before its first one, or ran with
  ``checkpoint.enabled: false``) has nothing to resume; a new run replaces its metrics and plots.
- **A resume that fits.** With ``resume=true`` and a checkpoint to resume from, the config is compared
  with the run's saved ``config.yaml`` on :data:`RESUME_KEYS`: the keys that decide what the
  checkpoints hold or what the run means. Any difference stops the run with one line naming each key
  with both values, before a checkpoint is opened (so no orbax, asyncio or TensorStore output either).

What is deliberately *not* compared, because a resumed run may change it:

- the mesh and the placements (``mesh``, ``model.algorithms``, ``model.plan_*``): checkpoints restore
  onto any device count, mesh and placement;
- the length and cadence of the run (``train.steps``, ``train.log_every``, ``train.eval_*``,
  ``train.divergence_factor``, ``checkpoint``) and what it records (``train.tensorboard``,
  ``train.profile_steps``): resuming to train further is the point;
- the optimizer's hyperparameters (learning rate, schedule, betas, momentum, the amounts of weight decay
  and clipping): a diverged run resumes with a lower learning rate. Only what changes the optimizer
  state's layout counts: ``optimizer.name``, and turning gradient clipping or (for the optimizers other
  than adamw) L2 weight decay on or off, each of which adds or removes a stage of the optax chain;
- ``data.path``, ``data.workers``, ``data.prefetch``: the same data may move to another disk, and how it
  is read changes no batch (the input pipeline still checks the training set's size, the seed and the
  batch size when it restores its position);
- ``name``, ``output_dir``, ``distributed``, ``cluster``, ``overwrite``.

A saved ``config.yaml`` that is missing or unreadable is not compared (the checkpoint's own check of its
leaves' paths and shapes still stands); one written by an older version is compared on the keys it has.

A run's checkpoints are also *read* by ``jaxcnn eval`` and ``jaxcnn predict``
(:mod:`jaxcnn.runner.inference`): :func:`check_readable` gives the same one-line verdicts for them, on
:data:`READ_KEYS` (:data:`RESUME_KEYS` but ``train.batch_size``: the input pipeline's position is no
reader's concern) and with nothing written; a directory without a checkpoint says to train first.

``config.yaml`` is written only once the run is accepted (:func:`write_config`, after the restore), so a
rejected resume leaves the directory as it was.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import yaml
from jax.experimental import multihost_utils

from jaxcnn.files import check_writable
from jaxcnn.runner.config import Config, ConfigError, from_dict, save_config

#: The keys a resumed run must share with the run it continues, and why each one counts.
RESUME_KEYS: dict[str, str] = {
    "seed": "the data split (which images digits and folder hold out), the synthetic data, the shuffling",
    "model.name": "the parameters' names and shapes",
    "model.options": "the parameters' shapes (width, stage sizes, ...)",
    "model.dtype": "the precision of the function the parameters were trained for",
    "model.reduce_dtype": "the precision the convolutions' sums were trained with",
    "train.batch_size": "the input pipeline's position (a step is one batch of this size)",
    "data.source": "the data",
    "data.test_fraction": "the held-out split",
    "data.image_size": "the images (and for some models the parameters' shapes)",
    "data.channels": "the first convolution's kernel shape",
    "data.num_classes": "the classifier's shape",
    "data.num_train": "the training set",
    "data.num_test": "the test set",
    "data.num_ellipsoids": "the segmentation data",
    "data.noise_std": "the segmentation data",
    "optimizer.name": "the optimizer state's layout",
}

#: The keys a reader of a run's checkpoints (:func:`check_readable`) must share with the run: the model,
#: the data and its split, and the optimizer state's layout (the checkpoint holds it). The mesh, the
#: placements, the device count and the batch sizes may differ.
READ_KEYS: dict[str, str] = {key: why for key, why in RESUME_KEYS.items() if key != "train.batch_size"}

#: Keys whose *being on* (> 0) shapes the optimizer state (a stage of the optax chain, see
#: :func:`jaxcnn.runner.optim.optimizer`); their amounts may change. Value: which optimizers it applies to.
_LAYOUT_SWITCHES = {"optimizer.grad_clip_norm": None, "optimizer.weight_decay": ("sgd", "momentum", "adam")}

_MISSING = object()
_STEP = re.compile(r"^\d+$")


def checkpoint_steps(run_dir: str) -> list[int]:
    """The complete checkpoint steps under ``<run_dir>/checkpoints`` (oldest first; [] if none).

    A step directory exists only complete (orbax renames it into place when it is); unfinished saves
    and steps moved aside as unreadable have other names.
    """
    try:
        names = os.listdir(os.path.join(run_dir, "checkpoints"))
    except OSError:
        return []
    return sorted(int(n) for n in names if _STEP.match(n))


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _show(value: Any) -> str:
    """A value as one would write it in an override (YAML flow style)."""
    if value is _MISSING:
        return "unset"
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def saved_config(path: str) -> dict[str, Any] | None:
    """The config a run saved at ``path`` as plain data: validated (defaults filled in for keys added
    since) where it validates, as read where it does not; None when missing or not a mapping."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, Mapping):
        return None
    try:
        return from_dict(data).to_dict()
    except ConfigError:
        return dict(data)


def resume_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: Mapping[str, str] = RESUME_KEYS
) -> list[str]:
    """``key=<current> (saved: <saved>)`` for each of ``keys`` (each ``model.options`` entry on its own)
    and each optimizer stage switched on or off, where the configs differ. Keys the saved config lacks
    (an older version's) are not compared.

    Args:
      saved: the run's saved config, plain data (:func:`saved_config`).
      current: this run's config, plain data (``Config.to_dict()``).
      keys: the keys compared (:data:`RESUME_KEYS`, or :data:`READ_KEYS` for a reader).
    """
    pairs: list[tuple[str, Any, Any]] = []
    for key in keys:
        old, new = _lookup(saved, key), _lookup(current, key)
        if key == "model.options" and isinstance(old, Mapping) and isinstance(new, Mapping):
            pairs += [(f"{key}.{k}", old.get(k, _MISSING), new.get(k, _MISSING)) for k in {**old, **new}]
        elif old is not _MISSING:
            pairs.append((key, old, new))
    differences = [f"{key}={_show(new)} (saved: {_show(old)})" for key, old, new in pairs if old != new]
    name = _lookup(current, "optimizer.name")
    if name != _lookup(saved, "optimizer.name"):
        return differences  # the layout differs anyway, and optimizer.name says so
    for key, optimizers in _LAYOUT_SWITCHES.items():
        old, new = _lookup(saved, key), _lookup(current, key)
        numbers = all(isinstance(v, int | float) for v in (old, new))
        if numbers and (optimizers is None or name in optimizers) and (old > 0) != (new > 0):
            stage = "adds" if new > 0 else "removes"
            differences.append(
                f"{key}={_show(new)} (saved: {_show(old)}; {stage} a stage of the optimizer state)"
            )
    return differences


def check_run_dir(cfg: Config) -> None:
    """Fails fast, before the model is built and compiled, where the run cannot use its directory
    (nothing on disk changes; process 0 checks that it can be written, every process the rest): see the
    module docstring.

    Raises:
      ConfigError: one line: the directory cannot be written (read-only or full file system,
        ``output_dir`` under a file); it holds checkpoints and neither ``resume`` nor ``overwrite`` is
        set; or ``resume`` is set and the config differs from the saved one on :data:`RESUME_KEYS`.
    """
    run_dir = cfg.run_dir
    if jax.process_index() == 0:
        try:
            check_writable(run_dir)
        except OSError as e:
            raise _unwritable(cfg, OSError(e.errno, e.strerror, run_dir)) from None
    steps = checkpoint_steps(run_dir)
    if not steps or cfg.overwrite:
        return
    if not cfg.resume:
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints (steps {', '.join(map(str, steps))}); "
            "resume=true continues it, overwrite=true deletes its checkpoints and metrics and starts over, "
            "name=<new name> starts a new run beside it"
        )
    _check_saved(
        cfg,
        RESUME_KEYS,
        "resume=true: ",
        "resume with the saved values, or start over with overwrite=true (deletes its checkpoints and "
        "metrics), or start a new run with name=<new name>",
    )


def _check_saved(cfg: Config, keys: Mapping[str, str], prefix: str, advice: str) -> None:
    """Raises the one-line :class:`ConfigError` of :func:`resume_differences` on ``keys`` against the
    run's saved ``config.yaml`` (nothing when it is missing or unreadable)."""
    path = os.path.join(cfg.run_dir, "config.yaml")
    saved = saved_config(path)
    differences = [] if saved is None else resume_differences(saved, cfg.to_dict(), keys)
    if differences:
        raise ConfigError(
            f"{prefix}this config differs from the run's {path} in what its checkpoints hold or mean: "
            f"{', '.join(differences)}; {advice}"
        )


def check_readable(cfg: Config) -> list[int]:
    """The run's complete checkpoint steps, after checking that ``cfg`` may read them (nothing on disk
    changes): see the module docstring.

    Raises:
      ConfigError: one line: the run directory holds no checkpoint (naming it, and ``jaxcnn train``),
        or ``cfg`` differs from the run's saved ``config.yaml`` on :data:`READ_KEYS` (naming each key
        with both values).
    """
    run_dir = cfg.run_dir
    steps = checkpoint_steps(run_dir)
    if not steps:
        where = "does not exist" if not os.path.isdir(run_dir) else "holds no checkpoint"
        raise ConfigError(
            f"{run_dir} (output_dir={cfg.output_dir}, name={cfg.name}) {where}: train the run first "
            "(jaxcnn train with this config, checkpoint.enabled: true), or name the trained run with "
            "output_dir= and name="
        )
    _check_saved(cfg, READ_KEYS, "", "use the saved values (the mesh, placements and batch sizes may differ)")
    return steps


def _unwritable(cfg: Config, e: OSError) -> ConfigError:
    run_dir = cfg.run_dir
    where = (
        f" ({e.filename})" if e.filename and os.path.abspath(e.filename) != os.path.abspath(run_dir) else ""
    )
    return ConfigError(
        f"output_dir={cfg.output_dir}: cannot write the run directory {run_dir}{where}: {e.strerror or e}"
    )


def prepare_run_dir(cfg: Config) -> str:
    """Creates ``<output_dir>/<name>`` (process 0; all processes wait).

    Without ``resume`` an earlier run's outputs are deleted (its checkpoints, ``metrics.jsonl``,
    ``summary.json``, plots, ``tensorboard/`` and ``profile/``), so a run always starts from step 0;
    :func:`check_run_dir` has made sure that a directory with checkpoints gets here only with
    ``overwrite``. ``config.yaml`` is written later, once the run is accepted (:func:`write_config`).

    Raises:
      ConfigError: the directory cannot be created or written (read-only or full file system,
        ``output_dir`` under a file): one line naming ``output_dir``, the path and the OS reason.
    """
    run_dir = cfg.run_dir
    if jax.process_index() == 0:
        try:
            os.makedirs(run_dir, exist_ok=True)
            if not cfg.resume:
                for d in ("checkpoints", "tensorboard", "profile"):
                    shutil.rmtree(os.path.join(run_dir, d), ignore_errors=True)
                for f in ("metrics.jsonl", "summary.json", "loss.png", "accuracy.png"):
                    if os.path.exists(os.path.join(run_dir, f)):
                        os.remove(os.path.join(run_dir, f))
        except OSError as e:
            raise _unwritable(cfg, e) from None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxcnn.runner.prepare_run_dir")
    return run_dir


def write_config(cfg: Config) -> None:
    """Writes ``<run dir>/config.yaml`` (process 0): called once the run is accepted (a resume has
    restored its checkpoint), so a rejected run leaves the earlier run's file as it was.

    Raises:
      ConfigError: it cannot be written (one line, as :func:`prepare_run_dir`).
    """
    if jax.process_index() != 0:
        return
    try:
        save_config(cfg, os.path.join(cfg.run_dir, "config.yaml"))
    except OSError as e:
        raise _unwritable(cfg, e) from None
