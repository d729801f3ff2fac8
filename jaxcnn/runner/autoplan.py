"""``model.algorithms: auto``: per-layer placements from the planner, as config errors.

The configured model is built abstractly with every convolution on ``data`` over all the run's
devices and handed to the planner's one entry, :func:`jaxcnn.planner.model.plan_model` (which traces
its convolutions for the run's global batch and places them: as a graph, or as a chain for a model
without one). This module only resolves what the run knows (the run mesh's sizes and platform, the
hosts its devices lie on) and turns the planner's errors into one-line :class:`ConfigError` s.

In a multi-host job (``hosts > 1``) the planner knows that the mesh's batch axis crosses hosts
(:func:`jaxcnn.mesh.device_order`) and weights bytes between hosts by ``dcn_cost_factor``
(:mod:`jaxcnn.links`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from jaxcnn.dtypes import Dtypes
from jaxcnn.links import DEFAULT_DCN_COST_FACTOR
from jaxcnn.mesh import mesh_sizes
from jaxcnn.models.trace import UnnamedConvolutions
from jaxcnn.planner.model import plan_model
from jaxcnn.planner.plan import NoPlanError
from jaxcnn.runner.config import ConfigError
from jaxcnn.timing.model import TimeModel


def plan_algorithms(
    build: Callable[[Any], nnx.Module],
    mesh: Mesh,
    batch: int,
    image_shape: tuple[int, ...],
    memory_bytes: float,
    dtype: str | Dtypes,
    hosts: int = 1,
    dcn_cost_factor: float = DEFAULT_DCN_COST_FACTOR,
    time_model: TimeModel | None = None,
    optimizer: str = "adam",
) -> dict[str, str]:
    """``{layer: placement}`` for the run's devices and batch (:func:`jaxcnn.planner.model.plan_model`).

    Args:
      build: ``build(algorithms) -> nnx.Module`` (the configured model).
      mesh: the run's mesh (its device count, and the images' layout ``P("n")`` on it).
      batch: global batch size.
      image_shape: ``(H, W, C)``.
      memory_bytes: per-device memory budget of the whole train step, as predicted by the planner
        (:func:`jaxcnn.planner.network.plan_graph`; 0: unlimited).
      dtype: ``model.dtype``, or the model's :class:`jaxcnn.dtypes.Dtypes` (``model.dtypes``).
      hosts: hosts (or TPU slices) the mesh's devices lie on, as equal consecutive groups of its flat
        order (``jaxcnn.mesh.host_count``).
      dcn_cost_factor: ``cluster.dcn_cost_factor``: how much dearer a byte between hosts is.
      time_model: plan by the step's predicted seconds (``model.plan_objective: time`` with the
        backend's profile); None: by bytes.
      optimizer: ``optimizer.name`` (its update's share of the step's time).

    Raises:
      ConfigError: the convolutions have no names, ``hosts`` does not divide the device count, or no
        plan fits ``memory_bytes``.
    """
    devices = mesh.devices.size
    try:
        plan = plan_model(
            nnx.eval_shape(lambda: build(f"data@n={devices}")),
            batch,
            image_shape,
            mesh_sizes(mesh),
            memory_bytes=memory_bytes or math.inf,
            dtype=dtype,
            platform=mesh.devices.flat[0].platform,
            hosts=hosts,
            dcn_cost_factor=dcn_cost_factor,
            time_model=time_model,
            objective="bytes" if time_model is None else "time",
            optimizer=optimizer,
        )
    except UnnamedConvolutions as err:
        raise ConfigError(
            f"model.algorithms: 'auto' cannot name the convolutions {err.names[:4]} of this model (it "
            "plans blocks with a `name` and a `conv`); give the algorithms explicitly"
        ) from None
    except NoPlanError as err:
        raise ConfigError(
            f"model.plan_memory_bytes={memory_bytes:.0f}: {err}; raise it (0: unlimited) or use more devices"
        ) from None
    except ValueError as err:  # hosts that do not divide the devices (jaxcnn.links.check_hosts)
        raise ConfigError(f"model.algorithms: 'auto' on {devices} devices: {err}") from None
    return plan.placements
