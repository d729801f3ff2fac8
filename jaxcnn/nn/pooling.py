"""Pooling on distributed channels-last activations: halos where a spatial dimension is split, global
average pooling. Rank-generic: ``(N, W, C)``, ``(N, H, W, C)`` or ``(N, D, H, W, C)`` with a window of
one size per spatial dimension; the mesh axes splitting each dimension are read from the spec.

A pooling window is a convolution window without weights, so a split spatial dimension uses the same
halo plan as a convolution (:func:`jaxcnn.geometry.halo_plan` of the window's
:class:`~jaxcnn.geometry.DimGeometry`) and the same exchange
(:func:`jaxcnn.algorithms.collectives.halo_extend`), with rows outside the image filled with the
pooling's padding value (−inf for max, 0 for sums). Each device then reduces its window with
``lax.reduce_window`` (VALID along split dimensions, the layer's padding along the others). Batch and
channel splits need nothing. Communication per device (2-D): the halo rows, ``(left+right)·(W/w)·C_local``
words along h, then ``window_h·(left+right)·C_local`` along w (as in :mod:`jaxcnn.algorithms.spatial`);
in 3-D the same dimension by dimension (d, then h on the extended block, then w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn import common_mesh
from jaxcnn.algorithms.collectives import halo_extend
from jaxcnn.geometry import DimGeometry, PaddingLike, conv_geometry, halo_plan
from jaxcnn.nn import specs
from jaxcnn.padding import crop_to, pad_to
from jaxcnn.redistribute import spec_entries


def _dims(
    x: jax.Array, window: Sequence[int], strides: Sequence[int] | None, padding: PaddingLike
) -> list[DimGeometry]:
    """One :class:`DimGeometry` per spatial dimension of ``(N, *spatial, C)`` ``x`` (1 to 3 of them)."""
    spatial = x.ndim - 2
    if spatial not in (1, 2, 3) or len(window) != spatial:
        raise ValueError(
            f"pooling takes (N, *spatial, C) inputs with 1-3 spatial dimensions and a window of one size "
            f"per spatial dimension, got {x.shape} and {tuple(window)}"
        )
    strides = tuple(strides) if strides is not None else (1,) * spatial
    if len(strides) != spatial:
        raise ValueError(f"strides {strides} must have one entry per spatial dimension of {x.shape}")
    if not isinstance(padding, str) and len(padding) != spatial:
        raise ValueError(f"padding {padding} must have one (lo, hi) pair per spatial dimension of {x.shape}")
    dims = []
    for i in range(spatial):  # each dimension on its own, as the h dimension of a 1-wide geometry
        pad = padding if isinstance(padding, str) else (tuple(padding[i]), (0, 0))
        dims.append(conv_geometry((1, x.shape[1 + i], 1, 1), (window[i], 1, 1, 1), (strides[i], 1), pad).h)
    return dims


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
    axes = range(1, x.ndim - 1)  # the spatial axes
    full_window = (1, *window, 1)
    full_strides = (1, *(d.stride for d in dims), 1)
    if mesh is None:
        pads = ((0, 0), *(d.pad for d in dims), (0, 0))
        return lax.reduce_window(x, init, op, full_window, full_strides, pads)
    entries = spec_entries(spec, x.ndim)
    plans = {}
    for axis, dim in zip(axes, dims, strict=True):
        names = entries[axis]
        if len(names) > 1:
            raise ValueError(f"pooling needs a spatial dimension split over one mesh axis, got {spec}")
        size = specs.parts(names, mesh)
        plans[axis] = (names[0], halo_plan(dim, size)) if size > 1 else None
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
        for axis in axes:
            if plans[axis] is not None:
                xb = fill_tail(xb, axis, plans[axis][0], x.shape[axis])
        pads = [(0, 0)]
        for axis, dim in zip(axes, dims, strict=True):
            if plans[axis] is None:
                pads.append(dim.pad)
            else:
                xb = halo_extend(xb, axis, plans[axis][0], plans[axis][1], fill=init)
                pads.append((0, 0))
        pads.append((0, 0))
        return lax.reduce_window(xb, init, op, full_window, full_strides, pads)

    y = common_mesh.shard_map(
        body, mesh=mesh, in_specs=(specs.as_spec(entries),), out_specs=specs.as_spec(entries)
    )(xp)
    return crop_to(y, (x.shape[0], *(d.out for d in dims), x.shape[-1]))


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    *,
    mesh: Mesh | None = None,
    spec: P = specs.REPLICATED,
) -> jax.Array:
    """``flax.nnx.max_pool`` of channels-last ``x`` laid out as ``spec`` on ``mesh``.

    Args:
      x: ``(N, H, W, C)`` (or ``(N, D, H, W, C)``, ``(N, W, C)``).
      window_shape: ``(wh, ww)`` (one size per spatial dimension).
      strides: ``(σh, σw)``; default all 1 (as Flax).
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``; padded positions are −inf.
      mesh: the mesh ``x`` lives on; ``None`` computes on one device.
      spec: ``x``'s PartitionSpec; each spatial dimension may be split over one mesh axis.

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
    """``flax.nnx.avg_pool`` of channels-last ``x`` laid out as ``spec`` on ``mesh`` (arguments as
    :func:`max_pool`).

    ``count_include_pad=False`` divides by the number of in-image positions of each window (a static
    table, no communication).
    """
    y = _pool(x, 0.0, lax.add, window_shape, strides, padding, mesh, spec)
    if count_include_pad:
        return y / np.prod(window_shape)
    counts = np.ones((), np.float32)
    for dim in _dims(x, window_shape, strides, padding):
        counts = np.multiply.outer(counts, _valid_counts(dim).astype(np.float32))
    return y / jnp.asarray(counts, y.dtype)[None, ..., None]


def global_avg_pool(x: jax.Array, *, mesh: Mesh | None = None, spec: P = specs.REPLICATED) -> jax.Array:
    """Mean over H and W of NHWC ``x``: ``(N, C)``, laid out as ``P(spec[0], spec[3])``.

    Each device sums its block in float32 (at least), one ``psum`` over the axes splitting h and w
    completes the sum (2·N_local·C_local·(p−1)/p float32 words received per device), divided by the
    real H·W; the mean is returned in ``x``'s dtype.
    """
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool takes NHWC inputs, got shape {x.shape}")
    if mesh is None:
        return jnp.mean(x, axis=(1, 2))
    entries = spec_entries(spec, 4)
    spatial = entries[1] + entries[2]
    xp = pad_to(x, specs.padded_shape(x.shape, spec, mesh))

    def body(xb: jax.Array) -> jax.Array:
        s = xb.sum((1, 2), dtype=jnp.promote_types(xb.dtype, jnp.float32))
        return lax.psum(s, spatial) if spatial else s

    out = P(entries[0] or None, entries[3] or None)
    y = common_mesh.shard_map(body, mesh=mesh, in_specs=(specs.as_spec(entries),), out_specs=out)(xp)
    return (crop_to(y, (x.shape[0], x.shape[3])) / (x.shape[1] * x.shape[2])).astype(x.dtype)
