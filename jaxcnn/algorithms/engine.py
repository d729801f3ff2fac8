"""The one shard_map body behind every algorithm (see :mod:`jaxcnn.algorithms.base`).

Per device, in order:

1. halo exchange along each split spatial dimension in array order (d first, then h on the
   d-extended block, then w on the d- and h-extended block, so that edges and corners arrive with the
   later exchanges), cutting the exact input window of the local output block;
2. the channel loop: for each of ``panels`` strided channel panels, all-gather x's panel over ``k``
   and the kernel's panel over the row axes, and accumulate the local convolution (``fori_loop``
   under ``jax.checkpoint`` when streaming, so neither the forward nor the backward pass ever holds
   more than one gathered panel);
3. reduce-scatter the partial output over ``c`` along the output channels.

With ``+overlap`` step 2's convolution runs as the interior from the device's own block (independent
of the halo permutes) and the boundary from the window (:mod:`jaxcnn.algorithms.overlap`, where x is
not gathered over ``k``); or, streaming with x gathered over ``k``, the panels are double-buffered:
panel t+1's gathers in flight during panel t's convolution (:mod:`jaxcnn.algorithms.pipeline`).

The local convolution keeps the layer's rank (1-, 2- or 3-D, channels-last: ``NWC`` / ``NHWC`` /
``NDHWC`` with ``WIO`` / ``HWIO`` / ``DHWIO`` kernels): x's channels are its last dimension, the
kernel's input / output channels its last two.

A grouped layout (:mod:`jaxcnn.algorithms.groups`) runs the same steps with one panel: x is gathered
over ``k`` only when the filter algorithm must select its groups' channels, the kernel is gathered
over the rows along its output channels, and the local convolution is itself grouped.

Autodiff transposes each collective into its efficient dual (all-gather ↔ reduce-scatter, ppermute ↔
reversed ppermute); the only all-reduce in a backward pass is the kernel gradient of the data /
spatial baselines, whose kernel is replicated by definition. No custom VJP is needed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from jaxcnn import common_mesh
from jaxcnn.algorithms.base import Algorithm, Layout, make_layout
from jaxcnn.algorithms.collectives import (
    as_varying,
    channel_panel,
    gather,
    halo_extend,
    reduce_scatter,
    varying_axes,
)
from jaxcnn.algorithms.groups import select_groups
from jaxcnn.algorithms.overlap import overlapped_conv
from jaxcnn.algorithms.pipeline import pipelined_panels
from jaxcnn.dtypes import reduction_dtype
from jaxcnn.geometry import ConvGeometry


def accumulation_dtype(out_dtype: jnp.dtype) -> jnp.dtype:
    """fp32 accumulation for low-precision floats, else the output dtype."""
    if jnp.issubdtype(out_dtype, jnp.floating) and jnp.finfo(out_dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(out_dtype)


def local_body(
    geom: ConvGeometry,
    layout: Layout,
    out_dtype: jnp.dtype,
    compute_dtype: jnp.dtype | None = None,
    reduce_dtype: jnp.dtype | None = None,
):
    """Returns the per-device function ``(x_block, kernel_block) -> y_block``.

    ``compute_dtype``: the local convolutions' operands (default ``out_dtype``); x and the kernel are
    cast to it on the devices, so halos and gathered panels travel in it. ``reduce_dtype``: the sums
    (default float32 for 16-bit compute): the reduce-scatter of partial outputs, the transposes of the
    gathers, and a replicated kernel's gradient, whose reduction is the transpose of making it vary
    over x's axes, done before the cast (:func:`jaxcnn.dtypes.reduction_dtype`).
    """
    acc_dtype = accumulation_dtype(out_dtype)
    compute_dtype = jnp.dtype(compute_dtype or out_dtype)
    reduce_dtype = reduction_dtype(compute_dtype, reduce_dtype)
    steps = layout.subsample or (1,) * geom.rank
    # a subsampled dimension (Layout.subsample) runs at stride 1 on the rows it kept, its high padding
    # what the output rows beyond them read
    strides = tuple(1 if step > 1 else d.stride for step, d in zip(steps, geom.dims, strict=True))
    padding = tuple(
        (0, d.out - layout.read_rows(i, d.size)) if steps[i] > 1 else (p.local_pad if p else d.pad)
        for i, (p, d) in enumerate(zip(layout.plans, geom.dims, strict=True))
    )
    channels = geom.rank + 1  # x's / y's channel dimension; the kernel's input channels are at rank

    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=strides,
            padding=padding,
            lhs_dilation=geom.input_dilation,
            rhs_dilation=geom.dilation,
            dimension_numbers=geom.dimension_numbers,
            feature_group_count=layout.local_groups,
            preferred_element_type=acc_dtype,
        )

    def panel_conv(x: jax.Array, window: jax.Array, kernel: jax.Array, t: jax.Array | int) -> jax.Array:
        """Panel ``t``'s convolution: ``x`` the device's own block, ``window`` its halo-extended one."""
        kp = channel_panel(kernel, t, layout.panels, layout.unit, axis=geom.rank)
        kp = gather(kp, layout.kernel_gather, layout.kernel_axis, reduce_dtype)
        if layout.interior is not None:  # x is not gathered over k (overlap.interior_ranges)
            return overlapped_conv(
                conv,
                channel_panel(x, t, layout.panels, layout.unit, axis=channels),
                channel_panel(window, t, layout.panels, layout.unit, axis=channels),
                kp,
                plans=layout.plans,
                dims=geom.dims,
                interior=layout.interior,
                axis_names=layout.spatial_axes,
            )
        xp = channel_panel(window, t, layout.panels, layout.unit, axis=channels)
        return conv(select_groups(gather(xp, layout.k_gather, channels, reduce_dtype), layout), kp)

    def body(x: jax.Array, kernel: jax.Array) -> jax.Array:
        x = x.astype(compute_dtype)
        for i, step in enumerate(steps):  # keep only the rows the taps read (Layout.subsample)
            if step > 1:
                x = lax.slice_in_dim(x, 0, x.shape[1 + i], stride=step, axis=1 + i)
        kernel = as_varying(kernel.astype(reduce_dtype), varying_axes(x)).astype(compute_dtype)
        window = x
        for i, (axis_name, plan) in enumerate(zip(layout.spatial_axes, layout.plans, strict=True)):
            if plan:
                window = halo_extend(window, 1 + i, axis_name, plan)
        if layout.pipelined:
            y = pipelined_panels(conv, window, kernel, layout, reduce_dtype)
            return reduce_scatter(y, layout.c_scatter, channels, reduce_dtype, out_dtype)
        y = panel_conv(x, window, kernel, 0)
        if layout.panels > 1:
            step = jax.checkpoint(lambda t, acc: acc + panel_conv(x, window, kernel, t))
            y = lax.fori_loop(1, layout.panels, step, y)
        return reduce_scatter(y, layout.c_scatter, channels, reduce_dtype, out_dtype)

    return body


@functools.lru_cache(maxsize=512)
def build(
    algorithm: Algorithm,
    geom: ConvGeometry,
    mesh: Mesh,
    sizes: tuple[tuple[str, int], ...],
    out_dtype: jnp.dtype,
    compute_dtype: jnp.dtype | None = None,
    reduce_dtype: jnp.dtype | None = None,
) -> tuple[Layout, jax.stages.Wrapped]:
    """Layout and jitted shard_map for one (algorithm, layer, mesh, dtypes); cached."""
    layout = make_layout(algorithm, geom, dict(sizes))
    fn = common_mesh.shard_map(
        local_body(geom, layout, out_dtype, compute_dtype, reduce_dtype),
        mesh=mesh,
        in_specs=(layout.x_spec, layout.kernel_spec),
        out_specs=layout.y_spec,
    )
    return layout, jax.jit(fn)
