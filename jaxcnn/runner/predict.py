"""A run's communication figures: metered from the compiled step, and predicted from the model.

``comm_bytes_per_step_max_device`` (:func:`metered_bytes`) and
``predicted_comm_bytes_per_step_max_device`` (:func:`predict_step`); with the step's predicted peak
memory per device (:func:`predict`).

Reads the model's plan graph (:mod:`jaxcnn.models.graph`) and each convolution's placement (its
algorithm and mesh), traces the convolutions' geometries for the run's batch
(:func:`jaxcnn.models.trace.trace_layers`), and evaluates :func:`jaxcnn.planner.step.step_cost`.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.cost import itemsize_of
from jaxcnn.mesh import mesh_sizes
from jaxcnn.models.trace import named_convs, trace_layers
from jaxcnn.planner.step import StepCost, choices_for, first_conv, grid_key, step_cost
from jaxcnn.planner.step_memory import StepMemory, step_memory


def metered_bytes(compiled: Any) -> tuple[float | None, str]:
    """Max bytes a device receives per step of a compiled program (:mod:`jaxcnn.measure`), and a note.

    The meter is advisory: if it cannot parse the program, the value is None and the note says why.
    """
    from jaxcnn import measure

    try:
        return float(measure.meter_compiled(compiled).max_bytes), ""
    except measure.HloParseError as e:  # never stop a run over the meter
        return None, f"jaxcnn.measure could not meter this program: {e}"


def model_for_prediction(graphs: Any, state: Any) -> nnx.Module:
    """The train-mode model with abstract leaves (nothing is copied), for :func:`predict_step`."""
    import jax

    def abstract(leaf: Any) -> Any:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) if hasattr(leaf, "shape") else leaf

    return nnx.merge(
        graphs.train, jax.tree.map(abstract, state["params"]), jax.tree.map(abstract, state["rest"])
    )


#: Float dtypes narrower than 32 bits that XLA:CPU communicates as float32 (its float normalization wraps
#: each such collective in converts, so the bytes on the wire are f32 bytes); GPU and TPU send them as is.
_CPU_WIDENED = ("bfloat16", "float16")


def wire_dtype(dtype: str, platform: str) -> str:
    """The dtype a ``dtype`` model's collectives carry on ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    return "float32" if platform == "cpu" and str(dtype) in _CPU_WIDENED else str(dtype)


def predict(
    model: nnx.Module,
    mesh: Mesh,
    batch: int,
    image_shape: tuple[int, ...],
    dtype: str,
    state_bytes: float | None = None,
) -> tuple[StepCost | None, StepMemory | None]:
    """Predicted bytes per device of one train step of ``model`` and, given ``state_bytes``, its peak
    memory per device (:func:`jaxcnn.planner.step_memory.step_memory`); ``(None, None)`` for a model
    without a plan graph. The model's convolutions are traced once for both.

    Args:
      model: the built (possibly abstract) model; its images arrive as ``P("n")`` on ``mesh``.
      mesh: the run's mesh.
      batch: global batch size.
      image_shape: ``(H, W, C)``.
      dtype: the model's computation dtype (priced as :func:`wire_dtype` on the mesh's platform).
      state_bytes: the train state and input batch per device (``jaxcnn.runner.fit``'s footprint
        without its gradients, which the prediction places in time itself); None: no memory figure.
    """
    graph = getattr(model, "plan_graph", None)
    if graph is None:
        return None, None
    platform = mesh.devices.flat[0].platform
    dtype = wire_dtype(dtype, platform)
    placements: dict[str, Any] = {
        name: (conv.algorithm, mesh_sizes(conv.mesh)) for name, conv in named_convs(model).values()
    }
    layers = {layer.name: layer.geom for layer in trace_layers(model, batch, image_shape)}
    choices = choices_for(layers, placements, dtype, first=first_conv(graph))
    cost = step_cost(graph, layers, choices, (P("n"), grid_key(mesh_sizes(mesh))), dtype)
    if state_bytes is None:
        return cost, None
    # the placements' memory is priced in the wire dtype, and so are max pooling's int32 indices
    memory = step_memory(
        graph, layers, choices, state_bytes=state_bytes, platform=platform, itemsize=itemsize_of(dtype)
    )
    return cost, memory


def predict_step(
    model: nnx.Module, mesh: Mesh, batch: int, image_shape: tuple[int, ...], dtype: str
) -> StepCost | None:
    """Predicted bytes per device of one train step of ``model`` (None for a model without a plan
    graph); arguments as :func:`predict`."""
    return predict(model, mesh, batch, image_shape, dtype)[0]
