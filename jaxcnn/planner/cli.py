"""``jaxcnn plan``: per-layer algorithm plan of a network under a per-device memory budget.

    jaxcnn plan --model resnet50 --batch 256 --devices 64 --memory 16GiB [--image 224]
        [--dtype float32] [--network FILE.yaml] [--config configs/plan_resnet50.yaml] [--measure]
        [--per-layer-only]

Prints one row per convolution: its shape, the chosen algorithm and grid (axes > 1), the predicted
bytes received per device (max over devices, forward + backward, :func:`jaxcnn.cost.predict`), the
bytes of the layout change into the layer (:mod:`jaxcnn.planner.transition`), the forward + backward
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
image, dtype, network, measure, per_layer_only``); flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcnn.bounds import lower_bound
from jaxcnn.cost import Cost, itemsize_of, predict
from jaxcnn.networks import NETWORKS, ConvLayer, get_network, layers_from_yaml
from jaxcnn.planner.plan import NoPlanError, plan_layer, plan_network

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
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
)


class PlanCliError(ValueError):
    """A bad command-line or config value (the message names it and the valid choices)."""


def parse_memory(text: str | float | int) -> float:
    """Bytes of a memory size: ``"16GiB"``, ``"512MiB"``, ``"2e9"``, ``"8GB"``, ``"inf"`` or a number.

    Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB) powers of 1000;
    units are case-insensitive.

    Raises:
      PlanCliError: not a positive size with a known unit.
    """
    if isinstance(text, bool):
        raise PlanCliError(f"memory must be a size such as 16GiB, 512MiB or 2e9, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    elif str(text).strip().lower() in ("inf", "infinity", "none"):
        return math.inf
    else:
        m = _MEMORY.match(str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise PlanCliError(
                f"memory must be a size such as 16GiB, 512MiB or 2e9 "
                f"(units {', '.join(u for u in _UNITS if u)}), got {text!r}"
            )
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not value > 0:
        raise PlanCliError(f"memory must be positive, got {text!r}")
    return value


def fmt_bytes(value: float | None) -> str:
    """Human-readable bytes (binary units), ``-`` for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError


def fmt_grid(grid: Mapping[str, int]) -> str:
    """Grid as ``n8·k8`` (axes of size > 1 only; ``1`` for a single device)."""
    parts = [f"{a}{s}" for a, s in grid.items() if s > 1]
    return "·".join(parts) or "1"


def fmt_shape(layer: ConvLayer) -> str:
    """``HxWxC k RxS/σ -> HoxWoxK`` of one layer (the batch is shown once, in the header)."""
    g = layer.geom
    _, h, w, c = g.x_shape
    _, ho, wo, k = g.y_shape
    stride = g.h.stride if g.h.stride == g.w.stride else f"{g.h.stride},{g.w.stride}"
    return f"{h}x{w}x{c} {g.h.kernel}x{g.w.kernel}/{stride} -> {ho}x{wo}x{k}"


