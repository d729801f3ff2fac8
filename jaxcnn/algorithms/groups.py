"""Grouped and depthwise convolutions (``feature_group_count`` G > 1) under every algorithm.

The kernel is ``(*window, C/G, K)`` (``(R, S, C/G, K)`` in 2-D); output channel block g (K/G
channels) reads only input channel block g (C/G channels). A device computes a grouped convolution
locally when its channel slices hold whole
groups, which fixes what each algorithm supports (Pk = k, Pc = c, Pr = n·d·h·w):

- **whole groups per device** (``k·c`` divides G; always for data / spatial): the channel axes split
  the groups. x, the kernel's K and y are split over ``(k, c)`` in that one order, so device block b
  of y reads exactly the input channels of its own x block: no gather of x, no reduce-scatter of y.
  Each device convolves G/(Pk·Pc) groups. The row-split kernel of 2d / 2.5d / 3d is split over the
  rows along K (``K/(Pk·Pc)`` must be a multiple of Pr) and all-gathered over the rows, its gradient
  reduce-scattered; data / spatial / filter / channel replicate it over the rows and all-reduce its
  gradient. Nothing is streamed (m = 1): there is no x gather to stream.
- **filter when k does not divide G**: x is all-gathered over ``k`` as in the dense case and each
  device keeps the channels of the groups its K/Pk outputs read (:func:`select_groups`): with
  ``G2 = lcm(G, Pk)`` sub-groups of K/G2 outputs (each inside one group and one device), a device
  convolves its G2/Pk sub-groups. C and K must be multiples of Pk.
- anything else (channel with c not dividing G; 2d / 2.5d / 3d with k·c not dividing G) raises
  ``ValueError``: a device's channel slice would cut a group, and its partial sums would have to be
  reduced over a subset of the ``c`` (or ``k``) axis.

Words moved (per device, Xw = local window batch·rows·cols): whole groups: the halo permutes of the
C/(Pk·Pc) local channels; 2d / 2.5d / 3d one all-gather over the rows of R·S·(C/G)·K/(Pk·Pc) (its
reduce-scatter backward); the replicated kernels' gradient all-reduce of R·S·(C/G)·K/(Pk·Pc).
filter with selection: the dense filter's all-gather of x (Xw·C), its dx reduce-scatter and the
all-reduce of R·S·(C/G)·K/Pk over the rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.geometry import ConvGeometry

if TYPE_CHECKING:
    from jaxcnn.algorithms.base import Algorithm, Layout


def _unsupported(algorithm: Algorithm, geom: ConvGeometry, sizes: dict[str, int], why: str) -> ValueError:
    grid = ", ".join(f"{a}={sizes[a]}" for a in sizes if sizes[a] > 1) or "one device"
    return ValueError(
        f"algorithm {algorithm.name!r} on grid ({grid}) does not support feature_group_count="
        f"{geom.groups} with C={geom.channels_in}, K={geom.channels_out}: {why} (data, spatial and "
        f"filter run every group count; channel needs c to divide G, 2d / 2.5d / 3d need k·c to divide "
        f"G and n·d·h·w to divide K/(k·c))"
    )


def grouped_channels(
    algorithm: Algorithm, geom: ConvGeometry, sizes: dict[str, int], rows: tuple[str, ...]
) -> dict[str, Any]:
    """The channel fields of a grouped layout (see the module docstring), for ``make_layout``.

    Raises:
      ValueError: the combination of algorithm, grid and G leaves a device without whole groups; the
        message names the algorithm, grid, G, C, K and what would work.
    """
    g, c, k = geom.groups, geom.channels_in, geom.channels_out
    pk, pc = sizes["k"], sizes["c"]
    channel_axes = tuple(a for a in ("k", "c") if sizes[a] > 1)
    common = dict(
        kernel_channels=(), kernel_axis=geom.rank + 1, c_scatter=(), panels=1, groups=g, channels=(c, k)
    )
    if g % (pk * pc) == 0:
        kernel_rows = rows if algorithm.kernel_over_rows else ()
        pr = math.prod(sizes[a] for a in kernel_rows)
        if (k // (pk * pc)) % pr:
            raise _unsupported(
                algorithm,
                geom,
                sizes,
                f"it splits each device's K/(k·c) = {k // (pk * pc)} kernel output channels over the row "
                f"axes n·d·h·w = {pr}, which must divide it",
            )
        return dict(
            common,
            x_channels=channel_axes,
            y_channels=channel_axes,
            kernel_out=channel_axes + kernel_rows,
            kernel_gather=kernel_rows,
            k_gather=(),
            unit=c // (pk * pc),
            local_groups=g // (pk * pc),
            select=False,
        )
    if pc > 1 or algorithm.kernel_over_rows:
        need = "c" if algorithm.name == "channel" else "k·c" if "c" in algorithm.axes else "k"
        raise _unsupported(
            algorithm,
            geom,
            sizes,
            f"each device's channel slice must hold whole groups, so {need} = {pk * pc} must divide G = {g}",
        )
    if c % pk or k % pk:
        raise _unsupported(
            algorithm, geom, sizes, f"when k = {pk} does not divide G = {g}, k must divide both C and K"
        )
    return dict(
        common,
        x_channels=("k",),
        y_channels=("k",),
        kernel_out=("k",),
        kernel_gather=(),
        k_gather=("k",),
        unit=c,
        local_groups=math.lcm(g, pk) // pk,
        select=True,
    )


def select_groups(x: jax.Array, layout: Layout) -> jax.Array:
    """The input channels this device's output sub-groups read, from x gathered whole over ``k``.

    With ``G2 = lcm(G, Pk)`` sub-groups of K/G2 output channels, device ``j`` computes sub-groups
    ``j·q .. j·q + q - 1`` (``q = G2/Pk``, its local group count); sub-group ``s`` belongs to group
    ``s // (G2/G)`` and reads its C/G channels. A no-op unless ``layout.select``.
    """
    if not layout.select:
        return x
    g, pk = layout.groups, layout.size("k")
    cg = layout.padded[-2] // g
    axis = x.ndim - 1
    q, per = layout.local_groups, math.lcm(g, pk) // g
    j = lax.axis_index("k")
    if q == 1:
        return lax.dynamic_slice_in_dim(x, (j // per) * cg, cg, axis=axis)
    group = (j * q + jnp.arange(q)) // per
    index = (group[:, None] * cg + jnp.arange(cg)[None, :]).reshape(-1)
    return jnp.take(x, index, axis=axis)
