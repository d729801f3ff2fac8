"""``jaxcnn plan --whole-step``: the model placed as a graph and its whole train step predicted.

Builds the :mod:`jaxcnn.models` network abstractly on ``devices`` (fake) devices, traces its
convolutions for the batch, places them with :func:`jaxcnn.planner.network.plan_graph` and prints
:func:`jaxcnn.planner.step.step_cost`: the same ``predicted_comm_bytes_per_step_max_device`` that
``jaxcnn train CONFIG --compile-only model.algorithms=auto`` prints for that model and batch, and the
placements as a ``model.algorithms`` mapping that can be pasted into a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxcnn import models
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR
from jaxcnn.mesh import batch_mesh_sizes, make_mesh
from jaxcnn.planner.model import plan_model
from jaxcnn.timing.model import TimeModel


def whole_step(
    model: str,
    batch: int,
    devices: int,
    image: int,
    memory_bytes: float,
    dtype: str,
    num_classes: int,
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
    time_model: TimeModel | None = None,
    objective: str = "bytes",
    in_channels: int = 3,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Plans and predicts a whole train step of ``model`` (needs ``devices`` JAX devices): its bytes
    moved and its peak memory per device (:func:`jaxcnn.planner.model.plan_model`: the train state
    estimated from the placements with Adam's two moments; ``memory_bytes`` caps it).

    The images are laid out as ``model.algorithms: auto`` lays them out (:func:`jaxcnn.mesh.batch_mesh_sizes`:
    the batch over ``n = gcd(batch, devices)``, the rest on ``c``). ``hosts`` and ``dcn_cost_factor``
    are :func:`jaxcnn.planner.network.plan_graph`'s (the plan minimises ``ICI + dcn_cost_factor · DCN``
    bytes on ``hosts > 1``). The input is ``image`` on each side with ``in_channels`` channels: a
    volume for ``options`` with ``spatial_dims=3`` (the U-Net's). ``progress`` is called with each
    phase's description as it starts (building, tracing, placing, predicting).

    Returns:
      ``{"placements": {layer: placement}, "predicted_comm_bytes_per_step_max_device": float,
      "predicted_dcn_bytes_per_step_max_device": float, "hosts": int, "components": {...},
      "predicted_memory_bytes_per_device": float, "predicted_memory_peak_at": str,
      "memory_components": {...}}``; with a ``time_model`` (:mod:`jaxcnn.planner.step_time`; the plan
      minimises it with ``objective="time"``) also ``"objective"``, ``"predicted_step_time_s"``,
      ``"time_components"`` and ``"layer_seconds"`` (each convolution's own seconds, and the layout
      changes').
    """
    sizes = batch_mesh_sizes({"n": devices}, batch)
    mesh = make_mesh(**sizes)
    if progress is not None:
        progress(f"building {model} on {devices} devices")
    built = models.build_abstract(
        model, num_classes=num_classes, in_channels=in_channels, mesh=mesh, **options
    )
    sides = (image,) * options.get("spatial_dims", 2)
    plan = plan_model(
        built,
        batch,
        (*sides, in_channels),
        sizes,
        memory_bytes=memory_bytes,
        dtype=dtype,
        platform=jax.devices()[0].platform,
        hosts=hosts,
        dcn_cost_factor=dcn_cost_factor,
        time_model=time_model,
        objective=objective,
        progress=progress,
    )
    cost, memory = plan.cost, plan.memory
    timed = {}
    if plan.time is not None:
        timed = {
            "objective": objective,
            "predicted_step_time_s": plan.time.seconds,
            "time_components": dict(plan.time.components),
            "layer_seconds": dict(plan.time.layers),
        }
    return {
        "placements": plan.placements,
        "predicted_comm_bytes_per_step_max_device": cost.max_bytes,
        "predicted_dcn_bytes_per_step_max_device": cost.dcn_max_bytes,
        "hosts": hosts,
        "components": dict(cost.components),
        "predicted_memory_bytes_per_device": memory.peak,
        "predicted_memory_peak_at": memory.at,
        "memory_components": {"train state and images": memory.state, **memory.components},
        **timed,
    }


def format_whole_step(result: dict[str, Any]) -> str:
    """The whole-step section of ``jaxcnn plan``'s output."""
    lines = [
        "",
        "whole train step (the model's graph placed jointly: residual blocks, head, every layout change):",
        f"predicted_comm_bytes_per_step_max_device: {result['predicted_comm_bytes_per_step_max_device']:.0f}",
    ]
    if result.get("hosts", 1) > 1:
        dcn = result["predicted_dcn_bytes_per_step_max_device"]
        lines.append(f"predicted_dcn_bytes_per_step_max_device: {dcn:.0f} ({result['hosts']} hosts)")
    lines += [f"  {k}: {v:,.0f}" for k, v in result["components"].items()]
    lines.append(
        f"predicted_memory_bytes_per_device: {result['predicted_memory_bytes_per_device']:.0f} "
        f"(peak at the {result['predicted_memory_peak_at']}; Adam's state estimated)"
    )
    lines += [f"  {k}: {v:,.0f}" for k, v in result["memory_components"].items()]
    if "predicted_step_time_s" in result:
        lines.append(
            f"predicted_step_time_s: {result['predicted_step_time_s']:.6g} (planned by {result['objective']})"
        )
        lines += [f"  {k}: {v * 1e3:.3f} ms" for k, v in result["time_components"].items()]
        lines.append("seconds per layer (its compute, memory-bound work and own collectives):")
        lines += [f"  {k}: {v * 1e3:.3f} ms" for k, v in result["layer_seconds"].items()]
    lines.append("model.algorithms:")
    lines += [f"  {name}: {p}" for name, p in result["placements"].items()]
    return "\n".join(lines)