@dataclasses.dataclass(frozen=True)
class PlanArgs:
    """Resolved options of one ``jaxcnn plan`` run.

    Attributes:
      model: ``resnet50`` / ``vgg16`` (ignored when ``network`` is given).
      batch: global batch N.
      devices: devices P.
      memory_bytes: per-device memory budget in bytes.
      image: input height = width.
      dtype: element type of activations and kernels.
      network: optional YAML file of layers (overrides ``model``).
      measure: meter each chosen layer on fake devices.
      per_layer_only: plan layers independently (no layout transitions).
    """

    model: str = "resnet50"
    batch: int = 256
    devices: int = 64
    memory_bytes: float = 16 * 2**30
    image: int = 224
    dtype: str = "float32"
    network: str | None = None
    measure: bool = False
    per_layer_only: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the plan table."""

    layer: ConvLayer
    choice: Cost
    transition: float
    bound: float
    metered: float | None = None
    expected: float | None = None

    @property
    def ratio(self) -> float:
        """(predicted bytes + transition) / lower bound."""
        return (self.choice.bytes + self.transition) / self.bound if self.bound > 0 else math.inf


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxcnn plan",
        description="Plan per-layer distributed convolution algorithms for a network under a memory budget.",
    )
    p.add_argument(
        "--config", help="YAML file with the keys " + ", ".join(CONFIG_KEYS) + " (flags override it)"
    )
    p.add_argument("--model", help=f"network: one of {sorted(NETWORKS)} (default resnet50)")
    p.add_argument("--network", help="YAML list of layers (see jaxcnn.networks.layers_from_dicts)")
    p.add_argument("--batch", type=int, help="global batch size (default 256)")
    p.add_argument("--devices", type=int, help="number of devices P (default 64)")
    p.add_argument("--memory", help="per-device memory budget, e.g. 16GiB, 512MiB, 2e9 (default 16GiB)")
    p.add_argument("--image", type=int, help="input image height = width (default 224)")
    p.add_argument("--dtype", help=f"element type: one of {DTYPES} (default float32)")
    p.add_argument("--measure", action="store_true", default=None, help="meter each layer on fake devices")
    p.add_argument(
        "--per-layer-only",
        dest="per_layer_only",
        action="store_true",
        default=None,
        help="best per layer, ignoring layout transitions between layers",
    )
    return p


def _load_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as err:
        raise PlanCliError(f"cannot read config {path}: {err.strerror}") from None
    if not isinstance(data, Mapping):
        raise PlanCliError(
            f"{path}: a plan config must be a mapping of {CONFIG_KEYS}, got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise PlanCliError(f"{path}: unknown keys {unknown}; valid keys are {list(CONFIG_KEYS)}")
    data = dict(data)
    if data.get("network"):  # relative to the config file
        net = str(data["network"])
        if not os.path.isabs(net) and not os.path.exists(net):
            data["network"] = os.path.join(os.path.dirname(os.path.abspath(path)), net)
    return data


def resolve_args(argv: Sequence[str]) -> PlanArgs:
    """Parses flags (over an optional ``--config`` YAML) into validated :class:`PlanArgs`.

    Raises:
      PlanCliError: an unknown model / dtype / config key, a bad memory string, or a non-positive
        batch, image or device count.
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
    if network is None and model not in NETWORKS:
        raise PlanCliError(
            f"unknown model {model!r}; valid models are {sorted(NETWORKS)} (or --network FILE.yaml)"
        )
    if network is not None and not os.path.exists(str(network)):
        raise PlanCliError(f"network file {network} does not exist")
    ints = {}
    for key in ("batch", "devices", "image"):
        value = values.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanCliError(f"{key} must be a positive integer (>= 1), got {value!r}")
        ints[key] = value
    dtype = str(values.get("dtype", defaults.dtype))
    if dtype not in DTYPES:
        raise PlanCliError(f"unknown dtype {dtype!r}; valid dtypes are {list(DTYPES)}")
    flags = {}
    for key in ("measure", "per_layer_only"):
        value = values.get(key, False)
        if not isinstance(value, bool):
            raise PlanCliError(f"{key} must be true or false, got {value!r}")
        flags[key] = value
    return PlanArgs(
        model=model,
        memory_bytes=parse_memory(values.get("memory", "16GiB")),
        dtype=dtype,
        network=None if network is None else str(network),
        **ints,
        **flags,
    )


def load_layers(args: PlanArgs) -> list[ConvLayer]:
    """The network's convolutions in forward order."""
    if args.network:
        return layers_from_yaml(args.network, args.batch)
    return get_network(args.model, args.batch, args.image)


def _smallest_memory(layers: Sequence[ConvLayer], devices: int, dtype: str) -> float:
    """The least per-device budget under which every layer has a plan: max over layers of each one's
    smallest predicted peak."""
    return max(_least_peak(layer, devices, dtype) for layer in layers)


