"""The jaxcnn device mesh: five named axes, one per loop dimension they split.

| axis | splits | used by |
|------|--------|---------|
| ``n`` | batch (rows of the implicit matmul) | data, spatial, 2d, 2.5d, 3d |
| ``h`` | output rows (halo exchange on the input) | spatial, 2d, 2.5d, 3d |
| ``w`` | output columns (halo exchange on the input) | spatial, 2d, 2.5d, 3d |
| ``k`` | output channels | filter, 2d, 2.5d, 3d |
| ``c`` | input channels (the 2.5d replication depth) | channel, 2.5d, 3d |

Library code takes a mesh argument; it never sets a global mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
from jax.sharding import AxisType, Mesh

AXES: tuple[str, ...] = ("n", "h", "w", "k", "c")
ROW_AXES: tuple[str, ...] = ("n", "h", "w")


def make_mesh(
    n: int = 1,
    h: int = 1,
    w: int = 1,
    k: int = 1,
    c: int = 1,
    *,
    devices: list[jax.Device] | None = None,
) -> Mesh:
    """Builds a mesh with axes ``("n", "h", "w", "k", "c")``.

    Args:
      n, h, w, k, c: axis sizes (positive ints); their product is the number of devices used.
      devices: devices to lay out; defaults to the first ``n*h*w*k*c`` of ``jax.devices()``.

    Returns:
      A ``jax.sharding.Mesh`` with ``Auto`` axis types (so GSPMD baselines compile on it too).

    Raises:
      ValueError: a size is not a positive int, or the mesh needs more devices than exist.
    """
    sizes = {"n": n, "h": h, "w": w, "k": k, "c": c}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axis {name!r} must be a positive int, got {size!r}")
    total = math.prod(sizes.values())
    available = list(jax.devices()) if devices is None else list(devices)
    if total > len(available):
        raise ValueError(
            f"mesh {sizes} needs {total} devices but only {len(available)} are available; "
            f"choose sizes whose product is at most {len(available)}"
        )
    return jax.make_mesh(
        tuple(sizes.values()),
        AXES,
        axis_types=(AxisType.Auto,) * len(AXES),
        devices=available[:total],
    )


def mesh_sizes(mesh: Mesh) -> dict[str, int]:
    """Returns ``{axis: size}`` for all five jaxcnn axes (1 for an axis the mesh lacks).

    Raises:
      ValueError: the mesh has an axis jaxcnn does not know.
    """
    shape: Mapping[str, int] = mesh.shape
    unknown = [a for a in shape if a not in AXES]
    if unknown:
        raise ValueError(
            f"mesh has axes {unknown} that jaxcnn does not know; valid axis names are {AXES} "
            "(build one with jaxcnn.make_mesh)"
        )
    return {a: int(shape.get(a, 1)) for a in AXES}
