"""``model.algorithms: auto``: per-layer placements from :func:`jaxcnn.plan_network`.

1. Trace the configured model abstractly (``jax.eval_shape``, nothing allocated or compiled) with every
   convolution on ``data@n=<devices>`` and each convolution's ``conv_general_dilated`` hook wrapped to
   record its input and kernel shapes, strides, padding and dilation: the exact geometries, in
   execution order, of the global batch the run will use.
2. ``jaxcnn.plan_network(layers, devices, memory_bytes, dtype=...)`` picks one (algorithm, grid) per
   layer, layout changes between layers included.
3. Each choice becomes a placement ``"alg@axis=size,..."`` on the run's devices, keyed by layer name.

Layer names come from the model's Conv+BN blocks (a module with a ``name`` and a ``conv``); a model
without them cannot be planned and says so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.runner.typed import ConfigError


@dataclasses.dataclass
class _Recorder:
    """A ``conv_general_dilated`` hook that records the call and forwards it."""

    inner: Any
    name: str
    records: list[tuple[str, tuple[int, ...], tuple[int, ...], Any, Any, Any]]

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kw):
        self.records.append((self.name, lhs.shape, rhs.shape, tuple(window_strides), padding, rhs_dilation))
        return self.inner(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kw)


def _named_convs(model: nnx.Module) -> dict[int, tuple[str, nnx.Module]]:
    from jaxcnn.nn import Conv

    found = {}
    for _, node in nnx.iter_graph(model):
        conv, name = getattr(node, "conv", None), getattr(node, "name", None)
        if isinstance(conv, Conv) and isinstance(name, str):
            found[id(conv)] = (name, conv)
    return found


def trace_layers(model: nnx.Module, batch: int, image_shape: tuple[int, ...]) -> list[Any]:
    """The convolutions ``model`` runs on a batch of ``batch`` images, as ``ConvLayer`` s in execution
    order (abstractly: ``jax.eval_shape``, nothing is computed; the model may be abstract itself).

    Raises:
      ConfigError: the model's convolutions have no names to key a plan by.
    """
    from jaxcnn.geometry import conv_geometry
    from jaxcnn.models import conv_layer_names
    from jaxcnn.networks import ConvLayer

    records: list[Any] = []
    graphdef, state = nnx.split(model)

    def forward(state: Any, x: jax.Array) -> jax.Array:
        local = nnx.merge(graphdef, state)
        named = _named_convs(local)
        missing = sorted(set(conv_layer_names(local)) - {n for n, _ in named.values()})
        if missing:
            raise ConfigError(
                f"model.algorithms: 'auto' cannot name the convolutions {missing[:4]} of this model (it "
                "plans blocks with a `name` and a `conv`); give the algorithms explicitly"
            )
        for name, conv in named.values():
            conv.conv_general_dilated = _Recorder(conv.conv_general_dilated, name, records)
        local.train()
        return local(x)

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32))
    return [
        ConvLayer(name, conv_geometry(x, k, strides, padding, 1 if dil is None else tuple(dil)))
        for name, x, k, strides, padding, dil in records
    ]


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
    model = nnx.eval_shape(lambda: build(f"data@n={num_devices}"))
    return trace_layers(model, batch, image_shape)


def placement(algorithm: str, grid: Any) -> str:
    """``"3d@n=2,k=2,c=2"`` from a planner choice (axes of size 1 omitted)."""
    sizes = ",".join(f"{a}={s}" for a, s in dict(grid).items() if s > 1)
    return f"{algorithm}@{sizes}" if sizes else algorithm


def plan_algorithms(
    build: Any,
    mesh: Mesh,
    batch: int,
    image_shape: tuple[int, ...],
    memory_bytes: float,
    dtype: str,
    num_classes: int | None = None,
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
      memory_bytes: per-device memory budget of every layer (0: unlimited).
      dtype: ``model.dtype``.
      num_classes: logits per example (for the head's terms; default: the head's width).
    """
    import jaxcnn
    from jaxcnn.mesh import mesh_sizes
    from jaxcnn.planner.network import plan_graph
    from jaxcnn.planner.step import grid_key

    devices = mesh.devices.size
    model = nnx.eval_shape(lambda: build(f"data@n={devices}"))
    layers = trace_layers(model, batch, image_shape)
    graph = getattr(model, "plan_graph", None)
    budget = memory_bytes or math.inf
    if graph is None:
        plan = jaxcnn.plan_network(layers, devices, budget, dtype=dtype)
        return {step.name: placement(step.choice.algorithm, step.choice.grid) for step in plan.steps}
    geoms = {layer.name: layer.geom for layer in layers}
    classes = num_classes or geoms["head"].channels_out
    chosen = plan_graph(
        graph, geoms, devices, (P("n"), grid_key(mesh_sizes(mesh))), classes, budget, dtype=dtype
    )
    return {name: placement(c.algorithm, c.grid) for name, c in chosen.items()}
