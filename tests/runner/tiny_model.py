"""A tiny NNX CNN with ``jaxcnn.models.build``'s signature, for runner tests that must not wait for models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxcnn.nn.conv import Conv


class TinyCNN(nnx.Module):
    """conv(8) → BatchNorm → relu → conv(16) → relu → global mean → linear."""

    def __init__(self, num_classes: int, in_channels: int, mesh: Mesh, algorithms, dtype, rngs: nnx.Rngs):
        algs = _per_layer(algorithms, ("conv1", "conv2"))
        self.conv1 = Conv(in_channels, 8, 3, mesh=mesh, algorithm=algs[0], dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(8, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(8, 16, 3, mesh=mesh, algorithm=algs[1], dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(16, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        return self.head(x.mean(axis=(1, 2)))


def _per_layer(algorithms: str | Sequence[str] | Mapping[str, str], names: Sequence[str]) -> list[str]:
    if isinstance(algorithms, str):
        return [algorithms] * len(names)
    if isinstance(algorithms, Mapping):
        return [algorithms.get(n, "data") for n in names]
    return list(algorithms)


def build(name, *, num_classes, in_channels, mesh, algorithms="data", dtype=jnp.float32, rngs=None):
    """``jaxcnn.models.build`` stand-in; ``name`` is ignored."""
    return TinyCNN(num_classes, in_channels, mesh, algorithms, dtype, rngs or nnx.Rngs(0))
