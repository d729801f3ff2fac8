"""Compile-only checks: lower and compile a config's train step on abstract inputs, never run it.

``jaxcnn train CONFIG --compile-only`` (or :func:`compile_train_step`) builds the model under
``nnx.eval_shape`` (no parameters are allocated), lowers the jitted, donated train step with
``jax.ShapeDtypeStruct`` inputs carrying their shardings, and compiles it. With
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` this checks a TPU-pod or GPU-node config on one
CPU machine (shrink ``train.batch_size`` / ``data.image_size`` with overrides to keep it quick).

It also reports whether the step fits the devices' memory (:mod:`jaxcnn.runner.fit`: the train state
per device before compiling, XLA's memory analysis after, against what a device has) but never stops
on it: with hundreds of fake CPU devices the host RAM split per device is meaningless, and checking a
config meant for bigger devices is the point. ``jaxcnn train`` (:func:`jaxcnn.runner.train.train`)
stops on the same figures.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxcnn.models.common import Head
from jaxcnn.models.trace import named_convs
from jaxcnn.nn.placement import format_placement
from jaxcnn.runner import fit, setup
from jaxcnn.runner.config import Config
from jaxcnn.runner.prepare import prepare


def compile_train_step(cfg: Config, builder: setup.ModelBuilder | None = None) -> dict[str, Any]:
    """Compiles ``cfg``'s train step for the current devices (:func:`jaxcnn.runner.prepare.prepare`
    with ``compile_only``).

    Args:
      cfg: the config (its mesh must fit ``jax.device_count()``).
      builder: model builder (default ``jaxcnn.models.build``).

    Returns:
      ``{"compiled", "compile_time_s", "mesh", "num_params" (without the head's zero class padding),
      "head_padding_params", "placements", "temp_bytes", "argument_bytes",
      "comm_bytes_per_step_max_device", "predicted_comm_bytes_per_step_max_device",
      "predicted_components", "predicted_kinds", "predicted_step_time_s", "predicted_time_components",
      "predicted_time_note" (only when there is no time figure for a model with a plan graph: why),
      "memory_state_bytes_per_device",
      "memory_compiled_bytes_per_device", "device_memory_bytes", "device_memory_source",
      "memory_fits", "predicted_memory_bytes_per_device", "predicted_memory_peak_at"}`` (memory
      figures per device, from XLA's memory analysis and :func:`jaxcnn.runner.fit.report` - reported,
      never raised; the predicted peak from :mod:`jaxcnn.planner.step_memory`; the communication
      figure from :mod:`jaxcnn.measure` when available, else None).

    Raises:
      ConfigError: the mesh does not fit the devices or batches, or the builder rejects the
        ``model`` section (see :func:`jaxcnn.runner.setup.model_builder`).
    """
    run = prepare(cfg, builder, compile_only=True)
    state, predicted, memory_model = run.state, run.predicted, run.predicted_memory
    memory = run.compiled.memory_analysis()
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    model = nnx.merge(run.graphs.train, state["params"], state["rest"])  # abstract: nothing allocated
    padding = sum(m.padding_params for _, m in nnx.iter_modules(model) if isinstance(m, Head))
    return {
        "compiled": run.compiled,
        "compile_time_s": run.compile_s,
        "mesh": dict(run.mesh.shape),
        "num_params": num_params - padding,
        "head_padding_params": padding,
        "placements": {
            name: format_placement(c.algorithm, dict(c.mesh.shape)) for name, c in named_convs(model).values()
        },
        "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "comm_bytes_per_step_max_device": run.comm_bytes,
        "predicted_comm_bytes_per_step_max_device": None if predicted is None else predicted.max_bytes,
        "predicted_components": None if predicted is None else dict(predicted.components),
        "predicted_kinds": None if predicted is None else dict(predicted.kinds),
        "predicted_step_time_s": None
        if run.predicted_time is None
        else float(f"{run.predicted_time.seconds:.6g}"),
        "predicted_time_components": None
        if run.predicted_time is None
        else {k: float(f"{v:.4g}") for k, v in run.predicted_time.components.items()},
        **({"predicted_time_note": run.time_note} if run.time_note and predicted is not None else {}),
        **fit.report(run.footprint, run.compiled, list(run.mesh.devices.flat)),
        "predicted_memory_bytes_per_device": None if memory_model is None else round(memory_model.peak),
        "predicted_memory_peak_at": None if memory_model is None else memory_model.at,
    }


def describe(result: dict[str, Any]) -> str:
    """One ``key: value`` line per figure of :func:`compile_train_step`'s result, except the placements:
    ``placements: <count> convolutions`` and then one indented ``<layer>  <placement>`` line per
    convolution (no ``": "`` in them, so ``key: value`` parsers skip them; :func:`parse_placements` reads
    them back)."""
    lines = []
    for key, value in result.items():
        if key == "compiled":
            continue
        if key == "placements":
            width = max((len(name) for name in value), default=0)
            lines.append(f"placements: {len(value)} convolutions")
            lines += [f"  {name:<{width}}  {placement}" for name, placement in value.items()]
            continue
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def parse_placements(text: str) -> dict[str, str]:
    """The ``{layer: placement}`` table that :func:`describe` prints in ``text`` (empty without one)."""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("placements: "):
            break
    table = {}
    for line in lines:
        if not line.startswith("  "):
            break
        name, placement = line.split()
        table[name] = placement
    return table
