"""PartitionSpec arithmetic shared by the layers: which mesh axes split a dimension, and padding an
activation so that every split dimension divides evenly (what ``shard_map`` requires)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.padding import crop_to, pad_to

__all__ = ["REPLICATED", "as_spec", "crop_to", "entry_axes", "normalized", "pad_to", "padded_shape", "parts"]

#: The spec of a replicated (or single-device) array, the layers' default.
REPLICATED = P()


def entry_axes(entry: str | Sequence[str] | None) -> tuple[str, ...]:
    """Mesh axis names of one PartitionSpec entry (``None`` → ``()``)."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def normalized(spec: P, ndim: int) -> tuple[tuple[str, ...], ...]:
    """The spec's entries as axis-name tuples, padded with ``()`` to ``ndim`` entries.

    Raises:
      ValueError: the spec has more entries than the array has dimensions.
    """
    entries = tuple(spec)
    if len(entries) > ndim:
        raise ValueError(f"PartitionSpec {spec} has {len(entries)} entries for a rank-{ndim} array")
    return tuple(entry_axes(e) for e in entries) + ((),) * (ndim - len(entries))


def parts(axes: Sequence[str], mesh: Mesh) -> int:
    """Number of blocks a dimension split over ``axes`` has."""
    return math.prod(int(mesh.shape[a]) for a in axes)


def padded_shape(shape: Sequence[int], spec: P, mesh: Mesh) -> tuple[int, ...]:
    """``shape`` with every split dimension rounded up to a multiple of its number of blocks."""
    entries = normalized(spec, len(shape))
    return tuple(-(-s // parts(a, mesh)) * parts(a, mesh) for s, a in zip(shape, entries, strict=True))


def as_spec(entries: Sequence[tuple[str, ...]]) -> P:
    """A PartitionSpec from axis-name tuples (``()`` → ``None``, one name → that name)."""
    return P(*(None if not e else e[0] if len(e) == 1 else tuple(e) for e in entries))
