"""The convolutions a model runs, traced abstractly: names, placements and exact geometries.

:func:`trace_layers` runs the model under ``jax.eval_shape`` (nothing is allocated or computed) with
each convolution's ``conv_general_dilated`` hook wrapped to record its input and kernel shapes,
strides, padding, dilation and feature group count, so the geometries are exactly those the model
computes, in execution order, under the names its blocks carry (a module with a ``name`` and a
``conv``); a transposed convolution is recorded with its input dilation, and the head of a
:class:`~jaxcnn.models.protocol.Network` that pads its classes with ``pad_outputs``. The planner, the
whole-step prediction and :mod:`jaxcnn.networks` all read layers from here, so names and shapes
cannot drift from the models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.geometry import ConvLayer, conv_geometry
from jaxcnn.models.protocol import Network
from jaxcnn.nn import Conv, ConvTranspose


class UnnamedConvolutions(ValueError):
    """Some convolutions of a model are not in blocks with a ``name`` (``names``: the model's names
    that no block carries)."""

    def __init__(self, names: list[str]):
        super().__init__(f"convolutions {names[:4]} are not in named blocks")
        self.names = names


@dataclasses.dataclass
class Recorder:
    """A ``conv_general_dilated`` hook that records the call and forwards it."""

    inner: Any
    name: str
    records: list[tuple[Any, ...]]  # (name, x, kernel, strides, padding, dilations, groups)

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kw):
        groups = kw.get("feature_group_count", 1)
        self.records.append(
            (
                self.name,
                lhs.shape,
                rhs.shape,
                tuple(window_strides),
                padding,
                rhs_dilation,
                lhs_dilation,
                groups,
            )
        )
        return self.inner(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kw)


def is_distributed_conv(conv: object) -> bool:
    """A layer computed by a jaxcnn algorithm through a ``conv_general_dilated`` hook: a
    ``jaxcnn.nn.Conv`` or a ``jaxcnn.nn.ConvTranspose`` (whose hook gets the input dilation)."""
    return isinstance(conv, Conv | ConvTranspose)


def named_convs(model: nnx.Module) -> dict[int, tuple[str, nnx.Module]]:
    """``{id(conv): (name, conv)}`` of every distributed convolution (:func:`is_distributed_conv`) held
    by a block with a ``name``."""
    found = {}
    for _, node in nnx.iter_graph(model):
        conv, name = getattr(node, "conv", None), getattr(node, "name", None)
        if is_distributed_conv(conv) and isinstance(name, str):
            found[id(conv)] = (name, conv)
    return found


def trace_layers(model: nnx.Module, batch: int, image_shape: tuple[int, ...]) -> list[Any]:
    """The convolutions ``model`` runs on a batch of ``batch`` images, as ``ConvLayer`` s in execution
    order (abstractly: ``jax.eval_shape``, nothing is computed; the model may be abstract itself).

    ``model`` is any module whose named blocks hold its convolutions and whose ``conv_names`` lists
    them; for a :class:`~jaxcnn.models.protocol.Network`, its head's layer carries the head's
    ``pad_outputs``.

    Raises:
      UnnamedConvolutions: some of the model's convolutions have no names to key a plan by.
    """
    padded = {model.head.name} if isinstance(model, Network) and model.head.pad_outputs else set()
    records: list[Any] = []
    graphdef, state = nnx.split(model)

    def forward(state: Any, x: jax.Array) -> jax.Array:
        local = nnx.merge(graphdef, state)
        named = named_convs(local)
        missing = sorted(set(local.conv_names) - {n for n, _ in named.values()})
        if missing:
            raise UnnamedConvolutions(missing)
        for name, conv in named.values():
            conv.conv_general_dilated = Recorder(conv.conv_general_dilated, name, records)
        local.train()
        return local(x)

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32))
    return [
        ConvLayer(
            name,
            conv_geometry(
                x,
                k,
                strides,
                padding,
                1 if dil is None else tuple(dil),
                groups,
                input_dilation=1 if lhs is None else tuple(lhs),
            ),
            pad_outputs=name in padded,
        )
        for name, x, k, strides, padding, dil, lhs, groups in records
    ]
