"""The one shard_map body behind every algorithm (see :mod:`jaxcnn.algorithms.base`).

Per device, in order:

1. halo exchange along each split spatial dimension (h first, then w on the h-extended block, which
   carries the corners), cutting the exact input window of the local output block;
2. the channel loop: for each of ``panels`` strided channel panels, all-gather x's panel over ``k``
   and the kernel's panel over the row axes, and accumulate the local convolution (``fori_loop``
   under ``jax.checkpoint`` when streaming, so neither the forward nor the backward pass ever holds
   more than one gathered panel);
3. reduce-scatter the partial output over ``c`` along the output channels.

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

from jaxcnn.algorithms.base import Algorithm, Layout, make_layout
from jaxcnn.algorithms.collectives import channel_panel, gather, halo_extend, reduce_scatter
from jaxcnn.algorithms.groups import select_groups
from jaxcnn.geometry import ConvGeometry

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def accumulation_dtype(out_dtype: jnp.dtype) -> jnp.dtype:
    """fp32 accumulation for low-precision floats, else the output dtype."""
    if jnp.issubdtype(out_dtype, jnp.floating) and jnp.finfo(out_dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(out_dtype)


def local_body(geom: ConvGeometry, layout: Layout, out_dtype: jnp.dtype):
    """Returns the per-device function ``(x_block, kernel_block) -> y_block``."""
    acc_dtype = accumulation_dtype(out_dtype)
    padding = (
        layout.h_plan.local_pad if layout.h_plan else geom.h.pad,
        layout.w_plan.local_pad if layout.w_plan else geom.w.pad,
    )

    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=geom.strides,
            padding=padding,
            lhs_dilation=geom.input_dilation,
            rhs_dilation=geom.dilation,
            dimension_numbers=DIMENSION_NUMBERS,
            feature_group_count=layout.local_groups,
            preferred_element_type=acc_dtype,
        )

    def panel_conv(x: jax.Array, kernel: jax.Array, t: jax.Array | int) -> jax.Array:
        xp = gather(channel_panel(x, t, layout.panels, layout.unit, axis=3), layout.k_gather, 3)
        kp = channel_panel(kernel, t, layout.panels, layout.unit, axis=2)
        return conv(select_groups(xp, layout), gather(kp, layout.kernel_gather, layout.kernel_axis))

    def body(x: jax.Array, kernel: jax.Array) -> jax.Array:
        if layout.h_plan:
            x = halo_extend(x, 1, "h", layout.h_plan)
        if layout.w_plan:
            x = halo_extend(x, 2, "w", layout.w_plan)
        y = panel_conv(x, kernel, 0)
        if layout.panels > 1:
            step = jax.checkpoint(lambda t, acc: acc + panel_conv(x, kernel, t))
            y = lax.fori_loop(1, layout.panels, step, y)
        return reduce_scatter(y.astype(out_dtype), layout.c_scatter, 3)

    return body


@functools.lru_cache(maxsize=512)
def build(
    algorithm: Algorithm,
    geom: ConvGeometry,
    mesh: Mesh,
    sizes: tuple[tuple[str, int], ...],
    out_dtype: jnp.dtype,
) -> tuple[Layout, jax.stages.Wrapped]:
    """Layout and jitted shard_map for one (algorithm, layer, mesh, dtype); cached."""
    layout = make_layout(algorithm, geom, dict(sizes))
    fn = jax.shard_map(
        local_body(geom, layout, out_dtype),
        mesh=mesh,
        in_specs=(layout.x_spec, layout.kernel_spec),
        out_specs=layout.y_spec,
    )
    return layout, jax.jit(fn)
