"""What an algorithm is (data), and the concrete layout it takes for one layer on one mesh.

Every jaxcnn algorithm is one point in the same design space, the ``(n,d,h,w) × k × c`` grid of
Li et al. (SPAA'21):

- the row axes ``n, d, h, w`` split the output rows (batch and space; halos where d, h or w is split).
  A layer has only the spatial axes of its rank (:data:`jaxcnn.geometry.SPATIAL_AXES`: ``w`` in 1-D,
  ``h, w`` in 2-D, ``d, h, w`` in 3-D); another of size > 1 is a ``ValueError``;
- ``k`` splits the output channels; x arrives with its channels split over ``k`` and is gathered
  along ``k`` (all at once, or panel by panel when streaming);
- ``c`` splits the reduction over input channels; partial outputs are reduce-scattered over ``c``;
- the kernel is either replicated over the row axes (data / spatial parallelism: the gradient is
  all-reduced) or split over them and gathered (2d / 2.5d / 3d: gather forward, reduce-scatter
  backward).

An :class:`Algorithm` names the axes it may use, how it treats the kernel and whether it streams;
:func:`make_layout` turns that, a layer and the mesh sizes into shard_map specs, padding and panels.
Grouped convolutions (``feature_group_count`` G > 1) take their channel decisions from
:mod:`jaxcnn.algorithms.groups` instead. A ``"<name>+replicas"`` variant runs the layer replicated
over the mesh axes it does not split (:mod:`jaxcnn.algorithms.replicas`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jax.sharding import PartitionSpec as P

from jaxcnn.algorithms.groups import grouped_channels
from jaxcnn.algorithms.overlap import Interior, interior_ranges
from jaxcnn.algorithms.pipeline import pipelined
from jaxcnn.geometry import SPATIAL_AXES, ConvGeometry, HaloPlan, halo_plan
from jaxcnn.mesh import AXES

SPATIAL_MESH_AXES: tuple[str, ...] = SPATIAL_AXES[3]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A distributed convolution algorithm, as data.

    Attributes:
      name: public name (``jaxcnn.ALGORITHMS``).
      axes: mesh axes it may split; any other axis of size > 1 is an error.
      kernel_over_rows: the kernel is split over the row axes and all-gathered (True), or replicated
        over them with its gradient all-reduced (False).
      streaming: channel panels are streamed in a loop (2d, 2.5d) instead of gathered at once.
      overlap: the ``"<name>+overlap"`` variant: halos overlap the interior convolution where the
        layout allows (:mod:`jaxcnn.algorithms.overlap`).
      replicas: the ``"<name>+replicas"`` variant: a mesh axis of size > 1 outside ``axes`` replicates
        the layer instead of being an error (:mod:`jaxcnn.algorithms.replicas`).
    """

    name: str
    axes: tuple[str, ...]
    kernel_over_rows: bool
    streaming: bool
    overlap: bool = False
    replicas: bool = False

    def check_mesh(self, sizes: dict[str, int]) -> None:
        """Raises ValueError naming an axis of size > 1 this algorithm does not use (none for a
        ``+replicas`` variant: such an axis replicates the layer)."""
        for axis in AXES:
            if sizes[axis] > 1 and axis not in self.axes and not self.replicas:
                raise ValueError(
                    f"algorithm {self.name!r} does not use mesh axis {axis!r} (size {sizes[axis]}); "
                    f"it splits only {self.axes} - set {axis}=1, pick an algorithm that uses it, or "
                    f"replicate the layer over it with '{self.name}+replicas'"
                )

    def replica_axes(self, sizes: dict[str, int]) -> tuple[str, ...]:
        """The mesh axes of size > 1 that replicate the layer: those outside ``axes`` (``+replicas``)."""
        return tuple(a for a in AXES if self.replicas and sizes[a] > 1 and a not in self.axes)


def _spec(names: tuple[str, ...]) -> str | tuple[str, ...] | None:
    if not names:
        return None
    return names[0] if len(names) == 1 else names


