"""Where a layer runs: its algorithm, its mesh, and the layouts of its input and output activations.

A layer's *placement* is written as a string so that configs and planners can carry it:

- ``"3d"``: algorithm ``3d`` on the model's mesh;
- ``"3d@n=2,k=2,c=2"``: algorithm ``3d`` on a mesh of that shape over the **same devices** as the
  model's mesh (axes not named have size 1; the sizes must multiply to the model mesh's device
  count). This is how one model mixes algorithms that split different mesh axes (``data`` splits
  only ``n``, ``spatial`` splits ``n, d, h, w``, ``3d`` also ``k, c``; ``d`` only for 3-D layers):
  every layer sees the same devices, arranged as its algorithm wants, and activations move between
  arrangements with
  :func:`jaxcnn.nn.reshard`.

The activation specs of an algorithm depend only on the mesh sizes, the layer's number of spatial
dimensions and its feature group count (:mod:`jaxcnn.algorithms.groups`), never on its shape, so they
are computed here from a placeholder geometry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn import algorithms
from jaxcnn.conv import conv_layout
from jaxcnn.geometry import SPATIAL_AXES, conv_geometry
from jaxcnn.mesh import AXES, make_mesh, mesh_sizes


@dataclasses.dataclass(frozen=True)
class Placement:
    """An algorithm on a mesh.

    Attributes:
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      mesh: the mesh the layer's shard_map runs on.
      groups: the layer's feature group count (1: dense).
      rank: the layer's spatial dimensions (1, 2 or 3; its input is ``(N, *spatial, C)``).
    """

    algorithm: str
    mesh: Mesh
    groups: int = 1
    rank: int = 2

    @property
    def x_spec(self) -> P:
        """PartitionSpec of the layer's ``(N, *spatial, C)`` input (``(N, H, W, C)`` in 2-D)."""
        return self._layout(self._channels, self._channels).x_spec

    @property
    def y_spec(self) -> P:
        """PartitionSpec of the layer's ``(N, *spatial_out, K)`` output."""
        return self._layout(self._channels, self._channels).y_spec

    @property
    def _channels(self) -> int:
        """Placeholder channel count every split of a grouped layout divides (1 for dense layers)."""
        return self.groups * (math.prod(mesh_sizes(self.mesh).values()) if self.groups > 1 else 1)

    def kernel_spec(self, channels_in: int, channels_out: int) -> P:
        """PartitionSpec of a ``(*window, C/G, K)`` kernel; ``P()`` when the layout pads C or K.

        A kernel whose channel counts the layout zero-pads cannot be stored in the padded layout, so
        it is stored replicated (``conv2d`` pads and distributes it at run time).
        """
        layout = self._layout(channels_in, channels_out)
        if layout.padded[-2:] != (channels_in, channels_out):
            return P()
        return layout.kernel_spec

    def bias_spec(self, channels_out: int) -> P:
        """PartitionSpec of a ``(K,)`` bias: split like y's channels, ``P()`` when K is padded."""
        layout = self._layout(self._channels, channels_out)
        if layout.padded[-1] != channels_out:
            return P()
        return P(self.y_spec[-1])

    def _layout(self, channels_in: int, channels_out: int) -> algorithms.Layout:
        sizes = mesh_sizes(self.mesh)
        if self.rank not in SPATIAL_AXES:
            raise ValueError(f"a layer has 1, 2 or 3 spatial dimensions, got rank={self.rank!r}")
        geom = conv_geometry(
            (sizes["n"], *(sizes[a] for a in SPATIAL_AXES[self.rank]), channels_in),
            (*(1,) * self.rank, channels_in // self.groups, channels_out),
            1,
            "VALID",
            feature_group_count=self.groups,
        )
        return conv_layout(geom, mesh=self.mesh, algorithm=self.algorithm)


def parse_placement_text(placement: str) -> tuple[str, dict[str, int] | None]:
    """Reads a placement string without a mesh: the one parser of placements (config validation
    wraps its errors with the config key; :func:`parse_placement` resolves the result on a mesh).

    Args:
      placement: ``"3d"`` or ``"3d@n=2,k=2,c=2"`` (see the module docstring).

    Returns:
      ``(algorithm, {axis: size} with every axis of jaxcnn.AXES, or None without an "@" shape)``.

    Raises:
      ValueError: not a string, an unknown algorithm, a malformed shape (unknown or repeated axis, a
        size that is not an int >= 1), or a shape with an axis of size > 1 the algorithm does not use.
    """
    if not isinstance(placement, str):
        raise ValueError(
            f"a layer placement must be a string like '3d' or '3d@n=2,k=2,c=2', got {placement!r}"
        )
    name, at, shape = placement.partition("@")
    if not algorithms.is_algorithm(name):
        quoting = (
            " (a placement with a layer mesh inside a YAML [list] or {mapping} needs quotes: "
            "['3d@n=2,k=2,c=2'], else YAML splits it at the commas)"
            if "=" in name
            else ""
        )
        raise ValueError(
            f"unknown algorithm {placement!r}; valid algorithms are {algorithms.ALGORITHMS} (those of "
            f"{algorithms.REPLICATING} also as '<name>{algorithms.REPLICAS}', those of "
            f"{algorithms.OVERLAPPING} also as '<name>{algorithms.OVERLAP}'), optionally with a layer "
            f"mesh such as '3d@n=2,k=2,c=2'{quoting}"
        )
    if not at:
        return name, None
    sizes = dict.fromkeys(AXES, 1)
    seen: set[str] = set()
    for item in shape.split(","):
        axis, _, value = (part.strip() for part in item.partition("="))
        problem = (
            f"unknown axis {axis!r}"
            if axis not in AXES
            else f"axis {axis!r} given twice"
            if axis in seen
            else f"size {value!r} of axis {axis!r} is not an int >= 1"
            if not value.isdigit() or int(value) < 1
            else None
        )
        if problem:
            raise ValueError(
                f"bad layer mesh in placement {placement!r}: {problem}; expected comma-separated "
                f"axis=size items with axes from {', '.join(AXES)} and sizes >= 1, e.g. '3d@n=2,k=2,c=2'"
            )
        seen.add(axis)
        sizes[axis] = int(value)
    try:
        algorithms.get(name).check_mesh(sizes)
    except ValueError as e:
        raise ValueError(f"placement {placement!r}: {e}") from None
    return name, sizes


def format_placement(algorithm: str, grid: Mapping[str, int]) -> str:
    """``"3d@n=2,k=2,c=2"`` for an algorithm on a grid (axes of size 1 omitted); :func:`parse_placement`
    reads it back."""
    sizes = ",".join(f"{a}={s}" for a, s in dict(grid).items() if s > 1)
    return f"{algorithm}@{sizes}" if sizes else algorithm


def parse_placement(placement: str, mesh: Mesh) -> Placement:
    """Resolves ``"algorithm"`` or ``"algorithm@axis=size,..."`` against the model's mesh.

    Args:
      placement: see the module docstring.
      mesh: the model's mesh; a mesh shape in ``placement`` re-arranges its devices.

    Returns:
      The placement (the model's mesh itself when no shape is given).

    Raises:
      ValueError: unknown algorithm, malformed shape, a shape whose device count differs from the
        mesh's, or a mesh axis of size > 1 the algorithm does not use.
    """
    name, sizes = parse_placement_text(placement)
    if sizes is None:
        algorithms.get(name).check_mesh(mesh_sizes(mesh))
        return Placement(name, mesh)
    devices = list(mesh.devices.flat)
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"placement {placement!r} uses {math.prod(sizes.values())} devices but the model's mesh "
            f"has {len(devices)}; the axis sizes must multiply to {len(devices)}"
        )
    return Placement(name, make_mesh(**sizes, devices=devices))
