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

import time
from typing import Any

import jax
from flax import nnx

from jaxcnn.models.common import Head
from jaxcnn.models.trace import named_convs
from jaxcnn.nn.placement import format_placement
from jaxcnn.runner import fit, optim, setup
from jaxcnn.runner.config import Config
from jaxcnn.runner.data.datasets import image_spec
from jaxcnn.runner.predict import metered_bytes, model_for_prediction, predict
from jaxcnn.runner.state import abstract_state
from jaxcnn.runner.step import abstract_batch, jit_train_step


def compile_train_step(cfg: Config, builder: setup.ModelBuilder | None = None) -> dict[str, Any]:
    """Compiles ``cfg``'s train step for the current devices.

    Args:
      cfg: the config (its mesh must fit ``jax.device_count()``).
      builder: model builder (default ``jaxcnn.models.build``).

    Returns:
      ``{"compiled", "compile_time_s", "mesh", "num_params" (without the head's zero class padding),
      "head_padding_params", "temp_bytes", "argument_bytes",
      "comm_bytes_per_step_max_device", "predicted_comm_bytes_per_step_max_device",
      "predicted_components", "predicted_kinds", "memory_state_bytes_per_device",
      "memory_compiled_bytes_per_device", "device_memory_bytes", "device_memory_source",
      "memory_fits", "predicted_memory_bytes_per_device", "predicted_memory_peak_at"}`` (memory
      figures per device, from XLA's memory analysis and :func:`jaxcnn.runner.fit.report` - reported,
      never raised; the predicted peak from :mod:`jaxcnn.planner.step_memory`; the communication
      figure from :mod:`jaxcnn.measure` when available, else None).

    Raises:
      ConfigError: the mesh does not fit the devices or batches, or the builder rejects the
        ``model`` section (see :func:`jaxcnn.runner.setup.build_model`).
    """
    mesh = setup.build_mesh(cfg)
    shape, num_classes = image_spec(cfg.data, cfg.seed)
    tx = optim.optimizer(cfg.optimizer, cfg.train.steps)
    graphs, state = abstract_state(
        lambda: setup.build_model(cfg, mesh, num_classes, shape, builder), tx, mesh
    )
    batch = abstract_batch(mesh, cfg.train.batch_size, shape, cfg.data.task)
    footprint = fit.state_footprint(state, batch)  # reported, never a stop (see the module docstring)
    t0 = time.perf_counter()
    step = jit_train_step(graphs, tx, state, mesh)
    compiled = step.lower(state, *batch).compile()
    elapsed = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    model = nnx.merge(graphs.train, state["params"], state["rest"])  # abstract: nothing allocated
    padding = sum(m.padding_params for _, m in nnx.iter_modules(model) if isinstance(m, Head))
    predicted, memory_model = predict(
        model_for_prediction(graphs, state),
        mesh,
        cfg.train.batch_size,
        shape,
        cfg.model.dtype,
        state_bytes=footprint.total - footprint.parts.get("gradients", 0),
    )
    return {
        "compiled": compiled,
        "compile_time_s": elapsed,
        "mesh": dict(mesh.shape),
        "num_params": num_params - padding,
        "head_padding_params": padding,
        "placements": {
            name: format_placement(c.algorithm, dict(c.mesh.shape)) for name, c in named_convs(model).values()
        },
        "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "comm_bytes_per_step_max_device": metered_bytes(compiled)[0],
        "predicted_comm_bytes_per_step_max_device": None if predicted is None else predicted.max_bytes,
        "predicted_components": None if predicted is None else dict(predicted.components),
        "predicted_kinds": None if predicted is None else dict(predicted.kinds),
        **fit.report(footprint, compiled, list(mesh.devices.flat)),
        "predicted_memory_bytes_per_device": None if memory_model is None else round(memory_model.peak),
        "predicted_memory_peak_at": None if memory_model is None else memory_model.at,
    }


def describe(result: dict[str, Any]) -> str:
    """One line per figure of :func:`compile_train_step`'s result."""
    return "\n".join(f"{k}: {v}" for k, v in result.items() if k != "compiled")
