"""Zero-padding an array up to a shape and cropping it back: how uneven splits are made exact."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def pad_to(x: jax.Array, shape: Sequence[int], fill: float = 0.0) -> jax.Array:
    """Pads ``x`` at the high end of each dimension up to ``shape`` with ``fill``."""
    if tuple(x.shape) == tuple(shape):
        return x
    return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape, strict=True)], constant_values=fill)


def crop_to(x: jax.Array, shape: Sequence[int]) -> jax.Array:
    """The leading ``shape`` corner of ``x``."""
    if tuple(x.shape) == tuple(shape):
        return x
    return x[tuple(slice(0, s) for s in shape)]
