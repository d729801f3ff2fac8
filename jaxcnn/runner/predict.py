"""A run's communication figures: metered from the compiled step, and predicted from the model.

``comm_bytes_per_step_max_device`` (:func:`metered_bytes`) and
``predicted_comm_bytes_per_step_max_device`` with the step's predicted peak memory per device and
``predicted_step_time_s`` (:func:`predict`).

The predictions are the planner's (:func:`jaxcnn.planner.model.predict_model`: the model's plan graph
and each convolution's placement, priced for the run's batch); this module adds what the run knows:
the mesh, and its dtypes (the computation dtype and the dtype the sums travel in).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxcnn import measure
from jaxcnn.dtypes import Dtypes
from jaxcnn.mesh import mesh_sizes
from jaxcnn.planner.model import ModelPlan, predict_model
from jaxcnn.timing.model import TimeModel


def metered_bytes(compiled: Any) -> tuple[float | None, str]:
    """Max bytes a device receives per step of a compiled program (:mod:`jaxcnn.measure`), and a note.

    The meter is advisory: if it cannot parse the program, the value is None and the note says why.
    """
    try:
        return float(measure.meter_compiled(compiled).max_bytes), ""
    except measure.HloParseError as e:  # never stop a run over the meter
        return None, f"jaxcnn.measure could not meter this program: {e}"


def model_for_prediction(graphs: Any, state: Any) -> nnx.Module:
    """The train-mode model with abstract leaves (nothing is copied), for :func:`predict`."""

    def abstract(leaf: Any) -> Any:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) if hasattr(leaf, "shape") else leaf

    return nnx.merge(
        graphs.train, jax.tree.map(abstract, state["params"]), jax.tree.map(abstract, state["rest"])
    )


def predict(
    model: nnx.Module,
    mesh: Mesh,
    batch: int,
    image_shape: tuple[int, ...],
    dtype: str | Dtypes,
    state_bytes: float | None = None,
    time_model: TimeModel | None = None,
    optimizer: str = "adam",
) -> ModelPlan:
    """Predicted bytes per device of one train step of ``model``, given ``state_bytes`` its peak
    memory per device, given a ``time_model`` its seconds (:func:`jaxcnn.planner.model.predict_model`;
    its ``cost``, ``memory`` and ``time`` are None for a model without a plan graph).

    Args:
      model: the built (possibly abstract) model; its images arrive as ``P("n")`` on ``mesh``.
      mesh: the run's mesh.
      batch: global batch size.
      image_shape: ``(H, W, C)``.
      dtype: the model's computation dtype, or :class:`jaxcnn.dtypes.Dtypes` with the dtype its sums
        travel in (priced as the mesh's platform carries them, :meth:`jaxcnn.dtypes.Dtypes.on`).
      state_bytes: the train state and input batch per device (``jaxcnn.runner.fit``'s footprint
        without its gradients, which the prediction places in time itself); None: no memory figure.
      time_model: the backend's time model (:func:`jaxcnn.timing.model.backend_time_model`); None: no
        time figure.
      optimizer: ``optimizer.name`` (its update's share of the step's time).
    """
    platform = mesh.devices.flat[0].platform
    return predict_model(
        model,
        batch,
        image_shape,
        mesh_sizes(mesh),
        dtype=dtype,
        platform=platform,
        state_bytes=state_bytes,
        time_model=time_model,
        optimizer=optimizer,
    )
