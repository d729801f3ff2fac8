"""``jaxcnn train CONFIG.yaml [key.sub=value ...]`` (also ``python -m jaxcnn train ...``)."""

from __future__ import annotations

import argparse
import sys

from jaxcnn.devices import cpu_devices_problem
from jaxcnn.runner.config import Config, load_config
from jaxcnn.runner.config.typed import ConfigError

EPILOG = """\
overrides are dotted keys with YAML values, applied after the file (and its base_config chain):
  jaxcnn train configs/default.yaml train.steps=100 optimizer.learning_rate=3e-3 mesh.n=-1
  jaxcnn train configs/default.yaml 'model.algorithms=[3d, 2d, data]' name=my_run resume=true
configs/base.yaml documents every key.
"""


def parser() -> argparse.ArgumentParser:
    """The ``jaxcnn train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="jaxcnn train",
        description="Train a CNN with distributed convolutions from a YAML config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="lower and compile the train step on abstract inputs (no training) and print its figures",
    )
    return p


def add_run_arguments(
    p: argparse.ArgumentParser, config_help: str = "YAML config file (see configs/)"
) -> None:
    """The arguments every command on a run takes: ``CONFIG``, overrides and ``--cpu-devices N``."""
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument(
        "--cpu-devices",
        type=int,
        metavar="N",
        help="give the CPU platform N virtual devices (sets XLA_FLAGS before JAX starts; for laptops "
        "and CI - accelerators are unaffected)",
    )


def devices_error(command: str, args: argparse.Namespace) -> int | None:
    """Applies ``--cpu-devices`` (:func:`jaxcnn.devices.cpu_devices_problem`); 2 after printing
    ``jaxcnn <command>: <problem>`` when it cannot, else None."""
    problem = None if args.cpu_devices is None else cpu_devices_problem(args.cpu_devices)
    if problem:
        print(f"jaxcnn {command}: {problem}", file=sys.stderr)
        return 2
    return None


def error(command: str, kind: str, e: Exception) -> int:
    """Prints ``jaxcnn <command>: <kind>: <message>`` on one line (whitespace runs collapsed) to stderr;
    returns 2."""
    print(f"jaxcnn {command}: {kind}: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


def _error(kind: str, e: Exception) -> int:
    return error("train", kind, e)


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, loads the config and trains.

    Returns:
      0 on success; 2 for a config or checkpoint error: one line, no traceback (bad values at load time;
      a run directory that holds checkpoints without ``resume=true`` or ``overwrite=true``, a resume whose
      config differs from the saved one where it counts; a mesh, placement or model the devices cannot
      take, or a model that does not fit their memory, before anything is allocated); 1, with one line
      naming the step and the last good checkpoint, when the loss became NaN/inf or diverged
      (``train.divergence_factor``); 130 or 143 after SIGINT or SIGTERM, with one line naming the step
      and its checkpoint (:mod:`jaxcnn.runner.interrupt`).
    """
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    failed = devices_error("train", args)
    if failed is not None:
        return failed
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return _error("config error", e)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    try:
        return _run(args, cfg)
    except KeyboardInterrupt:  # Ctrl-C before the run holds the signals (imports, joining a job)
        print("jaxcnn train: interrupted before training started; nothing saved", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, cfg: Config) -> int:
    """Compiles or trains ``cfg``; the exit code (see :func:`main`)."""
    from jaxcnn.runner.checkpoint import CheckpointError
    from jaxcnn.runner.train import DivergedError, Interrupted, train

    try:
        if args.compile_only:
            from jaxcnn.runner.aot import compile_train_step, describe

            print(describe(compile_train_step(cfg)))
            return 0
        train(cfg)
    except ConfigError as e:  # the mesh, the model section, the memory fit (jaxcnn.runner.fit)
        return _error("config error", e)
    except CheckpointError as e:
        return _error("checkpoint error", e)
    except DivergedError as e:
        print(f"jaxcnn train: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # SIGINT/SIGTERM: stopped at a step boundary with a checkpoint
        if e.main:
            print(f"jaxcnn train: {e}", file=sys.stderr)
        return e.exit_code
    return 0
