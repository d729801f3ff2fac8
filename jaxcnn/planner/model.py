"""A whole model, planned or predicted: the one entry from a built model to placements and figures.

model + batch + devices in, placements + predictions out:

- :func:`plan_model`: places every convolution of a model built abstractly (``nnx.eval_shape``, every
  convolution on ``data`` over all the devices): a model with a plan graph (every
  :mod:`jaxcnn.models` network) as a whole by :func:`jaxcnn.planner.network.plan_graph` (residual
  blocks, the head, every layout change and the step's other collectives priced), any other
  model's named convolutions as a chain by :func:`jaxcnn.planner.plan.plan_network`; and predicts
  the chosen step's bytes and peak memory per device.
- :func:`predict_model`: the same predictions for a model as built, from the placements its
  convolutions carry (what ``jaxcnn train`` prints next to the bytes it meters).

Both trace the model's convolutions for the batch (:func:`jaxcnn.models.trace.trace_layers`: exact
geometries, in execution order, under the names a plan is keyed by) and price the step with
:func:`jaxcnn.planner.step.step_cost` and :func:`jaxcnn.planner.step_memory.step_memory`. The
images arrive as ``P("n")`` on the run mesh ``input_sizes`` (:func:`jaxcnn.mesh.batch_mesh_sizes`:
the batch over ``n``, the rest replicated).

Callers: ``model.algorithms: auto`` (:mod:`jaxcnn.runner.autoplan`, which only turns errors into
config errors), a run's predictions (:mod:`jaxcnn.runner.predict`) and ``jaxcnn plan --whole-step``
(:mod:`jaxcnn.planner.whole_step`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxcnn.cost import itemsize_of
from jaxcnn.dtypes import Dtypes
from jaxcnn.geometry import ConvGeometry
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR, check_hosts
from jaxcnn.mesh import mesh_sizes
from jaxcnn.models.protocol import Network
from jaxcnn.models.trace import named_convs, trace_layers
from jaxcnn.nn.placement import format_placement
from jaxcnn.planner.network import plan_graph
from jaxcnn.planner.plan import plan_network
from jaxcnn.planner.step import StepCost, choices_for, first_conv, grid_key, step_cost
from jaxcnn.planner.step_memory import StepMemory, step_memory
from jaxcnn.planner.step_time import StepTime, step_time
from jaxcnn.timing.model import TimeModel


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """A model's placements and the predictions for its train step.

    Attributes:
      placements: ``{layer: "alg@axis=size,..."}`` on the run's devices (a ``model.algorithms``
        mapping).
      layers: ``{layer: geometry}`` for the batch, in execution order.
      cost: the step's predicted bytes per device; None for a model without a plan graph.
      memory: the step's predicted peak memory per device; None without a plan graph (or, for
        :func:`predict_model`, without ``state_bytes``).
      time: the step's predicted seconds; None without a plan graph or a time model.
    """

    placements: dict[str, str]
    layers: dict[str, ConvGeometry]
    cost: StepCost | None = None
    memory: StepMemory | None = None
    time: StepTime | None = None


def plan_model(
    model: nnx.Module,
    batch: int,
    image_shape: tuple[int, ...],
    input_sizes: Mapping[str, int],
    *,
    memory_bytes: float = math.inf,
    dtype: str | Dtypes = "float32",
    platform: str = "cpu",
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
    time_model: TimeModel | None = None,
    objective: str = "bytes",
    optimizer: str = "adam",
    progress: Callable[[str], None] | None = None,
) -> ModelPlan:
    """Places ``model``'s convolutions on the devices of the run mesh ``input_sizes`` and predicts
    the step (bytes; peak memory with Adam's state estimated from the placements; seconds with a
    ``time_model``).

    Args:
      model: the model, built abstractly with every convolution on ``data`` over all the devices: a
        :class:`jaxcnn.models.Network` is placed by its plan graph, any other model's named
        convolutions as a chain.
      batch: global batch size.
      image_shape: one image, ``(*spatial, channels)``.
      input_sizes: the run mesh's axis sizes (the images' layout ``P("n")`` on it); its product is the
        device count every placement uses.
      memory_bytes: per-device cap on the whole step's predicted peak (``math.inf``: none).
      dtype: the computation dtype, or a :class:`jaxcnn.dtypes.Dtypes` that also names the dtype the
        sums travel in (``docs/mixed_precision.md``).
      platform: ``"cpu"``, ``"gpu"`` or ``"tpu"`` (how max pooling's backward is held in memory, and
        whether 16-bit sums travel as float32: :meth:`jaxcnn.dtypes.Dtypes.on`).
      hosts: hosts the devices lie on (equal consecutive groups of the flat device order).
      dcn_cost_factor: how much dearer a byte between hosts is (``hosts > 1``).
      time_model: the backend's time model (:mod:`jaxcnn.timing.model`): the step's seconds are
        predicted, and with ``objective="time"`` minimised.
      objective: ``"bytes"`` or ``"time"`` (needs ``time_model``; a model without a plan graph is
        placed by bytes).
      optimizer: the optimizer's name (its update's time).
      progress: called with each phase's description as it starts (tracing, placing, predicting).

    Raises:
      jaxcnn.models.trace.UnnamedConvolutions: some convolutions have no names to key the plan by.
      NoPlanError: no plan keeps the step under ``memory_bytes``.
      ValueError: ``hosts`` does not divide the device count; an unknown ``objective``, or ``"time"``
        without a ``time_model``.
    """
    check_objective(objective, time_model)
    dtype = Dtypes.of(dtype).on(platform)
    devices = math.prod(input_sizes.values())
    report = progress or (lambda _: None)
    report("tracing the convolutions")
    traced = trace_layers(model, batch, image_shape)
    check_hosts(devices, hosts)
    layers = {layer.name: layer.geom for layer in traced}
    graph = model.plan_graph if isinstance(model, Network) else None  # else: a chain of named convs
    links = {"hosts": hosts, "dcn_cost_factor": dcn_cost_factor}
    if graph is None:
        report(f"placing {len(traced)} convolutions as a chain")
        # no replicated placements in a model's step (jaxcnn.planner.network's docstring says why)
        steps = plan_network(traced, devices, memory_bytes, dtype=dtype, max_replicas=1, **links).steps
        return ModelPlan({s.name: format_placement(s.choice.algorithm, s.choice.grid) for s in steps}, layers)
    source = (P("n"), grid_key(input_sizes))
    by_time = time_model if objective == "time" else None
    report(f"placing {len(layers)} convolutions as a graph (by {'time' if by_time else 'bytes'})")
    chosen = plan_graph(
        graph,
        layers,
        devices,
        source,
        memory_bytes,
        dtype=dtype,
        platform=platform,
        time_model=by_time,
        optimizer=optimizer,
        **links,
    )
    itemsize = itemsize_of(dtype)
    images = batch * math.prod(image_shape) * itemsize / input_sizes["n"]
    report("predicting the step's bytes, seconds and memory")
    cost = step_cost(graph, layers, chosen, source, dtype, hosts)
    seconds = None
    if time_model is not None:
        seconds = step_time(graph, layers, chosen, source, time_model, dtype, hosts, optimizer, cost)
    return ModelPlan(
        {name: format_placement(c.algorithm, c.grid) for name, c in chosen.items()},
        layers,
        cost,
        step_memory(graph, layers, chosen, batch_bytes=images, platform=platform, itemsize=itemsize),
        seconds,
    )


#: What a plan minimises: the step's predicted bytes per device, or its predicted seconds.
OBJECTIVES = ("bytes", "time")


def check_objective(objective: str, time_model: TimeModel | None) -> None:
    """Raises ValueError for an unknown objective, or ``"time"`` without a time model."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "time" and time_model is None:
        raise ValueError("objective 'time' needs a timing profile of the backend (jaxcnn calibrate)")


