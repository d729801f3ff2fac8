"""PartitionSpec arithmetic shared by the layers: which mesh axes split a dimension, and padding an
activation so that every split dimension divides evenly (what ``shard_map`` requires)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.redistribute import as_spec as as_spec
from jaxcnn.redistribute import spec_entries

__all__ = ["REPLICATED", "as_spec", "padded_shape", "parts"]

#: The spec of a replicated (or single-device) array, the layers' default.
REPLICATED = P()


def parts(axes: Sequence[str], mesh: Mesh) -> int:
    """Number of blocks a dimension split over ``axes`` has."""
    return math.prod(int(mesh.shape[a]) for a in axes)


def padded_shape(shape: Sequence[int], spec: P, mesh: Mesh) -> tuple[int, ...]:
    """``shape`` with every split dimension rounded up to a multiple of its number of blocks."""
    entries = spec_entries(spec, len(shape))
    return tuple(-(-s // parts(a, mesh)) * parts(a, mesh) for s, a in zip(shape, entries, strict=True))
