"""The jaxcnn device mesh: six named axes, one per loop dimension they split.

| axis | splits | used by |
|------|--------|---------|
| ``n`` | batch (rows of the implicit matmul) | every algorithm |
| ``d`` | output depth of 3-D convolutions (halo exchange on the input) | all but data |
| ``h`` | output rows of 2-D / 3-D convolutions (halo exchange) | all but data |
| ``w`` | output columns (the length of 1-D convolutions; halo exchange) | all but data |
| ``k`` | output channels | filter, 2d, 2.5d, 3d |
| ``c`` | input channels (the 2.5d replication depth) | channel, 2.5d, 3d |

Library code takes a mesh argument; it never sets a global mesh.

The spatial axes a layer may split follow its rank: ``w`` (1-D), ``h, w`` (2-D), ``d, h, w`` (3-D); a
spatial axis of size > 1 that a layer lacks is an error. ``d = 1`` leaves every 2-D program unchanged.

Every mesh lays the same flat device order (:func:`device_order`) out row-major over the six axes, so
all placements of a run re-arrange one order. In a multi-host job the hosts (or TPU slices) are
outermost in it: the batch axis ``n`` crosses hosts, and ``k`` and ``c`` (innermost) stay inside one
host whenever their product divides the devices per host (:mod:`jaxcnn.links` prices the difference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES: tuple[str, ...] = ("n", "d", "h", "w", "k", "c")
ROW_AXES: tuple[str, ...] = ("n", "d", "h", "w")


def _granule_attr(devices: Sequence[Any]) -> str:
    """``"slice_index"`` when the devices lie on several TPU slices, else ``"process_index"``."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    return "slice_index" if None not in slices and len(slices) > 1 else "process_index"


def host_count(devices: Sequence[Any]) -> int:
    """The number of hosts the devices lie on: distinct TPU slices when there are several, else
    distinct processes (the ``hosts`` of :mod:`jaxcnn.links`)."""
    attr = _granule_attr(devices)
    return len({getattr(d, attr) for d in devices})


def device_order(devices: Sequence[Any]) -> list[Any]:
    """The flat device order of every jaxcnn mesh: hosts (or TPU slices) outermost.

    Devices are grouped by ``slice_index`` when they span several slices, else by ``process_index``;
    groups come in increasing index, so consecutive devices share a host. Within a host, on TPU and
    GPU, :func:`jax.experimental.mesh_utils.create_hybrid_device_mesh` (several hosts) or
    ``create_device_mesh`` (one) orders the devices for interconnect locality; elsewhere (CPU), or
    where those helpers refuse the device set (hosts of unequal size, a partial topology), the order
    is a plain sort by (host, id). One CPU process keeps ``devices`` as given.

    Args:
      devices: the devices (objects with ``id`` and ``process_index``, optionally ``slice_index``,
        ``platform``).

    Returns:
      The devices reordered.
    """
    devices = list(devices)
    if not devices:
        return devices
    attr = _granule_attr(devices)
    hosts = sorted({getattr(d, attr) for d in devices})
    platform = getattr(devices[0], "platform", "cpu")
    if platform in ("tpu", "gpu"):
        try:
            if len(hosts) == 1:
                mesh = mesh_utils.create_device_mesh((len(devices),), devices)
            else:
                mesh = mesh_utils.create_hybrid_device_mesh(
                    (len(devices) // len(hosts),),
                    (len(hosts),),
                    devices,
                    process_is_granule=attr == "process_index",
                )
            return list(np.asarray(mesh).flat)
        except (ValueError, NotImplementedError, AssertionError):
            pass  # fall back to the plain sort below
    elif len(hosts) == 1:
        return devices
    return sorted(devices, key=lambda d: (getattr(d, attr), d.id))


def make_mesh(
    n: int = 1,
    d: int = 1,
    h: int = 1,
    w: int = 1,
    k: int = 1,
    c: int = 1,
    *,
    devices: list[jax.Device] | None = None,
) -> Mesh:
    """Builds a mesh with axes ``("n", "d", "h", "w", "k", "c")``.

    Args:
      n, d, h, w, k, c: axis sizes (positive ints; pass them as keywords); their product is the number
        of devices used.
      devices: devices to lay out, in this flat order; defaults to the first ``n*d*h*w*k*c`` of
        :func:`device_order` of ``jax.devices()`` (hosts outermost; ``jax.devices()`` itself on one
        CPU process).

    Returns:
      A ``jax.sharding.Mesh`` with ``Auto`` axis types (so GSPMD baselines compile on it too).

    Raises:
      ValueError: a size is not a positive int, or the mesh needs more devices than exist.
    """
    sizes = {"n": n, "d": d, "h": h, "w": w, "k": k, "c": c}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axis {name!r} must be a positive int, got {size!r}")
    total = math.prod(sizes.values())
    available = device_order(jax.devices()) if devices is None else list(devices)
    if total > len(available):
        raise ValueError(
            f"mesh {sizes} needs {total} devices but only {len(available)} are available; "
            f"choose sizes whose product is at most {len(available)}"
        )
    grid = np.empty(total, dtype=object)
    grid[:] = available[:total]
    return Mesh(grid.reshape(tuple(sizes.values())), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def mesh_sizes(mesh: Mesh) -> dict[str, int]:
    """Returns ``{axis: size}`` for all six jaxcnn axes (1 for an axis the mesh lacks).

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


def batch_mesh_sizes(sizes: Mapping[str, int], *batches: int) -> dict[str, int]:
    """The run mesh that lays out batches ``sizes["n"]`` does not divide: ``n = gcd(n, *batches)``, and
    the factor ``n / gcd`` multiplies ``c`` (batch 32 on 64 devices: ``n=32, c=2``).

    The one place of this rule (``model.algorithms: auto`` with ``mesh.n: -1``, and ``jaxcnn plan
    --whole-step``): every convolution of a planned model gets its own arrangement of all the devices,
    so the run mesh only decides how the input batch is laid out, split over ``n`` and replicated over
    the rest, before the first convolution reshards it.
    """
    fit = math.gcd(sizes["n"], *batches)
    return {**{a: 1 for a in AXES}, **sizes, "n": fit, "c": sizes.get("c", 1) * (sizes["n"] // fit)}