def _least_peak(layer: ConvLayer, devices: int, dtype: str) -> float:
    """The smallest predicted peak memory of any even (algorithm, grid) for one layer."""
    try:
        plan_layer(layer, devices, 0.0, dtype=dtype)
    except NoPlanError as err:
        return err.min_memory_bytes
    return 0.0


def make_plan(args: PlanArgs, layers: Sequence[ConvLayer]) -> list[Row]:
    """Plans ``layers`` and attaches transitions and bounds (no metering).

    Raises:
      NoPlanError: some layer fits nothing; the message names the smallest budget that fits every layer.
    """
    try:
        if args.per_layer_only:
            picks = [
                (plan_layer(layer, args.devices, args.memory_bytes, dtype=args.dtype).best, 0.0)
                for layer in layers
            ]
        else:
            plan = plan_network(layers, args.devices, args.memory_bytes, dtype=args.dtype)
            picks = [(s.choice, s.transition_forward + s.transition_backward) for s in plan.steps]
    except NoPlanError as err:
        need = _smallest_memory(layers, args.devices, args.dtype)
        raise NoPlanError(
            f"{err}. The smallest per-device memory that fits every layer is {fmt_bytes(need)} "
            f"(--memory {math.ceil(need)})",
            need,
        ) from None
    itemsize = itemsize_of(args.dtype)
    rows = []
    for layer, (choice, transition) in zip(layers, picks, strict=True):
        bound = sum(
            lower_bound(
                layer.geom,
                args.devices,
                args.memory_bytes if math.isfinite(args.memory_bytes) else None,
                itemsize,
                p,
            ).bytes
            for p in ("forward", "backward")
        )
        rows.append(Row(layer, choice, transition, bound))
    return rows


def measure_rows(rows: Sequence[Row], dtype: str) -> list[Row]:
    """Meters each row's (algorithm, grid) with :func:`jaxcnn.measure.measure_conv` (compile only).

    Identical (layer geometry, algorithm, grid) are compiled once. Needs at least as many JAX devices
    as the grids use. ``Row.expected`` is the prediction the meter must equal: the plan's bytes, except
    that XLA:CPU carries 16-bit collectives as float32 (``wire_dtype``, see :func:`jaxcnn.cost.predict`).
    """
    import jax
    import jax.numpy as jnp

    import jaxcnn
    from jaxcnn.measure import measure_conv

    wire = "float32" if itemsize_of(dtype) < 4 and jax.default_backend() == "cpu" else None
    cache: dict[Any, float] = {}
    out = []
    for row in rows:
        key = (row.layer.geom, row.choice.algorithm, tuple(row.choice.grid.items()))
        if key not in cache:
            mesh = jaxcnn.make_mesh(**row.choice.grid)
            fwd, bwd = measure_conv(
                row.layer.geom, mesh=mesh, algorithm=row.choice.algorithm, dtype=jnp.dtype(dtype)
            )
            cache[key] = fwd.max_bytes + bwd.max_bytes
        expected = row.choice.bytes
        if wire:
            expected = predict(
                row.layer.geom, row.choice.algorithm, row.choice.grid, dtype, wire_dtype=wire
            ).bytes
        out.append(dataclasses.replace(row, metered=cache[key], expected=expected))
    return out


