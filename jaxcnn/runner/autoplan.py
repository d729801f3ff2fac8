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
    from jaxcnn.geometry import conv_geometry
    from jaxcnn.models import conv_layer_names
    from jaxcnn.networks import ConvLayer

    records: list[Any] = []
    missing: list[str] = []

    def forward(x: jax.Array) -> jax.Array:
        model = build(f"data@n={num_devices}")
        named = _named_convs(model)
        missing.extend(sorted(set(conv_layer_names(model)) - {n for n, _ in named.values()}))
        for name, conv in named.values():
            conv.conv_general_dilated = _Recorder(conv.conv_general_dilated, name, records)
        return model(x)

    jax.eval_shape(forward, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32))
    if missing:
        raise ConfigError(
            f"model.algorithms: 'auto' cannot name the convolutions {missing[:4]} of this model (it plans "
            "blocks with a `name` and a `conv`); give the algorithms explicitly"
        )
    return [
        ConvLayer(name, conv_geometry(x, k, strides, padding, 1 if dil is None else tuple(dil)))
        for name, x, k, strides, padding, dil in records
    ]


def placement(algorithm: str, grid: Any) -> str:
    """``"3d@n=2,k=2,c=2"`` from a planner choice (axes of size 1 omitted)."""
    sizes = ",".join(f"{a}={s}" for a, s in dict(grid).items() if s > 1)
    return f"{algorithm}@{sizes}" if sizes else algorithm


def plan_algorithms(
    build: Any, mesh: Mesh, batch: int, image_shape: tuple[int, ...], memory_bytes: float, dtype: str
) -> dict[str, str]:
    """``{layer: placement}`` chosen by ``jaxcnn.plan_network`` for the run's devices and batch.

    Args:
      build: ``build(algorithms) -> nnx.Module`` (the configured model).
      mesh: the run's mesh (only its device count matters: placements re-arrange its devices).
      batch: global batch size.
      image_shape: ``(H, W, C)``.
      memory_bytes: per-device memory budget of every layer (0: unlimited).
      dtype: ``model.dtype``.
    """
    import jaxcnn

    devices = mesh.devices.size
    layers = conv_layers(build, devices, batch, image_shape)
    plan = jaxcnn.plan_network(layers, devices, memory_bytes or math.inf, dtype=dtype)
    return {step.name: placement(step.choice.algorithm, step.choice.grid) for step in plan.steps}
