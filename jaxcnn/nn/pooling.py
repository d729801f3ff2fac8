"""Pooling on distributed NHWC activations: halos where h or w is split, global average pooling.

A pooling window is a convolution window without weights, so a split spatial dimension uses the same
halo plan as a convolution (:func:`jaxcnn.geometry.halo_plan` of the window's
:class:`~jaxcnn.geometry.DimGeometry`) and the same exchange
(:func:`jaxcnn.algorithms.collectives.halo_extend`), with rows outside the image filled with the
pooling's padding value (−inf for max, 0 for sums). Each device then reduces its window with
``lax.reduce_window`` (VALID along split dimensions, the layer's padding along the others). Batch and
channel splits need nothing. Communication per device: the halo rows, ``(left+right)·(W/w)·C_local``
words along h, then ``window_h·(left+right)·C_local`` along w (as in :mod:`jaxcnn.algorithms.spatial`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.algorithms.collectives import halo_extend
from jaxcnn.geometry import DimGeometry, PaddingLike, conv_geometry, halo_plan
from jaxcnn.nn import specs
from jaxcnn.padding import crop_to, pad_to
from jaxcnn.redistribute import spec_entries


def _dims(x: jax.Array, window: Sequence[int], strides: Sequence[int] | None, padding: PaddingLike):
    if x.ndim != 4 or len(window) != 2:
        raise ValueError(f"pooling takes NHWC inputs and a 2-D window, got {x.shape} and {window}")
    strides = tuple(strides) if strides is not None else (1, 1)
    geom = conv_geometry((1, x.shape[1], x.shape[2], 1), (*window, 1, 1), strides, padding)
    return geom.h, geom.w


def _pool(
    x: jax.Array,
    init: float,
    op: Callable,
    window: Sequence[int],
    strides: Sequence[int] | None,
    padding: PaddingLike,
    mesh: Mesh | None,
    spec: P,
) -> jax.Array:
    dims = _dims(x, window, strides, padding)
    if mesh is None:
        pads = ((0, 0), dims[0].pad, dims[1].pad, (0, 0))
        return lax.reduce_window(x, init, op, (1, *window, 1), (1, dims[0].stride, dims[1].stride, 1), pads)
    entries = spec_entries(spec, 4)
    plans = []
    for axis, dim in ((1, dims[0]), (2, dims[1])):
        names = entries[axis]
        if len(names) > 1:
            raise ValueError(f"pooling needs a spatial dimension split over one mesh axis, got {spec}")
        size = specs.parts(names, mesh)
        plans.append((names[0], halo_plan(dim, size)) if size > 1 else None)
    # Zero padding here, the fill value inside the body: XLA's SPMD partitioner has been seen to mix up
    # two pads of the same operand with different constants (-inf and 0) in one program.
    xp = pad_to(x, specs.padded_shape(x.shape, spec, mesh))

    def fill_tail(xb: jax.Array, axis: int, name: str, size: int) -> jax.Array:
        block = xb.shape[axis]
        if init == 0 or block * mesh.shape[name] == size:
            return xb
        rows = lax.axis_index(name) * block + lax.broadcasted_iota(jnp.int32, xb.shape, axis)
        return jnp.where(rows < size, xb, jnp.asarray(init, xb.dtype))

    def body(xb: jax.Array) -> jax.Array:
        for axis, plan in ((1, plans[0]), (2, plans[1])):
            if plan is not None:
                xb = fill_tail(xb, axis, plan[0], x.shape[axis])
        pads = [(0, 0)]
        for axis, dim, plan in ((1, dims[0], plans[0]), (2, dims[1], plans[1])):
            if plan is None:
                pads.append(dim.pad)
            else:
                xb = halo_extend(xb, axis, plan[0], plan[1], fill=init)
                pads.append((0, 0))
        pads.append((0, 0))
        return lax.reduce_window(xb, init, op, (1, *window, 1), (1, dims[0].stride, dims[1].stride, 1), pads)

    y = jax.shard_map(body, mesh=mesh, in_specs=(specs.as_spec(entries),), out_specs=specs.as_spec(entries))(
        xp
    )
    return crop_to(y, (x.shape[0], dims[0].out, dims[1].out, x.shape[3]))


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    *,
    mesh: Mesh | None = None,
    spec: P = specs.REPLICATED,
) -> jax.Array:
    """``flax.nnx.max_pool`` of NHWC ``x`` laid out as ``spec`` on ``mesh``.

    Args:
      x: ``(N, H, W, C)``.
      window_shape: ``(wh, ww)``.
      strides: ``(σh, σw)``; default ``(1, 1)`` (as Flax).
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``; padded positions are −inf.
      mesh: the mesh ``x`` lives on; ``None`` computes on one device.
      spec: ``x``'s PartitionSpec; h and w may each be split over one mesh axis.

    Returns:
      ``(N, Ho, Wo, C)``, laid out as ``spec``.
    """
    return _pool(x, -jnp.inf, lax.max, window_shape, strides, padding, mesh, spec)


def _valid_counts(dim: DimGeometry) -> np.ndarray:
    starts = np.arange(dim.out) * dim.stride - dim.pad[0]
    return np.clip(starts + dim.kernel, 0, dim.size) - np.clip(starts, 0, dim.size)


def avg_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    count_include_pad: bool = True,
    *,
    mesh: Mesh | None = None,
    spec: P = specs.REPLICATED,
) -> jax.Array:
    """``flax.nnx.avg_pool`` of NHWC ``x`` laid out as ``spec`` on ``mesh`` (arguments as :func:`max_pool`).

    ``count_include_pad=False`` divides by the number of in-image positions of each window (a static
    table, no communication).
    """
    y = _pool(x, 0.0, lax.add, window_shape, strides, padding, mesh, spec)
    if count_include_pad:
        return y / np.prod(window_shape)
    h, w = _dims(x, window_shape, strides, padding)
    counts = np.outer(_valid_counts(h), _valid_counts(w)).astype(np.float32)
    return y / jnp.asarray(counts, y.dtype)[None, :, :, None]


def global_avg_pool(x: jax.Array, *, mesh: Mesh | None = None, spec: P = specs.REPLICATED) -> jax.Array:
    """Mean over H and W of NHWC ``x``: ``(N, C)``, laid out as ``P(spec[0], spec[3])``.

    Each device sums its block, one ``psum`` over the axes splitting h and w completes the sum
    (2·N_local·C_local·(p−1)/p words received per device), divided by the real H·W.
    """
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool takes NHWC inputs, got shape {x.shape}")
    if mesh is None:
        return jnp.mean(x, axis=(1, 2))
    entries = spec_entries(spec, 4)
    spatial = entries[1] + entries[2]
    xp = pad_to(x, specs.padded_shape(x.shape, spec, mesh))

    def body(xb: jax.Array) -> jax.Array:
        s = xb.sum((1, 2))
        return lax.psum(s, spatial) if spatial else s

    out = P(entries[0] or None, entries[3] or None)
    y = jax.shard_map(body, mesh=mesh, in_specs=(specs.as_spec(entries),), out_specs=out)(xp)
    return crop_to(y, (x.shape[0], x.shape[3])) / (x.shape[1] * x.shape[2])