@dataclasses.dataclass(frozen=True)
class Layout:
    """The concrete decisions for one (algorithm, layer, mesh).

    Attributes:
      sizes: mesh axis sizes, ``((axis, size), ...)`` in mesh order (the replica axes included: the
        mesh the shard_map runs on).
      rows: row axes of size > 1, in mesh order.
      x_channels: axes splitting x's channels, ``("c", "k")`` filtered to size > 1.
      y_channels: axes splitting y's channels.
      kernel_channels: axes splitting the kernel's input channels (dimension 2).
      kernel_out: axes splitting the kernel's output channels (dimension 3).
      kernel_gather: axes the kernel is all-gathered over (the row axes, when split over them).
      kernel_axis: kernel dimension gathered over ``kernel_gather`` (its C/G dimension, ``rank``, when
        dense; its K dimension, ``rank + 1``, when grouped).
      k_gather: axes x is all-gathered over (``k``, when > 1).
      c_scatter: axes the output is reduce-scattered over (``c``, when > 1).
      panels: channel panels streamed per depth layer (1 = gather at once).
      unit: channels per panel unit (a panel holds ``groups * unit`` local channels).
      padded: zero-padded global ``(N, *spatial, C, K)`` the shard_map sees (``(N, H, W, C, K)`` in 2-D).
      spatial_axes: the mesh axes of the layer's spatial dimensions (``geom.spatial_axes``).
      plans: per spatial dimension, its halo plan (None when unsplit).
      groups: the layer's feature group count G (the kernel is ``(*window, C/G, K)``).
      local_groups: feature group count of each device's local convolution.
      select: x is gathered whole over ``k`` and each device keeps its groups' channels
        (:func:`jaxcnn.algorithms.groups.select_groups`; filter when k does not divide G).
      interior: with ``+overlap``, per spatial dimension the output rows computed from the device's
        own block while the halos are in flight (None where unsplit); None when the layer runs
        without overlap (:func:`jaxcnn.algorithms.overlap.interior_ranges`).
      pipelined: with ``+overlap``, the channel panels are double-buffered
        (:func:`jaxcnn.algorithms.pipeline.pipelined`).
      subsample: per spatial dimension, the step σ with which each device keeps only the rows its taps
        read before anything moves (1: all rows): σ on an unsplit dimension of a 1×1 stride-σ layer
        without low padding whose x is gathered over ``k`` (its local convolution then has stride 1;
        :func:`subsample_steps`).
      replicas: the mesh axes that replicate the layer (``+replicas``, :mod:`jaxcnn.algorithms.replicas`):
        no spec names them, so x, the kernel and y are whole copies over them; :meth:`size` is 1 on them.
    """

    sizes: tuple[tuple[str, int], ...]
    rows: tuple[str, ...]
    x_channels: tuple[str, ...]
    y_channels: tuple[str, ...]
    kernel_channels: tuple[str, ...]
    kernel_out: tuple[str, ...]
    kernel_gather: tuple[str, ...]
    kernel_axis: int
    k_gather: tuple[str, ...]
    c_scatter: tuple[str, ...]
    panels: int
    unit: int
    padded: tuple[int, ...]
    spatial_axes: tuple[str, ...]
    plans: tuple[HaloPlan | None, ...]
    groups: int = 1
    local_groups: int = 1
    select: bool = False
    interior: Interior | None = None
    pipelined: bool = False
    subsample: tuple[int, ...] = ()
    replicas: tuple[str, ...] = ()

    @property
    def replication(self) -> int:
        """Copies of the layer: the product of the replica axes' sizes (1 without replicas)."""
        return math.prod(dict(self.sizes)[a] for a in self.replicas)

    @property
    def overlaps(self) -> bool:
        """Whether ``+overlap`` changes anything here (halos behind the interior, or pipelined panels)."""
        return self.interior is not None or self.pipelined

    @property
    def rank(self) -> int:
        """Spatial dimensions of the layer."""
        return len(self.spatial_axes)

    def plan(self, axis: str) -> HaloPlan | None:
        """Halo plan of the spatial dimension split over ``axis`` (None: unsplit or not in the layer)."""
        return self.plans[self.spatial_axes.index(axis)] if axis in self.spatial_axes else None

    @property
    def h_plan(self) -> HaloPlan | None:
        return self.plan("h")

    @property
    def w_plan(self) -> HaloPlan | None:
        return self.plan("w")

    def _row_specs(self) -> tuple[str | None, ...]:
        return tuple(a if a in self.rows else None for a in ("n", *self.spatial_axes))

    @property
    def x_spec(self) -> P:
        return P(*self._row_specs(), _spec(self.x_channels))

    @property
    def kernel_spec(self) -> P:
        return P(*(None,) * self.rank, _spec(self.kernel_channels), _spec(self.kernel_out))

    @property
    def y_spec(self) -> P:
        return P(*self._row_specs(), _spec(self.y_channels))

    @property
    def kernel_padded(self) -> tuple[int, int]:
        """The zero-padded kernel's channel dimensions ``(C/G, K)`` the shard_map sees."""
        return (self.padded[-2] // self.groups, self.padded[-1])

    @property
    def kernel_block(self) -> tuple[int, int]:
        """A device's kernel channel block ``(in, out)`` after its gather over ``kernel_gather``."""
        split = lambda axes: math.prod(self.size(a) for a in axes if a not in self.kernel_gather)  # noqa: E731
        c, k = self.kernel_padded
        return (c // split(self.kernel_channels), k // split(self.kernel_out))

    def out_blocks(self, geom: ConvGeometry) -> tuple[int, ...]:
        """A device's output block length along each spatial dimension."""
        return tuple(p.out_block if p else d.out for p, d in zip(self.plans, geom.dims, strict=True))

    def is_even(self, geom: ConvGeometry) -> bool:
        """True when no dimension needs zero-padding (every split divides its dimension).

        Only then does ``conv`` move exactly what :mod:`jaxcnn.cost` predicts: slicing a padded,
        split output back to its true size makes XLA reshard it, which the model does not count.
        """
        outs = all(
            (p.out_block * p.parts if p else d.out) == d.out
            for p, d in zip(self.plans, geom.dims, strict=True)
        )
        return outs and self.padded == (*geom.x_shape, geom.channels_out)

    def read_rows(self, index: int, rows: int) -> int:
        """Rows of a local x block of ``rows`` rows along spatial dimension ``index`` that it keeps
        (:attr:`subsample`)."""
        step = self.subsample[index] if self.subsample else 1
        return -(-rows // step)

    def size(self, axis: str) -> int:
        """Parts the layer is split into along mesh axis ``axis``: its size, 1 for a replica axis."""
        return 1 if axis in self.replicas else dict(self.sizes)[axis]


def _largest_divisor_at_most(value: int, bound: int) -> int:
    return max(d for d in range(1, max(1, min(value, bound)) + 1) if value % d == 0)


def make_layout(algorithm: Algorithm, geom: ConvGeometry, sizes: dict[str, int]) -> Layout:
    """Shard_map layout of ``geom`` under ``algorithm`` on a mesh with ``sizes``.

    Uneven dimensions are zero-padded (exact: padded channels hold zeros in both x and kernel, padded
    batch/rows/output channels are sliced off the result): N to a multiple of ``n``; each spatial
    dimension (D, H, W) to ``parts * ⌈size/parts⌉`` when split; C to a multiple of
    ``c * lcm(k, rows)``; K to a multiple of ``k * c``. Streaming algorithms use ``panels`` = the
    largest divisor of ``C / (c * lcm)`` not above
    ``max(k, rows)``, so one gathered panel is no larger than the local block it came from.
    A ``+replicas`` variant lays the layer out on the axes it splits alone; the others replicate it.
    """
    algorithm.check_mesh(sizes)
    check_rank(geom, sizes)
    replicas = algorithm.replica_axes(sizes)
    mesh = sizes
    sizes = {a: 1 if a in replicas else mesh[a] for a in AXES}
    rows = tuple(a for a in ("n", *geom.spatial_axes) if sizes[a] > 1)
    plans = tuple(
        halo_plan(dim, sizes[a]) if sizes[a] > 1 else None
        for a, dim in zip(geom.spatial_axes, geom.dims, strict=True)
    )
    if geom.groups > 1:
        channels = grouped_channels(algorithm, geom, sizes, rows)
    else:
        channels = _dense_channels(algorithm, geom, sizes, rows)
    c_pad, k_pad = channels.pop("channels")
    spatial = tuple(p.in_block * p.parts if p else d.size for p, d in zip(plans, geom.dims, strict=True))
    if algorithm.overlap:
        x_gathered = bool(channels["k_gather"])
        channels["interior"] = interior_ranges(plans, geom.dims, x_gathered)
        channels["pipelined"] = pipelined(algorithm.streaming, True, channels["panels"], x_gathered)
    return Layout(
        subsample=subsample_steps(geom, plans, bool(channels["k_gather"])),
        sizes=tuple((a, mesh[a]) for a in AXES),
        replicas=replicas,
        rows=rows,
        padded=(-(-geom.batch // sizes["n"]) * sizes["n"], *spatial, c_pad, k_pad),
        spatial_axes=geom.spatial_axes,
        plans=plans,
        **channels,
    )


def subsample_steps(
    geom: ConvGeometry, plans: tuple[HaloPlan | None, ...], x_gathered: bool
) -> tuple[int, ...]:
    """Per spatial dimension, the stride σ when the device may keep only ``x[..., ::σ, ...]`` along it
    before x is gathered over ``k``: the dimension is unsplit, its kernel has one tap, no input
    dilation and no low padding (output p reads row σp alone); else 1. A 1×1 stride-σ layer is the
    stride-1 layer on that slice (``docs/lower_bound.md`` §2), so the gather moves 1/σ of the rows."""
    return tuple(
        d.stride
        if x_gathered and p is None and d.kernel == 1 and d.input_dilation == 1 and d.pad[0] == 0
        else 1
        for p, d in zip(plans, geom.dims, strict=True)
    )


def check_rank(geom: ConvGeometry, sizes: dict[str, int]) -> None:
    """Raises ValueError naming a spatial mesh axis of size > 1 that the layer's rank lacks."""
    for axis in SPATIAL_MESH_AXES:
        if sizes.get(axis, 1) > 1 and axis not in geom.spatial_axes:
            raise ValueError(
                f"mesh axis {axis!r} has size {sizes[axis]} but the layer is a {geom.rank}-D convolution "
                f"(x shape {geom.x_shape}), whose spatial dimensions split only over "
                f"{geom.spatial_axes}; set {axis}=1 (d splits 3-D depth, h 2-D / 3-D height, w the "
                "width / length of every rank)"
            )


def _dense_channels(
    algorithm: Algorithm, geom: ConvGeometry, sizes: dict[str, int], rows: tuple[str, ...]
) -> dict[str, Any]:
    """The channel fields of a dense (G = 1) layout (see :func:`make_layout`)."""
    pk, pc = sizes["k"], sizes["c"]
    prows = math.prod(sizes[a] for a in rows)
    kernel_rows = rows if algorithm.kernel_over_rows else ()
    pkr = prows if algorithm.kernel_over_rows else 1
    lcm = math.lcm(pk, pkr)
    c_pad = -(-geom.channels_in // (pc * lcm)) * pc * lcm
    per_depth_units = c_pad // (pc * lcm)
    panels = _largest_divisor_at_most(per_depth_units, max(pk, pkr)) if algorithm.streaming else 1
    unit = c_pad // (pc * lcm * panels)
    k_pad = -(-geom.channels_out // (pk * pc)) * pk * pc
    k_gather = ("k",) if pk > 1 else ()
    c_scatter = ("c",) if pc > 1 else ()
    return dict(
        x_channels=tuple(a for a in ("c", "k") if sizes[a] > 1),
        y_channels=k_gather + c_scatter,
        kernel_channels=tuple(a for a in ("c", *kernel_rows) if sizes[a] > 1),
        kernel_out=k_gather,
        kernel_gather=kernel_rows,
        kernel_axis=geom.rank,
        k_gather=k_gather,
        c_scatter=c_scatter,
        panels=panels,
        unit=unit,
        channels=(c_pad, k_pad),
    )
