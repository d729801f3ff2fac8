"""The distributed convolution algorithms, one per module, all run by :mod:`.engine`.

Each module's docstring writes shapes and words for a 2-D layer (x ``(N, H, W, C)``, kernel
``(R, S, C, K)``). A 1-D or 3-D layer is the same with its own spatial dimensions: x ``(N, W, C)`` /
``(N, D, H, W, C)``, kernel ``(S, C, K)`` / ``(T, R, S, C, K)``, row axes ``(n, w)`` / ``(n, d, h, w)``,
one halo exchange per split spatial dimension, ``R·S`` read as the product of the window.
"""

from jaxcnn.algorithms import channel, data, filter, spatial, three_d, two_d, two_half_d
from jaxcnn.algorithms.base import Algorithm, Layout, make_layout

REGISTRY: dict[str, Algorithm] = {
    m.ALGORITHM.name: m.ALGORITHM for m in (data, spatial, filter, channel, two_d, two_half_d, three_d)
}
ALGORITHMS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Algorithm:
    """The algorithm called ``name``.

    Raises:
      ValueError: unknown name (the message lists ``ALGORITHMS``).
    """
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms are {ALGORITHMS}")
    return REGISTRY[name]


__all__ = ["ALGORITHMS", "REGISTRY", "Algorithm", "Layout", "get", "make_layout"]