def predict_model(
    model: nnx.Module,
    batch: int,
    image_shape: tuple[int, ...],
    input_sizes: Mapping[str, int],
    *,
    dtype: str | Dtypes = "float32",
    platform: str = "cpu",
    state_bytes: float | None = None,
    time_model: TimeModel | None = None,
    optimizer: str = "adam",
) -> ModelPlan:
    """The predictions for ``model`` as built: each named convolution's placement read from the model.

    Args:
      model: the built (possibly abstract) model.
      batch, image_shape, input_sizes, platform: as :func:`plan_model`.
      dtype: as :func:`plan_model`.
      state_bytes: the train state and input batch per device (``jaxcnn.runner.fit``'s footprint
        without its gradients, which the prediction places in time itself); None: no memory figure.
      time_model, optimizer: as :func:`plan_model` (the step's seconds; None: no time figure).

    Returns:
      The model's placements and layers; ``cost`` and ``memory`` are None for a model without a plan
      graph.
    """
    dtype = Dtypes.of(dtype).on(platform)
    convs = named_convs(model).values()
    placements = {name: format_placement(c.algorithm, mesh_sizes(c.mesh)) for name, c in convs}
    layers = {layer.name: layer.geom for layer in trace_layers(model, batch, image_shape)}
    if not isinstance(model, Network):
        return ModelPlan(placements, layers)
    graph = model.plan_graph
    grids = {name: (c.algorithm, mesh_sizes(c.mesh)) for name, c in convs}
    choices = choices_for(layers, grids, dtype, first=first_conv(graph))
    source = (P("n"), grid_key(input_sizes))
    cost = step_cost(graph, layers, choices, source, dtype)
    seconds = None
    if time_model is not None:
        seconds = step_time(graph, layers, choices, source, time_model, dtype, optimizer=optimizer, cost=cost)
    memory = None
    if state_bytes is not None:
        # the placements' memory is priced in the compute dtype, and so are max pooling's int32 indices
        memory = step_memory(
            graph, layers, choices, state_bytes=state_bytes, platform=platform, itemsize=itemsize_of(dtype)
        )
    return ModelPlan(placements, layers, cost, memory, seconds)


__all__ = ["OBJECTIVES", "ModelPlan", "check_objective", "plan_model", "predict_model"]
