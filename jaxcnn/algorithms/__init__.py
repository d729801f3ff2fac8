"""The distributed convolution algorithms, one per module, all run by :mod:`.engine`.

Each module's docstring writes shapes and words for a 2-D layer (x ``(N, H, W, C)``, kernel
``(R, S, C, K)``). A 1-D or 3-D layer is the same with its own spatial dimensions: x ``(N, W, C)`` /
``(N, D, H, W, C)``, kernel ``(S, C, K)`` / ``(T, R, S, C, K)``, row axes ``(n, w)`` / ``(n, d, h, w)``,
one halo exchange per split spatial dimension, ``R·S`` read as the product of the window.
"""

import dataclasses

from jaxcnn.algorithms import channel, data, filter, spatial, three_d, two_d, two_half_d
from jaxcnn.algorithms.base import Algorithm, Layout, make_layout
from jaxcnn.algorithms.replicas import REPLICAS, replica_axis, replicated

REGISTRY: dict[str, Algorithm] = {
    m.ALGORITHM.name: m.ALGORITHM for m in (data, spatial, filter, channel, two_d, two_half_d, three_d)
}
ALGORITHMS: tuple[str, ...] = tuple(REGISTRY)
#: Suffix of an algorithm's variant whose halos overlap the interior convolution
#: (:mod:`jaxcnn.algorithms.overlap`): ``"spatial+overlap"``.
OVERLAP = "+overlap"
#: The algorithms that split a spatial dimension, and so have an overlapping variant.
OVERLAPPING: tuple[str, ...] = tuple(
    name for name, alg in REGISTRY.items() if any(a in alg.axes for a in ("d", "h", "w"))
)
#: The algorithms with a ``"<name>+replicas"`` variant (:mod:`jaxcnn.algorithms.replicas`): those that
#: leave a channel axis unsplit.
REPLICATING: tuple[str, ...] = tuple(name for name, alg in REGISTRY.items() if replica_axis(alg))


def plain(name: str) -> str:
    """The algorithm an ``"<name>+overlap"`` variant runs (``name`` itself when it is not one)."""
    return name.removesuffix(OVERLAP)


def unreplicated(name: str) -> str:
    """The algorithm a ``"<name>+replicas"`` variant (or its ``+overlap``) runs on its sub-grid."""
    return plain(name).removesuffix(REPLICAS) + (OVERLAP if name.endswith(OVERLAP) else "")


def get(name: str) -> Algorithm:
    """The algorithm called ``name``: one of ``ALGORITHMS``, ``"<name>+replicas"`` for one of
    ``REPLICATING``, and either with ``"+overlap"`` for one of ``OVERLAPPING``
    (``"spatial+replicas+overlap"``).

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    if isinstance(name, str) and name.endswith(OVERLAP) and plain(name).removesuffix(REPLICAS) in OVERLAPPING:
        return dataclasses.replace(get(plain(name)), name=name, overlap=True)
    if isinstance(name, str) and name.endswith(REPLICAS) and name.removesuffix(REPLICAS) in REPLICATING:
        return replicated(REGISTRY[name.removesuffix(REPLICAS)])
    raise ValueError(
        f"unknown algorithm {name!r}; valid algorithms are {ALGORITHMS}, {REPLICATING} with "
        f"{REPLICAS!r} (the layer replicated over the mesh axes they do not split, e.g. "
        f"'filter{REPLICAS}'), and {OVERLAPPING} with {OVERLAP!r} after either (halos overlapping the "
        f"interior convolution, e.g. 'spatial{OVERLAP}')"
    )


def is_algorithm(name: object) -> bool:
    """Whether ``name`` names an algorithm :func:`get` accepts."""
    try:
        get(name)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


__all__ = [
    "ALGORITHMS",
    "OVERLAP",
    "OVERLAPPING",
    "REGISTRY",
    "REPLICAS",
    "REPLICATING",
    "Algorithm",
    "Layout",
    "get",
    "is_algorithm",
    "make_layout",
    "plain",
    "replica_axis",
    "unreplicated",
]
