"""Halo overlap: a device's output interior computed from its own block while the halos are in flight.

An algorithm run as ``"<name>+overlap"`` (e.g. ``"spatial+overlap"``) splits its local convolution the
way LBANN/Distconv does. Along every split spatial dimension the output rows ``[lo, hi)`` whose input
rows lie inside the device's own block on **every** device (:func:`interior_range`; the same range
everywhere, so one static program serves all devices) form the *interior*. The local convolution then
runs as

1. the **core**: the interior box, convolved from the device's own block (no halo row in it), so it
   depends on no collective and XLA may run it while the halo permutes are in flight;
2. the **boundary**: for each split dimension in array order, the output rows before and after the
   interior, over the full extent of the later dimensions and the interior of the earlier ones
   (:func:`overlapped_conv`), convolved from the halo-extended window;

and concatenates the pieces back into the block. The pieces tile the block exactly and each reads the
same input rows as the whole convolution would, so the result is the same convolution (exact, and the
collectives are the same ones: the bytes do not change). Their gradients flow the same way: the
reversed halo permutes carry only the boundary's input gradient, the core's is local.

Where it applies (:func:`interior_ranges`; elsewhere ``Layout.interior`` is None and the layer runs as
without ``+overlap``, except that a streaming algorithm whose x is gathered over ``k`` double-buffers
its channel panels, :mod:`jaxcnn.algorithms.pipeline`): x is not gathered over ``k`` (the halo'd
block is the convolution's operand itself: spatial, and the row splits of 2d / 2.5d / 3d when
``k = 1``); no input dilation (not a transposed convolution); some split dimension exchanges a halo;
and every split dimension has a non-empty interior (a block wider than the kernel's reach).

On the CPU collectives are synchronous, so nothing hides and the pieces only add work; on GPU / TPU
the latency-hiding scheduler may issue the permutes before the core and wait for them after it. The
planner prices both (:mod:`jaxcnn.planner.step_time`) and takes ``+overlap`` only where it is faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.algorithms.collectives import as_varying, varying_axes
from jaxcnn.geometry import DimGeometry, HaloPlan

Interior = tuple[tuple[int, int] | None, ...]


def interior_range(plan: HaloPlan, dim: DimGeometry) -> tuple[int, int] | None:
    """Output rows ``[lo, hi)`` of every block that read only the block's own input rows (None when
    no row does, or with input dilation).

    In the extended buffer (``plan.left`` halo rows, the ``plan.in_block`` own rows, the right halo),
    block ``b``'s output row ``i`` reads rows ``start_b + σi`` to ``start_b + σi + d(R-1)``, with
    ``start_b = plan.start + b·plan.step``; the range is the intersection over all blocks.
    """
    if dim.input_dilation != 1:
        return None
    own_lo, own_hi = plan.left, plan.left + plan.in_block  # the own rows in the extended buffer
    lo, hi = 0, plan.out_block
    for b in range(plan.parts):
        start = plan.start + b * plan.step
        lo = max(lo, -(-(own_lo - start) // dim.stride))
        hi = min(hi, (own_hi - dim.extent - start) // dim.stride + 1)
    return (lo, hi) if lo < hi else None


def interior_ranges(
    plans: Sequence[HaloPlan | None], dims: Sequence[DimGeometry], x_gathered: bool
) -> Interior | None:
    """Per spatial dimension the interior output range (None where unsplit), or None when the layer
    cannot overlap (module docstring)."""
    if x_gathered or not any(p is not None and p.left + p.right > 0 for p in plans):
        return None
    ranges = tuple(interior_range(p, d) if p is not None else None for p, d in zip(plans, dims, strict=True))
    if any(p is not None and r is None for p, r in zip(plans, ranges, strict=True)):
        return None
    return ranges


def _rows(dim: DimGeometry, lo: int, hi: int) -> tuple[int, int]:
    """Window rows ``[start, stop)`` that output rows ``[lo, hi)`` read."""
    return dim.stride * lo, dim.stride * (hi - 1) + dim.extent


def overlapped_conv(
    conv: Callable[[jax.Array, jax.Array], jax.Array],
    block: jax.Array,
    window: jax.Array,
    kernel: jax.Array,
    *,
    plans: Sequence[HaloPlan | None],
    dims: Sequence[DimGeometry],
    interior: Interior,
    axis_names: Sequence[str],
) -> jax.Array:
    """``conv(window, kernel)``, computed as the core from ``block`` and the boundary from ``window``.

    Args:
      conv: the local convolution (VALID along the split dimensions: the window holds the padding).
      block: the device's own input block (before any halo exchange).
      window: the halo-extended input window of the whole output block.
      kernel: the (gathered) kernel.
      plans, dims, interior, axis_names: per spatial dimension (array axis ``1 + i``) its halo plan,
        geometry, :func:`interior_ranges` entry and mesh axis.
    """
    # One cast of a replicated kernel to varying for all the pieces: its transpose is then one psum of
    # the summed kernel gradient, not one per piece (which XLA would combine into one all-reduce of
    # all the pieces' gradients).
    kernel = as_varying(kernel, varying_axes(block))
    split = [
        (1 + i, plan, dim, rng, name)
        for i, (plan, dim, rng, name) in enumerate(zip(plans, dims, interior, axis_names, strict=True))
        if plan is not None
    ]
    core = block
    for axis, plan, dim, (lo, hi), name in split:
        first, stop = _rows(dim, lo, hi)
        offset = plan.start - plan.left + first  # in the own block's rows, for block 0
        if plan.step == 0:
            core = lax.slice_in_dim(core, offset, offset + stop - first, axis=axis)
        else:
            offset = offset + lax.axis_index(name) * plan.step
            core = lax.dynamic_slice_in_dim(core, offset, stop - first, axis=axis)

    def region(j: int, win: jax.Array) -> jax.Array:
        """Output of the interior along split dimensions < j and everything along the others."""
        if j == len(split):
            return conv(core, kernel)
        axis, plan, dim, (lo, hi), _ = split[j]
        pieces = []
        for a, b in ((0, lo), (lo, hi), (hi, plan.out_block)):
            if a == b:
                continue
            first, stop = _rows(dim, a, b)
            rows = lax.slice_in_dim(win, first, stop, axis=axis)
            pieces.append(region(j + 1, rows) if (a, b) == (lo, hi) else conv(rows, kernel))
        return jnp.concatenate(pieces, axis=axis) if len(pieces) > 1 else pieces[0]

    return region(0, window)
