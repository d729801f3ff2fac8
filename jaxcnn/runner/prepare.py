"""Everything a run needs before its first step, for ``jaxcnn train`` and ``--compile-only`` alike.

:func:`prepare` goes mesh → data → optimizer → model → abstract batch → train state → jitted step →
compiled step → metered and predicted figures, in that order, so the cheapest checks fail first: a
mesh that does not fit the devices or the batches fails before any data is read, a train state too
big for the devices before any parameter is allocated (:mod:`jaxcnn.runner.fit`), a compiled step
too big before the run directory is touched.

``compile_only`` (``jaxcnn train --compile-only``, :mod:`jaxcnn.runner.aot`) keeps the state
abstract (``jax.ShapeDtypeStruct`` leaves: nothing is allocated), reads no data (the image shape
comes from :func:`jaxcnn.runner.data.image_spec`) and reports the memory figures instead of stopping
on them: with hundreds of fake CPU devices the host RAM split per device is meaningless, and checking
a config meant for bigger devices is the point.

:func:`assemble` is its first half, mesh → data → optimizer → model → abstract train state, with
nothing allocated and nothing compiled: what reading a checkpoint needs (``jaxcnn eval`` and
``jaxcnn predict``, :mod:`jaxcnn.runner.inference`, restore into its abstract state's shardings).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import optax
from jax.sharding import Mesh

from jaxcnn.planner.step import StepCost
from jaxcnn.planner.step_memory import StepMemory
from jaxcnn.planner.step_time import StepTime
from jaxcnn.runner import fit, optim, setup
from jaxcnn.runner.config import Config
from jaxcnn.runner.data import Dataset, image_spec, load_dataset
from jaxcnn.runner.predict import metered_bytes, model_for_prediction, predict
from jaxcnn.runner.state import Graphs, TrainState, abstract, abstract_state, init_state
from jaxcnn.runner.step import abstract_batch, jit_train_step
from jaxcnn.timing.model import TimeModel


@dataclasses.dataclass
class Prepared:
    """A run ready for its first step.

    Attributes:
      mesh: the run's mesh (input batches are ``P("n")`` on it).
      tx: the optimizer.
      graphs: the model's train and eval graphdefs.
      state: the train state: placed arrays, or ``jax.ShapeDtypeStruct`` s with ``compile_only``.
      batch: the abstract ``(images, labels)`` batch the step was compiled for.
      data: the dataset (None with ``compile_only``).
      image_shape: one image, ``(*spatial, channels)``.
      footprint: the train state and batch per device (:func:`jaxcnn.runner.fit.state_footprint`).
      compiled: the compiled, donated train step.
      compile_s: seconds to lower and compile it.
      comm_bytes: bytes the busiest device receives per step, metered from the compiled program
        (None when the meter cannot read it; ``comm_note`` says why).
      comm_note: why there is no ``comm_bytes``, else ``""``.
      predicted: the step's predicted bytes per device (None for a model without a plan graph).
      predicted_memory: its predicted peak memory per device (``compile_only`` only; None for a
        model without a plan graph).
      predicted_time: its predicted seconds (None for a model without a plan graph, or without a
        timing profile of the backend: ``time_note`` says why).
      time_note: why there is no ``predicted_time``, else ``""``.
    """

    mesh: Mesh
    tx: optax.GradientTransformation
    graphs: Graphs
    state: TrainState
    batch: tuple[Any, Any]
    data: Dataset | None
    image_shape: tuple[int, ...]
    footprint: fit.StateFootprint
    compiled: Any
    compile_s: float
    comm_bytes: float | None
    comm_note: str
    predicted: StepCost | None
    predicted_memory: StepMemory | None
    predicted_time: StepTime | None = None
    time_note: str = ""


@dataclasses.dataclass
class Assembled:
    """A run's parts before anything is allocated or compiled (:func:`assemble`).

    Attributes:
      mesh: the run's mesh (input batches are ``P("n")`` on it).
      tx: the optimizer.
      data: the dataset (None with ``compile_only``).
      image_shape: one image, ``(*spatial, channels)``.
      batch: the abstract ``(images, labels)`` train batch.
      build: builds the model (placements resolved, ``auto`` planned).
      graphs: the model's train and eval graphdefs.
      state: the abstract train state (``jax.ShapeDtypeStruct`` leaves with their shardings).
      time_model: the backend's time model, or None (``time_note`` says why).
      time_note: why there is no time model, else ``""``.
    """

    mesh: Mesh
    tx: optax.GradientTransformation
    data: Dataset | None
    image_shape: tuple[int, ...]
    batch: tuple[Any, Any]
    build: Callable[[], Any]
    graphs: Graphs
    state: TrainState
    time_model: TimeModel | None
    time_note: str


def assemble(
    cfg: Config, builder: setup.ModelBuilder | None = None, *, compile_only: bool = False
) -> Assembled:
    """Mesh → data → optimizer → model → abstract train state of ``cfg``'s run (the module docstring).

    Args:
      cfg: the validated config.
      builder: a function with ``jaxcnn.models.build``'s signature (default: ``jaxcnn.models.build``).
      compile_only: read no data (the image shape from :func:`jaxcnn.runner.data.image_spec`).

    Raises:
      ConfigError: the mesh does not fit the devices or batches, the data cannot be read, the builder
        rejects the ``model`` section (:func:`jaxcnn.runner.setup.model_builder`), or ``auto`` finds no
        plan.
    """
    mesh = setup.build_mesh(cfg)
    data = None if compile_only else load_dataset(cfg.data, cfg.seed)
    image_shape, num_classes = (
        image_spec(cfg.data, cfg.seed) if data is None else (data.image_shape, data.num_classes)
    )
    tx = optim.optimizer(cfg.optimizer, cfg.train.steps)
    batch = abstract_batch(mesh, cfg.train.batch_size, image_shape, cfg.data.task)
    time_model, time_note = setup.time_model()
    build = setup.model_builder(cfg, mesh, num_classes, image_shape, builder, time_model=time_model)
    graphs, state = abstract_state(build, tx, mesh)
    return Assembled(mesh, tx, data, image_shape, batch, build, graphs, state, time_model, time_note)


def prepare(
    cfg: Config, builder: setup.ModelBuilder | None = None, *, compile_only: bool = False
) -> Prepared:
    """Builds and compiles ``cfg``'s run on the current devices (see the module docstring).

    Args:
      cfg: the validated config.
      builder: a function with ``jaxcnn.models.build``'s signature (default: ``jaxcnn.models.build``).
      compile_only: abstract state, no data, memory reported rather than checked.

    Raises:
      ConfigError: the mesh does not fit the devices or batches, the builder rejects the ``model``
        section (:func:`jaxcnn.runner.setup.model_builder`), ``auto`` finds no plan, or (not
        ``compile_only``) the train state or the compiled step does not fit a device's memory.
    """
    parts = assemble(cfg, builder, compile_only=compile_only)
    mesh, tx, graphs, state, batch = parts.mesh, parts.tx, parts.graphs, parts.state, parts.batch
    subject, devices = fit.model_subject(cfg), list(mesh.devices.flat)
    if compile_only:
        footprint = fit.state_footprint(state, batch)
    else:
        footprint = fit.check_state(state, batch, subject=subject, devices=devices)
        graphs, state = init_state(parts.build(), tx, mesh)
    t0 = time.perf_counter()
    compiled = jit_train_step(graphs, tx, state, mesh).lower(abstract(state), *batch).compile()
    compile_s = time.perf_counter() - t0
    if not compile_only:
        fit.check_compiled(compiled, subject=subject, devices=devices, footprint=footprint)
    comm_bytes, comm_note = metered_bytes(compiled)
    figures = predict(
        model_for_prediction(graphs, state),
        mesh,
        cfg.train.batch_size,
        parts.image_shape,
        cfg.model.dtypes,
        # the peak-memory prediction is a --compile-only figure; a run only prints the bytes
        state_bytes=footprint.total - footprint.parts.get("gradients", 0) if compile_only else None,
        time_model=parts.time_model,
        optimizer=cfg.optimizer.name,
    )
    return Prepared(
        mesh,
        tx,
        graphs,
        state,
        batch,
        parts.data,
        parts.image_shape,
        footprint,
        compiled,
        compile_s,
        comm_bytes,
        comm_note,
        figures.cost,
        figures.memory,
        figures.time,
        parts.time_note,
    )
