"""``model.algorithms: auto``: per-layer placements from the planner.

1. Trace the configured model abstractly (:func:`jaxcnn.models.trace.trace_layers`, every convolution
   on ``data@n=<devices>``): the exact geometries, in execution order, of the global batch the run
   will use.
2. A model with a plan graph (every :mod:`jaxcnn.models` network) is placed as a whole by
   :func:`jaxcnn.planner.network.plan_graph`; any other by ``jaxcnn.plan_network`` (a chain).
3. Each choice becomes a placement ``"alg@axis=size,..."`` on the run's devices, keyed by layer name.

In a multi-host job (``hosts > 1``) the planner knows that the mesh's batch axis crosses hosts
(:func:`jaxcnn.mesh.device_order`) and weights bytes between hosts by ``dcn_cost_factor``
(:mod:`jaxcnn.links`).

Layer names come from the model's Conv+BN blocks (a module with a ``name`` and a ``conv``); a model
without them cannot be planned and says so.
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.links import DEFAULT_DCN_COST_FACTOR, check_hosts
from jaxcnn.models.trace import UnnamedConvolutions, trace_layers
from jaxcnn.nn.placement import format_placement
from jaxcnn.planner.plan import NoPlanError
from jaxcnn.runner.config.typed import ConfigError


def _layers(model: nnx.Module, batch: int, image_shape: tuple[int, ...]) -> list[Any]:
    try:
        return trace_layers(model, batch, image_shape)
    except UnnamedConvolutions as err:
        raise ConfigError(
            f"model.algorithms: 'auto' cannot name the convolutions {err.names[:4]} of this model (it "
            "plans blocks with a `name` and a `conv`); give the algorithms explicitly"
        ) from None


def conv_layers(build: Any, num_devices: int, batch: int, image_shape: tuple[int, ...]) -> list[Any]:
    """The model's convolutions as ``jaxcnn.networks.ConvLayer`` s, in execution order.

    Args:
      build: ``build(algorithms) -> nnx.Module``.
      num_devices: devices of the run's mesh.
      batch: global batch size.
      image_shape: ``(H, W, C)``.

    Raises:
      ConfigError: the model's convolutions have no names to key the plan by.
    """
    return _layers(nnx.eval_shape(lambda: build(f"data@n={num_devices}")), batch, image_shape)


def plan_algorithms(
    build: Any,
    mesh: Mesh,
    batch: int,
    image_shape: tuple[int, ...],
    memory_bytes: float,
    dtype: str,
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
) -> dict[str, str]:
    """``{layer: placement}`` for the run's devices and batch.

    A model with a ``plan_graph`` (every :mod:`jaxcnn.models` network) is placed as a whole by
    :func:`jaxcnn.planner.network.plan_graph` (residual blocks, the head, every layout change and the
    step's other collectives priced); any other model's convolutions as a chain by
    :func:`jaxcnn.plan_network`.

    Args:
      build: ``build(algorithms) -> nnx.Module`` (the configured model).
      mesh: the run's mesh (its device count, and the images' layout ``P("n")`` on it).
      batch: global batch size.
      image_shape: ``(H, W, C)``.
      memory_bytes: per-device memory budget of the whole train step, as predicted by the planner
        (:func:`jaxcnn.planner.network.plan_graph`; 0: unlimited).
      dtype: ``model.dtype``.
      hosts: hosts (or TPU slices) the mesh's devices lie on, as equal consecutive groups of its flat
        order (``jaxcnn.mesh.host_count``).
      dcn_cost_factor: ``cluster.dcn_cost_factor``: how much dearer a byte between hosts is.

    Raises:
      ConfigError: the convolutions have no names, ``hosts`` does not divide the device count, or no
        plan fits ``memory_bytes``.
    """
    import jaxcnn
    from jaxcnn.mesh import mesh_sizes
    from jaxcnn.planner.network import plan_graph
    from jaxcnn.planner.step import grid_key

    devices = mesh.devices.size
    model = nnx.eval_shape(lambda: build(f"data@n={devices}"))
    layers = _layers(model, batch, image_shape)
    graph = getattr(model, "plan_graph", None)
    budget = memory_bytes or math.inf
    try:
        check_hosts(devices, hosts)
    except ValueError as err:
        raise ConfigError(f"model.algorithms: 'auto' on {devices} devices: {err}") from None
    links = {"hosts": hosts, "dcn_cost_factor": dcn_cost_factor}
    try:
        if graph is None:
            plan = jaxcnn.plan_network(layers, devices, budget, dtype=dtype, **links)
            steps = plan.steps
            return {step.name: format_placement(step.choice.algorithm, step.choice.grid) for step in steps}
        geoms = {layer.name: layer.geom for layer in layers}
        source = (P("n"), grid_key(mesh_sizes(mesh)))
        platform = mesh.devices.flat[0].platform
        chosen = plan_graph(graph, geoms, devices, source, budget, dtype=dtype, platform=platform, **links)
    except NoPlanError as err:
        raise ConfigError(
            f"model.plan_memory_bytes={memory_bytes:.0f}: {err}; raise it (0: unlimited) or use more devices"
        ) from None
    return {name: format_placement(c.algorithm, c.grid) for name, c in chosen.items()}
