"""``jaxcnn eval CONFIG`` and ``jaxcnn predict CONFIG --input IN --output OUT.npz``: a trained run's model.

Both read the run ``CONFIG`` names (``<output_dir>/<name>``; ``CONFIG`` may also be the run directory)
through :func:`jaxcnn.runner.inference.load`: its newest checkpoint (or ``--step N``), on these devices.
``key.sub=value`` overrides and ``--cpu-devices N`` are ``jaxcnn train``'s; the mesh, the placements and
the batch sizes may differ from the trained run's (``mesh.n=1 model.algorithms=data`` reads an
8-device run on one device), the model and the data may not.

- ``jaxcnn eval`` prints the test split's figures, each ``name value`` on its own line with the value in
  full (``repr``): ``test accuracy``, ``test loss`` and, for segmentation, ``test Dice``. On the run's
  mesh they equal ``summary.json``'s ``final_eval_*``.
- ``jaxcnn predict`` reads ``--input`` (an ``.npz`` with images ``x``, an ``.npy``, or an image folder:
  :mod:`jaxcnn.runner.data.inputs`) and writes ``--output``, an ``.npz`` with ``predictions`` (int32
  class ids, per pixel / voxel for segmentation), ``probabilities`` (float32 softmax), ``class_names``
  where the data has them and, for a folder, ``files`` (each image's path relative to it, in row order).

Mistakes are one line on stderr and exit status 2 (``jaxcnn eval: config error: ...``): a bad config or
override, a mesh the devices cannot take, a run without a checkpoint ("train the run first"), a config
that differs from the run's in its model or data (naming each key with both values), an input of
another shape (naming its shape and the run's), an output that cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from jaxcnn.runner.checkpoint import CheckpointError
from jaxcnn.runner.cli import add_run_arguments, devices_error, error
from jaxcnn.runner.config import ConfigError
from jaxcnn.runner.data.inputs import InputError, read_inputs
from jaxcnn.runner.inference import Loaded, load

CONFIG_HELP = "the run's YAML config file (the run is <output_dir>/<name>), or its run directory"
EPILOG = """\
the mesh, the placements and the batch sizes may differ from the trained run's:
  jaxcnn eval configs/default.yaml
  jaxcnn eval --cpu-devices 1 configs/default.yaml mesh.n=1 model.algorithms=data
  jaxcnn predict runs/default --input images/ --output predictions.npz
"""


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"jaxcnn {command}",
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p, CONFIG_HELP)
    p.add_argument("--step", type=int, metavar="N", help="the checkpoint step to read (default: the newest)")
    return p


def eval_parser() -> argparse.ArgumentParser:
    """The ``jaxcnn eval`` argument parser."""
    return _parser("eval", "Evaluate a trained run's checkpoint on its test split, on these devices.")


def predict_parser() -> argparse.ArgumentParser:
    """The ``jaxcnn predict`` argument parser."""
    p = _parser(
        "predict", "Predict with a trained run's checkpoint: images in, class ids and probabilities out."
    )
    p.add_argument(
        "--input",
        required=True,
        metavar="IN",
        help="an .npz (images in the array x, or x_test), an .npy, or a folder of .png/.jpg images",
    )
    p.add_argument("--output", required=True, metavar="OUT.npz", help="the .npz to write")
    return p


def _load(command: str, args: argparse.Namespace) -> Loaded | int:
    """The run's model, or 2 after printing the one-line error."""
    failed = devices_error(command, args)
    if failed is not None:
        return failed

    def warn(line: str) -> None:
        if jax.process_index() == 0:
            print(f"jaxcnn {command}: warning: {line}", file=sys.stderr)

    try:
        return load(args.config, args.overrides, args.step, warn=warn)
    except ConfigError as e:
        return error(command, "config error", e)
    except CheckpointError as e:
        return error(command, "checkpoint error", e)


def _where(run: Loaded) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
    n = run.mesh.devices.size
    return f"{run.config.run_dir} step {run.step} on mesh {mesh} ({n} device{'' if n == 1 else 's'})"


def eval_main(argv: list[str] | None = None) -> int:
    """``jaxcnn eval CONFIG [key=value ...]``.

    Returns:
      0 after printing the figures; 2 for a mistake (one line on stderr, see the module docstring).
    """
    args = eval_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    run = _load("eval", args)
    if isinstance(run, int):
        return run
    figures = run.evaluate()
    if jax.process_index() == 0:
        kind = "volumes" if len(run.image_shape) == 4 else "images"
        print(f"{_where(run)}: {len(run.data.x_test)} test {kind}")
        print(f"test accuracy {figures['eval_accuracy']!r}")
        print(f"test loss {figures['eval_loss']!r}")
        if "eval_dice" in figures:
            print(f"test Dice {figures['eval_dice']!r}")
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """``jaxcnn predict CONFIG --input IN --output OUT.npz [key=value ...]``.

    Returns:
      0 after writing ``--output``; 2 for a mistake (one line on stderr, see the module docstring).
    """
    args = predict_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if not args.output.endswith(".npz"):
        print(
            f"jaxcnn predict: --output {args.output}: expected a file name ending with .npz", file=sys.stderr
        )
        return 2
    run = _load("predict", args)
    if isinstance(run, int):
        return run
    try:
        images, names = read_inputs(args.input, run.image_shape)
        out = run.predict(images)
    except (InputError, ConfigError) as e:
        return error("predict", "input error", e)
    arrays = {"predictions": out.predictions, "probabilities": out.probabilities}
    if run.data.class_names:
        arrays["class_names"] = np.asarray(run.data.class_names)
    if names:
        arrays["files"] = np.asarray(names)
    if jax.process_index() == 0:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            np.savez(args.output, **arrays)
        except OSError as e:
            return error("predict", "output error", OSError(e.errno, e.strerror, args.output))
        shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
        print(f"{_where(run)}: {len(images)} inputs from {args.input} -> {args.output} ({shapes})")
    return 0
