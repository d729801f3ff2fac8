"""The distributed convolution algorithms, one per module, all run by :mod:`.engine`.

Each module's docstring writes shapes and words for a 2-D layer (x ``(N, H, W, C)``, kernel
``(R, S, C, K)``). A 1-D or 3-D layer is the same with its own spatial dimensions: x ``(N, W, C)`` /
``(N, D, H, W, C)``, kernel ``(S, C, K)`` / ``(T, R, S, C, K)``, row axes ``(n, w)`` / ``(n, d, h, w)``,
one halo exchange per split spatial dimension, ``R·S`` read as the product of the window.
"""

import dataclasses

from jaxcnn.algorithms import channel, data, filter, spatial, three_d, two_d, two_half_d
from jaxcnn.algorithms.base import Algorithm, Layout, make_layout

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


def plain(name: str) -> str:
    """The algorithm an ``"<name>+overlap"`` variant runs (``name`` itself when it is not one)."""
    return name.removesuffix(OVERLAP)


def get(name: str) -> Algorithm:
    """The algorithm called ``name``: one of ``ALGORITHMS``, or ``"<name>+overlap"`` for one of
    ``OVERLAPPING``.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    if isinstance(name, str) and name.endswith(OVERLAP) and plain(name) in OVERLAPPING:
        return dataclasses.replace(REGISTRY[plain(name)], name=name, overlap=True)
    raise ValueError(
        f"unknown algorithm {name!r}; valid algorithms are {ALGORITHMS}, and {OVERLAPPING} with "
        f"{OVERLAP!r} (halos overlapping the interior convolution, e.g. 'spatial{OVERLAP}')"
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
    "Algorithm",
    "Layout",
    "get",
    "is_algorithm",
    "make_layout",
    "plain",
]