def format_table(args: PlanArgs, rows: Sequence[Row]) -> str:
    """The aligned text table with a totals line (sums weighted by each layer's ``repeat``)."""
    head = [
        "layer",
        "shape (HxWxC k RxS/σ -> out)",
        "algorithm",
        "grid",
        "bytes f+b",
        "transition",
        "bound f+b",
        "ratio",
        "memory",
    ]
    if args.measure:
        head += ["metered f+b", "match"]
    table = [head]
    for row in rows:
        line = [
            row.layer.name + (f" x{row.layer.repeat}" if row.layer.repeat > 1 else ""),
            fmt_shape(row.layer),
            row.choice.algorithm,
            fmt_grid(row.choice.grid),
            fmt_bytes(row.choice.bytes),
            fmt_bytes(row.transition),
            fmt_bytes(row.bound),
            f"{row.ratio:.2f}",
            fmt_bytes(row.choice.memory.peak),
        ]
        if args.measure:
            line += [fmt_bytes(row.metered), "yes" if row.metered == row.expected else "NO"]
        table.append(line)
    rep = np.array([r.layer.repeat for r in rows], float)
    total_pred = float(rep @ [r.choice.bytes for r in rows])
    total_tr = float(rep @ [r.transition for r in rows])
    total_bound = float(rep @ [r.bound for r in rows])
    total = [
        "total",
        f"{len(rows)} layers",
        "",
        "",
        fmt_bytes(total_pred),
        fmt_bytes(total_tr),
        fmt_bytes(total_bound),
    ]
    total += [
        f"{(total_pred + total_tr) / total_bound:.2f}" if total_bound else "inf",
        fmt_bytes(max(r.choice.memory.peak for r in rows)),
    ]
    if args.measure:
        metered = float(rep @ [r.metered for r in rows])
        total += [fmt_bytes(metered), "yes" if all(r.metered == r.expected for r in rows) else "NO"]
    table.append(total)
    widths = [max(len(str(line[i])) for line in table) for i in range(len(head))]
    left = {0, 1, 2, 3}
    out = []
    for j, line in enumerate(table):
        cells = [
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if j == 0 or j == len(table) - 2:
            out.append("  ".join("-" * w for w in widths))
    name = os.path.basename(args.network) if args.network else f"{args.model} {args.image}x{args.image}"
    mode = "per layer (no transitions)" if args.per_layer_only else "network DP (with layout transitions)"
    header = (
        f"{name}, batch {args.batch}, {args.devices} devices, {fmt_bytes(args.memory_bytes)} per device, "
        f"{args.dtype}; {mode}\nbytes = received per device (max over devices), forward + backward; "
        "ratio = (bytes + transition) / bound"
    )
    return header + "\n" + "\n".join(out)


def _backend_started() -> bool:
    """Whether JAX's backend is already initialised (then XLA_FLAGS can no longer change the devices)."""
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", {}))


def _with_device_count(flags: str, devices: int) -> str:
    kept = [f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def ensure_devices(devices: int) -> bool:
    """Makes ``devices`` fake CPU devices available if JAX has not started yet.

    Returns:
      True when this process has (or will have) at least ``devices`` devices; False when the backend
      is already running with fewer (the caller must re-run in a subprocess).
    """
    import jax

    if not _backend_started():
        os.environ["XLA_FLAGS"] = _with_device_count(os.environ.get("XLA_FLAGS", ""), devices)
        jax.config.update("jax_platforms", "cpu")
    return len(jax.devices()) >= devices


def _rerun(argv: Sequence[str], devices: int) -> int:
    env = dict(
        os.environ,
        XLA_FLAGS=_with_device_count(os.environ.get("XLA_FLAGS", ""), devices),
        JAX_PLATFORMS="cpu",
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-m", "jaxcnn", "plan", *argv], env=env, capture_output=True, text=True, check=False
    )
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return out.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jaxcnn plan``; returns the exit status (0 ok, 2 bad input or no plan)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = resolve_args(argv)
        layers = load_layers(args)
        rows = make_plan(args, layers)
    except (PlanCliError, NoPlanError, ValueError) as err:
        print(f"jaxcnn plan: error: {err}", file=sys.stderr)
        return 2
    if args.measure:
        if not ensure_devices(args.devices):
            return _rerun(argv, args.devices)
        rows = measure_rows(rows, args.dtype)
    print(format_table(args, rows))
    return 0
