"""``jaxcnn plan``: per-layer algorithm plan of a network under a per-device memory budget.

    jaxcnn plan --model resnet50 --batch 256 --devices 64 --memory 16GiB [--image 224]
        [--dtype float32] [--network FILE.yaml] [--config configs/plan_resnet50.yaml] [--measure]
        [--per-layer-only] [--hosts H [--dcn-cost-factor F]] [--whole-step] [--spatial-dims 3]

Prints one row per convolution: its shape, the chosen algorithm and grid (axes > 1), the predicted
bytes received per device (max over devices, forward + backward, :func:`jaxcnn.cost.predict`), the
bytes of the layout change into the layer (:mod:`jaxcnn.transition`), the forward + backward
lower bound (:func:`jaxcnn.bounds.lower_bound` with the memory budget), the ratio of the predicted
bytes to it, and the predicted peak memory per device; totals at the bottom. By default the plan is
the network DP (:func:`jaxcnn.planner.plan_network`, layout transitions included);
``--per-layer-only`` picks each layer's best on its own (:func:`jaxcnn.planner.plan_layer`).

``--measure`` compiles every layer's chosen (algorithm, grid) on fake CPU devices
(:func:`jaxcnn.measure.measure_conv`, compile only) and prints the metered bytes next to the
prediction. It sets ``XLA_FLAGS=--xla_force_host_platform_device_count=<devices>`` before JAX's
backend starts; when the backend is already running with too few devices (e.g. inside a test
process), it re-runs itself in a subprocess with that flag.

A YAML config (``--config``) holds the same keys as the flags (``model, batch, devices, memory,
image, dtype, network, measure, per_layer_only, whole_step, classes``); flags given on the command line
override it.

``--whole-step`` (a model of :mod:`jaxcnn.models`, not ``--network``) then places the whole network
as a graph (:mod:`jaxcnn.planner.network`: residual blocks, the classifier head, every layout change)
and prints its ``predicted_comm_bytes_per_step_max_device``, the figure ``jaxcnn train CONFIG
--compile-only`` prints next to the metered one, by component, with the placements as a
``model.algorithms`` mapping.

``--model`` is any model of :data:`jaxcnn.models.MODELS`. The U-Net (``unet``: one input channel, 2
logits per voxel unless ``--classes``) lists every convolution in the table, its transposed ``up``
convolutions and classifier ``out`` included, as a chain (its skip connections are placed by
``--whole-step``); ``--spatial-dims 3`` plans it on volumes of ``--image`` on each side.

While it plans, a status line on stderr (only on a terminal, erased when done) names the phase in
progress and the time so far.

``--hosts H`` splits the devices into ``H`` hosts (equal consecutive groups of the flat device order,
:mod:`jaxcnn.links`, as :func:`jaxcnn.make_mesh` lays out a multi-host job): the planner then minimises
``bytes + F x (bytes between hosts)`` (``--dcn-cost-factor F``, default 10), and the table adds the
bytes over the DCN per device (``dcn f+b``); ``--whole-step`` prints the step's DCN bytes too.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from jaxcnn import models
from jaxcnn.devices import request_cpu_devices, with_cpu_device_count
from jaxcnn.networks import NETWORKS, ConvLayer, get_network, layers_from_yaml, model_layers
from jaxcnn.planner.model import OBJECTIVES
from jaxcnn.planner.plan import NoPlanError
from jaxcnn.planner.report import (
    PlanArgs,
    format_table,
    make_plan,
    measure_rows,
)
from jaxcnn.planner.whole_step import format_whole_step, whole_step
from jaxcnn.timing.model import TimeModel, backend_time_model
from jaxcnn.timing.presets import PRESETS, preset_profile
from jaxcnn.yaml_io import load_yaml, parse_bytes

DTYPES = ("float32", "bfloat16", "float16")
CONFIG_KEYS = (
    "model",
    "batch",
    "devices",
    "memory",
    "image",
    "dtype",
    "network",
    "measure",
    "per_layer_only",
    "whole_step",
    "classes",
    "spatial_dims",
    "hosts",
    "dcn_cost_factor",
    "objective",
    "preset",
)


#: Models whose ``--spatial-dims`` may be 3 (volumes).
SPATIAL_DIMS_MODELS = ("unet",)


class PlanCliError(ValueError):
    """A bad command-line or config value (the message names it and the valid choices)."""


def parse_memory(text: str | float | int) -> float:
    """Bytes of a memory size: ``"16GiB"``, ``"512MiB"``, ``"2e9"``, ``"8GB"``, ``"inf"`` or a number.

    The same forms and units as the run config's ``model.plan_memory_bytes``
    (:func:`jaxcnn.yaml_io.parse_bytes`): binary units (KiB, MiB, GiB, TiB) are powers of 1024,
    decimal ones (KB, MB, GB, TB) powers of 1000, case-insensitive.

    Raises:
      PlanCliError: not a positive size with a known unit.
    """
    try:
        value = parse_bytes(text)
    except ValueError as err:
        raise PlanCliError(f"memory {err}") from None
    if not value > 0:
        raise PlanCliError(f"memory must be positive, got {text!r}")
    return float(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxcnn plan",
        description="Plan per-layer distributed convolution algorithms for a network under a memory budget.",
    )
    p.add_argument(
        "--config", help="YAML file with the keys " + ", ".join(CONFIG_KEYS) + " (flags override it)"
    )
    p.add_argument("--model", help=f"network: one of {sorted(models.MODELS)} (default resnet50)")
    p.add_argument("--network", help="YAML list of layers (see jaxcnn.networks.layers_from_dicts)")
    p.add_argument("--batch", type=int, help="global batch size (default 256)")
    p.add_argument("--devices", type=int, help="number of devices P (default 64)")
    p.add_argument("--memory", help="per-device memory budget, e.g. 16GiB, 512MiB, 2e9 (default 16GiB)")
    p.add_argument("--image", type=int, help="input image height = width (default 224)")
    p.add_argument("--dtype", help=f"element type: one of {DTYPES} (default float32)")
    p.add_argument("--measure", action="store_true", default=None, help="meter each layer on fake devices")
    p.add_argument(
        "--whole-step",
        dest="whole_step",
        action="store_true",
        default=None,
        help="also place the jaxcnn.models network as a graph and predict its whole train step",
    )
    p.add_argument(
        "--classes",
        type=int,
        help="classifier width for --whole-step (default 1000; a segmentation model's: its own, unet 2)",
    )
    p.add_argument(
        "--spatial-dims",
        dest="spatial_dims",
        type=int,
        help="unet only: 2 (images, default) or 3 (volumes of --image on each side)",
    )
    p.add_argument(
        "--hosts", type=int, help="hosts (or TPU slices) the devices are split over; must divide --devices"
    )
    p.add_argument(
        "--dcn-cost-factor",
        dest="dcn_cost_factor",
        type=float,
        help="how much dearer a byte between hosts is than one within a host (default 10)",
    )
    p.add_argument(
        "--objective",
        help="what --whole-step minimises: time (the step's predicted seconds: the backend's profile from "
        "jaxcnn calibrate, or --preset) or bytes (default: time where there is a profile, else bytes)",
    )
    p.add_argument(
        "--preset",
        help=f"price --whole-step's time with published figures: one of {', '.join(PRESETS)}",
    )
    p.add_argument(
        "--per-layer-only",
        dest="per_layer_only",
        action="store_true",
        default=None,
        help="best per layer, ignoring layout transitions between layers",
    )
    return p


def _load_config(path: str) -> dict[str, Any]:
    """The plan config at ``path``, read like a run config (:func:`jaxcnn.yaml_io.load_yaml`:
    ``base_config`` chains, one-line ``ConfigError`` s); ``network`` is relative to the file."""
    data = load_yaml(path)
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise PlanCliError(f"{path}: unknown keys {unknown}; valid keys are {list(CONFIG_KEYS)}")
    if data.get("network"):  # relative to the config file
        net = str(data["network"])
        if not os.path.isabs(net) and not os.path.exists(net):
            data["network"] = os.path.join(os.path.dirname(os.path.abspath(path)), net)
    return data


def resolve_args(argv: Sequence[str]) -> PlanArgs:
    """Parses flags (over an optional ``--config`` YAML) into validated :class:`PlanArgs`.

    Raises:
      PlanCliError: an unknown model / dtype / config key, a bad memory string, a non-positive
        batch, image, device or host count, hosts that do not divide the devices, or a negative
        DCN cost factor.
      ConfigError: the ``--config`` file is missing, not YAML, not a mapping, or has a ``base_config``
        cycle.
    """
    ns = _parser().parse_args(list(argv))
    values: dict[str, Any] = _load_config(ns.config) if ns.config else {}
    for key in CONFIG_KEYS:
        flag = getattr(ns, key)
        if flag is not None:
            values[key] = flag
    defaults = PlanArgs()
    model = str(values.get("model", defaults.model))
    network = values.get("network")
    if network is None and model not in models.MODELS:
        raise PlanCliError(
            f"unknown model {model!r}; valid models are {sorted(models.MODELS)} (or --network FILE.yaml)"
        )
    if network is None and "classes" not in values:  # a segmentation model's own logits per voxel
        values["classes"] = _default_classes(model, defaults.classes)
    spatial_dims = values.get("spatial_dims", defaults.spatial_dims)
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise PlanCliError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if spatial_dims != 2 and (network is not None or model not in SPATIAL_DIMS_MODELS):
        raise PlanCliError(
            f"spatial_dims={spatial_dims} needs a model with volumes: one of {list(SPATIAL_DIMS_MODELS)}, "
            f"got {network or model!r}"
        )
    if network is not None and not os.path.exists(str(network)):
        raise PlanCliError(f"network file {network} does not exist")
    ints = {}
    for key in ("batch", "devices", "image", "classes", "hosts"):
        value = values.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanCliError(f"{key} must be a positive integer (>= 1), got {value!r}")
        ints[key] = value
    if ints["devices"] % ints["hosts"]:
        raise PlanCliError(
            f"hosts ({ints['hosts']}) must divide devices ({ints['devices']}): "
            "every host holds as many devices"
        )
    factor = values.get("dcn_cost_factor", defaults.dcn_cost_factor)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 <= factor < math.inf:
        raise PlanCliError(f"dcn_cost_factor must be a non-negative number, got {factor!r}")
    dtype = str(values.get("dtype", defaults.dtype))
    if dtype not in DTYPES:
        raise PlanCliError(f"unknown dtype {dtype!r}; valid dtypes are {list(DTYPES)}")
    objective = values.get("objective")
    if objective is not None and objective not in OBJECTIVES:
        raise PlanCliError(f"unknown objective {objective!r}; valid objectives are {list(OBJECTIVES)}")
    preset = values.get("preset")
    if preset is not None and preset not in PRESETS:
        raise PlanCliError(f"unknown preset {preset!r}; valid presets are {list(PRESETS)}")
    flags = {}
    for key in ("measure", "per_layer_only", "whole_step"):
        value = values.get(key, False)
        if not isinstance(value, bool):
            raise PlanCliError(f"{key} must be true or false, got {value!r}")
        flags[key] = value
    return PlanArgs(
        model=model,
        memory_bytes=parse_memory(values.get("memory", "16GiB")),
        dtype=dtype,
        network=None if network is None else str(network),
        dcn_cost_factor=float(factor),
        spatial_dims=spatial_dims,
        objective=objective,
        preset=preset,
        **ints,
        **flags,
    )


def _default_classes(model: str, classifier_default: int) -> int:
    """``--classes`` when not given: a segmentation model's own (the U-Net's 2), else
    ``classifier_default``."""
    cls = models.MODELS[model]
    return cls.default_num_classes if getattr(cls, "task", None) == "segmentation" else classifier_default


def _model_options(args: PlanArgs) -> dict[str, Any]:
    """Build options of ``args.model`` beyond its defaults (the U-Net's ``spatial_dims``)."""
    return {"spatial_dims": args.spatial_dims} if args.model in SPATIAL_DIMS_MODELS else {}


def _in_channels(args: PlanArgs) -> int:
    """Image channels of ``args.model``: 3 for the classifiers (as ``--whole-step`` has always used), a
    segmentation model's own (the U-Net's 1)."""
    cls = models.MODELS[args.model]
    return cls.default_in_channels if getattr(cls, "task", None) == "segmentation" else 3


def load_layers(args: PlanArgs) -> list[ConvLayer]:
    """The network's convolutions in forward order: a ``--network`` file's, a classifier's table
    (:data:`jaxcnn.networks.NETWORKS`), or any other :mod:`jaxcnn.models` model traced on
    ``--image`` (each side), its own channels and ``--classes`` (the U-Net: every convolution, the
    transposed ``up`` ones and the classifier ``out`` included, as a chain: its skips are placed by
    ``--whole-step``)."""
    if args.network:
        return layers_from_yaml(args.network, args.batch)
    if args.model in NETWORKS:
        return get_network(args.model, args.batch, args.image)
    return model_layers(
        args.model,
        args.batch,
        args.image,
        num_classes=args.classes,
        in_channels=_in_channels(args),
        **_model_options(args),
    )


def ensure_devices(devices: int) -> bool:
    """Makes ``devices`` fake CPU devices available if JAX has not started yet.

    Returns:
      True when this process has (or will have) at least ``devices`` devices; False when the backend
      is already running with fewer (the caller must re-run in a subprocess).
    """
    import jax

    if request_cpu_devices(devices):
        jax.config.update("jax_platforms", "cpu")
    return len(jax.devices()) >= devices


def _rerun(argv: Sequence[str], devices: int, status: PlanStatus | None = None) -> int:
    env = dict(
        os.environ,
        XLA_FLAGS=with_cpu_device_count(os.environ.get("XLA_FLAGS", ""), devices),
        JAX_PLATFORMS="cpu",
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-m", "jaxcnn", "plan", *argv], env=env, capture_output=True, text=True, check=False
    )
    if status is not None:  # erase the line before the child's output
        status.pause()
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return out.returncode


def time_model_for(args: PlanArgs) -> tuple[TimeModel | None, str]:
    """The time model ``--whole-step`` prices with: ``--preset``'s published figures for the devices
    and hosts, else the backend's saved profile (``(None, why)`` without one)."""
    if args.preset is not None:
        profile = preset_profile(args.preset, args.devices, hosts=args.hosts, dtype=args.dtype)
        return TimeModel.of(profile), ""
    return backend_time_model()


def progress_console() -> Console:
    """Where ``jaxcnn plan`` shows what it is doing: stderr (a rich status line, drawn only on a
    terminal and erased when done, as ``jaxcnn calibrate``'s bar; nothing when stderr is a file or pipe)."""
    return Console(stderr=True)


class PlanStatus:
    """A one-line status on ``console``: a spinner, the phase in progress and the time since the first
    phase; calling it with a phase shows (or replaces) the line, :meth:`pause` erases it before output.

    It never captures stdout (the plan goes to stdout as printed, and the line is erased before each
    print), and draws nothing on a console that is not a terminal.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        """Shows ``jaxcnn plan: <what>`` and the time since the first phase (on a terminal only)."""
        if not self.console.is_terminal:  # a file or pipe: nothing at all (rich would still end a line)
            return
        if self.progress is None:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.progress.add_task(f"jaxcnn plan: {what}", total=None)
            self.progress.tasks[0].start_time = self.started  # both on time.monotonic: elapsed since then
            self.progress.start()
        self.progress.update(self.progress.task_ids[0], description=f"jaxcnn plan: {what}", refresh=True)

    def pause(self) -> None:
        """Erases the line (the next phase draws it again)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jaxcnn plan``; returns the exit status (0 ok, 2 bad input or no plan).

    While it plans, a status line on stderr (:class:`PlanStatus` on :func:`progress_console`) names the
    phase in progress and the time it has run: tracing, the per-layer table, the metering, and
    ``--whole-step``'s building, tracing, placing and predicting.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    status = PlanStatus(progress_console())
    try:
        return _main(argv, status)
    finally:
        status.pause()


def _main(argv: list[str], progress: PlanStatus) -> int:
    try:
        args = resolve_args(argv)
        # the devices first: tracing the layers starts JAX's backend (one more run if it has too few)
        if (args.measure or args.whole_step) and not ensure_devices(args.devices):
            progress(f"planning in a subprocess with {args.devices} CPU devices")
            return _rerun(argv, args.devices, progress)
        progress(f"tracing {args.network or args.model}")
        layers = load_layers(args)
        progress(f"planning the per-layer table ({len(layers)} convolutions)")
        rows = make_plan(args, layers)
    except (PlanCliError, NoPlanError, ValueError) as err:
        progress.pause()
        print(f"jaxcnn plan: error: {err}", file=sys.stderr)
        return 2
    if args.measure:
        progress(f"metering {len(rows)} convolutions on {args.devices} fake devices")
        rows = measure_rows(rows, args.dtype)
    progress.pause()
    print(format_table(args, rows))
    if args.whole_step:
        try:
            time_model, note = time_model_for(args)
            objective = args.objective or "time"
            if time_model is None:  # one line, then by bytes
                print(f"jaxcnn plan: {note}; planning by bytes", file=sys.stderr)
                objective = "bytes"
            result = whole_step(
                args.model,
                args.batch,
                args.devices,
                args.image,
                args.memory_bytes,
                args.dtype,
                args.classes,
                hosts=args.hosts,
                dcn_cost_factor=args.dcn_cost_factor,
                time_model=time_model,
                objective=objective,
                in_channels=_in_channels(args),
                progress=progress,
                **_model_options(args),
            )
        except (NoPlanError, ValueError) as err:
            progress.pause()
            print(f"jaxcnn plan: error: {err}", file=sys.stderr)
            return 2
        progress.pause()
        print(format_whole_step(result))
    return 0
