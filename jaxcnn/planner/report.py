"""The ``jaxcnn plan`` table: per-layer rows (choice, predicted and metered bytes, bound, memory) and
their formatting. Argument parsing and device set-up live in :mod:`jaxcnn.planner.cli`."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.bounds import lower_bound
from jaxcnn.cost import Cost, itemsize_of, predict
from jaxcnn.dtypes import Dtypes
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR
from jaxcnn.measure import measure_conv
from jaxcnn.mesh import make_mesh
from jaxcnn.networks import ConvLayer
from jaxcnn.planner.plan import NoPlanError, plan_layer, plan_network


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
    """``HxWxC k RxS/σ -> HoxWoxK`` of one layer (the batch is shown once, in the header); a 1-D layer
    shows ``WxC k S/σ -> WoxK``, a 3-D one ``DxHxWxC k TxRxS/σ -> DoxHoxWoxK`` (σ as ``σd,σh,σw`` when
    the strides differ)."""
    g = layer.geom
    strides = g.strides
    stride = strides[0] if len(set(strides)) == 1 else ",".join(map(str, strides))
    x, window, y = ("x".join(map(str, shape)) for shape in (g.x_shape[1:], g.window, g.y_shape[1:]))
    return f"{x} {window}/{stride} -> {y}"


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
      whole_step: also place the model as a graph and predict its whole train step.
      classes: classifier width for ``whole_step`` (logits per voxel for a segmentation model).
      spatial_dims: 2 (images) or 3 (volumes, ``image`` on each side): the U-Net's ``spatial_dims``.
      hosts: hosts the devices are split over (:mod:`jaxcnn.links`); > 1 ranks by weighted bytes and
        adds a column of the bytes over the DCN.
      dcn_cost_factor: how much dearer a byte between hosts is than one within a host.
      objective: what ``whole_step`` minimises: ``"time"``, ``"bytes"``, or None (time where there is
        a time model, else bytes).
      preset: price time with this preset's published figures (:mod:`jaxcnn.timing.presets`) instead
        of the backend's measured profile.
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
    whole_step: bool = False
    classes: int = 1000
    spatial_dims: int = 2
    hosts: int = 1
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR
    objective: str | None = None
    preset: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the plan table."""

    layer: ConvLayer
    choice: Cost
    transition: float
    bound: float
    metered: float | None = None
    expected: float | None = None
    dcn: float = 0.0  # of bytes + transition, those over the DCN (max per device)

    @property
    def ratio(self) -> float:
        """(predicted bytes + transition) / lower bound."""
        return (self.choice.bytes + self.transition) / self.bound if self.bound > 0 else math.inf


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
    links = {"hosts": args.hosts, "dcn_cost_factor": args.dcn_cost_factor}
    try:
        if args.per_layer_only:
            best = [
                plan_layer(layer, args.devices, args.memory_bytes, dtype=args.dtype, **links).best
                for layer in layers
            ]
            picks = [(c, 0.0, c.dcn_bytes) for c in best]
        else:
            plan = plan_network(layers, args.devices, args.memory_bytes, dtype=args.dtype, **links)
            picks = [
                (s.choice, s.transition_forward + s.transition_backward, s.dcn_bytes) for s in plan.steps
            ]
    except NoPlanError as err:
        need = _smallest_memory(layers, args.devices, args.dtype)
        raise NoPlanError(
            f"{err}. The smallest per-device memory that fits every layer is {fmt_bytes(need)} "
            f"(--memory {math.ceil(need)})",
            need,
        ) from None
    itemsize = itemsize_of(args.dtype)
    rows = []
    for layer, (choice, transition, dcn) in zip(layers, picks, strict=True):
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
        rows.append(Row(layer, choice, transition, bound, dcn=dcn))
    return rows


def measure_rows(rows: Sequence[Row], dtype: str) -> list[Row]:
    """Meters each row's (algorithm, grid) with :func:`jaxcnn.measure.measure_conv` (compile only).

    Identical (layer geometry, algorithm, grid) are compiled once. Needs at least as many JAX devices
    as the grids use. ``Row.expected`` is the prediction the meter must equal: the plan's bytes, with
    the sums priced as this backend carries them (:meth:`jaxcnn.dtypes.Dtypes.on`: XLA:CPU moves a
    16-bit sum as float32; the default sums are float32 anyway).
    """
    on_backend = Dtypes.of(dtype).on(jax.default_backend())
    cache: dict[Any, float] = {}
    out = []
    for row in rows:
        key = (row.layer.geom, row.choice.algorithm, tuple(row.choice.grid.items()))
        if key not in cache:
            mesh = make_mesh(**row.choice.grid)
            fwd, bwd = measure_conv(
                row.layer.geom, mesh=mesh, algorithm=row.choice.algorithm, dtype=jnp.dtype(dtype)
            )
            cache[key] = fwd.max_bytes + bwd.max_bytes
        expected = row.choice.bytes
        if on_backend != Dtypes.of(dtype):
            expected = predict(row.layer.geom, row.choice.algorithm, row.choice.grid, on_backend).bytes
        out.append(dataclasses.replace(row, metered=cache[key], expected=expected))
    return out


def format_table(args: PlanArgs, rows: Sequence[Row]) -> str:
    """The aligned text table with a totals line (sums weighted by each layer's ``repeat``)."""
    ranks = {row.layer.geom.rank for row in rows}
    shape = (
        {1: "WxC k S/σ", 3: "DxHxWxC k TxRxS/σ"}.get(ranks.pop(), "HxWxC k RxS/σ")
        if len(ranks) == 1
        else "input k kernel/σ"
    )
    head = [
        "layer",
        f"shape ({shape} -> out)",
        "algorithm",
        "grid",
        "bytes f+b",
        "transition",
        "bound f+b",
        "ratio",
        "memory",
    ]
    hosts = args.hosts > 1
    if hosts:
        head.insert(6, "dcn f+b")
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
        if hosts:
            line.insert(6, fmt_bytes(row.dcn))
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
    if hosts:
        total.insert(6, fmt_bytes(float(rep @ [r.dcn for r in rows])))
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
    name = (
        os.path.basename(args.network)
        if args.network
        else f"{args.model} {'x'.join([str(args.image)] * args.spatial_dims)}"
    )
    mode = "per layer (no transitions)" if args.per_layer_only else "network DP (with layout transitions)"
    header = (
        f"{name}, batch {args.batch}, {args.devices} devices, {fmt_bytes(args.memory_bytes)} per device, "
        f"{args.dtype}; {mode}\nbytes = received per device (max over devices), forward + backward; "
        "ratio = (bytes + transition) / bound"
    )
    if hosts:
        header += (
            f"\n{args.hosts} hosts of {args.devices // args.hosts} devices; dcn = of bytes + transition, "
            f"those between hosts (max per device); ranked by bytes + {args.dcn_cost_factor:g} x dcn"
        )
    return header + "\n" + "\n".join(out)
