"""A tiny NNX CNN with ``jaxcnn.models.build``'s signature whose conv blocks carry their names.

Used to test ``model.algorithms: auto`` (:mod:`jaxcnn.runner.autoplan`), which keys the plan by the
``name`` of each block holding a ``conv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxcnn.nn import Conv, parse_placement


class Block(nnx.Module):
    """A named convolution (+ ReLU) on its own placement."""

    def __init__(
        self, cin: int, cout: int, stride: int, name: str, placement: str, mesh: Mesh, rngs: nnx.Rngs
    ):
        p = parse_placement(placement, mesh)
        self.name = name
        self.conv = Conv(cin, cout, (3, 3), stride, mesh=p.mesh, algorithm=p.algorithm, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class TinyCNN(nnx.Module):
    """conv(8) → conv(16, stride 2) → global mean → linear."""

    def __init__(self, num_classes: int, in_channels: int, mesh: Mesh, algorithms, rngs: nnx.Rngs):
        self.conv_names = ("first", "second")
        algs = _per_layer(algorithms, self.conv_names)
        self.second = Block(8, 16, 2, "second", algs[1], mesh, rngs)  # attribute order != layer order
        self.first = Block(in_channels, 8, 1, "first", algs[0], mesh, rngs)
        self.head = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.second(self.first(x)).mean(axis=(1, 2)))


def _per_layer(algorithms: str | Sequence[str] | Mapping[str, str], names: Sequence[str]) -> list[str]:
    if isinstance(algorithms, str):
        return [algorithms] * len(names)
    if isinstance(algorithms, Mapping):
        return [algorithms.get(n, algorithms.get("*", "data")) for n in names]
    return list(algorithms)


def build(
    name,
    *,
    num_classes,
    in_channels,
    mesh,
    algorithms="data",
    dtype=jnp.float32,
    reduce_dtype=None,
    rngs=None,
):
    """``jaxcnn.models.build`` stand-in; ``name``, ``dtype`` and ``reduce_dtype`` are ignored."""
    return TinyCNN(num_classes, in_channels, mesh, algorithms, rngs or nnx.Rngs(0))
