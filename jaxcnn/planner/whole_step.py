"""``jaxcnn plan --whole-step``: the model placed as a graph and its whole train step predicted.

Builds the :mod:`jaxcnn.models` network abstractly on ``devices`` (fake) devices, traces its
convolutions for the batch, places them with :func:`jaxcnn.planner.network.plan_graph` and prints
:func:`jaxcnn.planner.step.step_cost`: the same ``predicted_comm_bytes_per_step_max_device`` that
``jaxcnn train CONFIG --compile-only model.algorithms=auto`` prints for that model and batch, and the
placements as a ``model.algorithms`` mapping that can be pasted into a config.
"""

from __future__ import annotations

import math
from typing import Any

from jax.sharding import PartitionSpec as P

from jaxcnn.links import DEFAULT_DCN_COST_FACTOR


def input_mesh_sizes(batch: int, devices: int) -> dict[str, int]:
    """The run mesh of ``auto`` for the images: batch over ``n = gcd(batch, devices)``, the rest on ``c``."""
    n = math.gcd(batch, devices)
    return {"n": n, "h": 1, "w": 1, "k": 1, "c": devices // n}


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
    **options: Any,
) -> dict[str, Any]:
    """Plans and predicts a whole train step of ``model`` (needs ``devices`` JAX devices): its bytes
    moved and its peak memory per device (:func:`jaxcnn.planner.step_memory.step_memory`, the train
    state estimated from the placements with Adam's two moments; ``memory_bytes`` caps it).

    ``hosts`` and ``dcn_cost_factor`` are :func:`jaxcnn.planner.network.plan_graph`'s (the plan
    minimises ``ICI + dcn_cost_factor · DCN`` bytes on ``hosts > 1``).

    Returns:
      ``{"placements": {layer: placement}, "predicted_comm_bytes_per_step_max_device": float,
      "predicted_dcn_bytes_per_step_max_device": float, "hosts": int, "components": {...},
      "predicted_memory_bytes_per_device": float, "predicted_memory_peak_at": str,
      "memory_components": {...}}``.
    """
    import jax
    from flax import nnx

    import jaxcnn
    from jaxcnn import models
    from jaxcnn.cost import itemsize_of
    from jaxcnn.models.trace import trace_layers
    from jaxcnn.nn.placement import format_placement
    from jaxcnn.planner.network import plan_graph
    from jaxcnn.planner.step import grid_key, step_cost
    from jaxcnn.planner.step_memory import step_memory

    sizes = input_mesh_sizes(batch, devices)
    platform = jax.devices()[0].platform
    mesh = jaxcnn.make_mesh(**sizes)
    built = nnx.eval_shape(
        lambda: models.build(
            model,
            num_classes=num_classes,
            in_channels=3,
            mesh=mesh,
            algorithms=f"data@n={devices}",
            rngs=nnx.Rngs(0),
            sharded_init=False,
            **options,
        )
    )
    layers = {layer.name: layer.geom for layer in trace_layers(built, batch, (image, image, 3))}
    source = (P("n"), grid_key(sizes))
    chosen = plan_graph(
        built.plan_graph,
        layers,
        devices,
        source,
        memory_bytes,
        dtype=dtype,
        hosts=hosts,
        dcn_cost_factor=dcn_cost_factor,
        platform=platform,
    )
    cost = step_cost(built.plan_graph, layers, chosen, source, dtype, hosts)
    images = batch * image * image * 3 * itemsize_of(dtype) / sizes["n"]
    memory = step_memory(
        built.plan_graph, layers, chosen, batch_bytes=images, platform=platform, itemsize=itemsize_of(dtype)
    )
    return {
        "placements": {name: format_placement(c.algorithm, c.grid) for name, c in chosen.items()},
        "predicted_comm_bytes_per_step_max_device": cost.max_bytes,
        "predicted_dcn_bytes_per_step_max_device": cost.dcn_max_bytes,
        "hosts": hosts,
        "components": dict(cost.components),
        "predicted_memory_bytes_per_device": memory.peak,
        "predicted_memory_peak_at": memory.at,
        "memory_components": {"train state and images": memory.state, **memory.components},
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
    lines.append("model.algorithms:")
    lines += [f"  {name}: {p}" for name, p in result["placements"].items()]
    return "\n".join(lines)
