"""Collective helpers shared by every algorithm (used inside ``shard_map`` bodies only).

- :func:`shift`: the ppermute ``shift`` idiom of JAX's shard_map tutorial, non-cyclic, so a device with
  no source receives zeros (which is exactly zero padding at the image border).
- :func:`halo_extend`: halo exchange along one split spatial dimension, any reach (several hops when the
  halo is wider than a neighbour's block), then each device cuts its own input window.
- :func:`channel_panel` / :func:`put_channel_panel` / :func:`gather`: the strided channel panels
  streamed by 2d / 2.5d (read, and written back as gradients by :mod:`.pipeline`) and the tiled
  all-gather that assembles them.
- :func:`reduce_scatter`: the partial sums' reduction.

**Dtypes on the wire** (``docs/mixed_precision.md``). What only moves (a halo, a gathered panel, and
the gathered cotangent of a reduce-scatter) travels in the array's own dtype, 16-bit floats as their
bit patterns (:func:`jaxcnn.dtypes.as_bits`): XLA:CPU otherwise converts a bfloat16 collective to
float32 and back around it, and moves 4-byte words; GPU and TPU move the same 2 bytes either way.
What is summed (the reduce-scatter of partial outputs, and a gather's transpose, the reduce-scatter
of its cotangent) travels in a ``reduce_dtype``: float32 by default for 16-bit arrays. Each pair is a
``custom_vjp`` whose backward pass issues the same collectives as autodiff's transpose, in those
dtypes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.dtypes import as_bits, from_bits, reduction_dtype
from jaxcnn.geometry import HaloPlan

AxisNames = str | tuple[str, ...]


def varying_axes(value: jax.Array) -> frozenset[str]:
    """The mesh axes ``value`` varies over inside a shard_map (empty where JAX does not track them)."""
    aval = jax.typeof(value)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def as_varying(value: jax.Array, axes: frozenset[str]) -> jax.Array:
    """``value`` cast to vary over ``axes`` too (where it does not already)."""
    missing = axes - varying_axes(value)
    return lax.pcast(value, tuple(sorted(missing)), to="varying") if missing else value


def shift(x: jax.Array, axis_name: str, hop: int, parts: int) -> jax.Array:
    """Sends ``x`` from device ``b`` to device ``b + hop`` along ``axis_name`` (no wrap-around).

    Devices ``b`` with ``b - hop`` outside ``[0, parts)`` receive zeros. Bytes received per device: |x|.
    """
    perm = tuple((src, src + hop) for src in range(parts) if 0 <= src + hop < parts)
    return permute(x, axis_name, perm)


def _moved(collective, x: jax.Array) -> jax.Array:
    return from_bits(collective(as_bits(x)), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def permute(x: jax.Array, axis_names: AxisNames, perm: tuple[tuple[int, int], ...]) -> jax.Array:
    """``lax.ppermute`` of ``x`` in its own dtype (:func:`jaxcnn.dtypes.as_bits`); the cotangent goes
    back the same way."""
    return _moved(lambda b: lax.ppermute(b, axis_names, perm), x)


def _permute_fwd(x, axis_names, perm):
    return permute(x, axis_names, perm), None


def _permute_bwd(axis_names, perm, _, ct):
    return (permute(ct, axis_names, tuple((dst, src) for src, dst in perm)),)


permute.defvjp(_permute_fwd, _permute_bwd)


def halo_extend(x: jax.Array, axis: int, axis_name: str, plan: HaloPlan, *, fill: float = 0.0) -> jax.Array:
    """Returns this device's input window along ``axis`` (length ``plan.window``).

    Receives ``plan.left`` rows from the devices to the left (tails of their blocks, farthest first)
    and ``plan.right`` rows from the right (heads of their blocks), one ``ppermute`` per hop, then
    slices the window at ``plan.start + b * plan.step`` (static when the step is 0). Rows that fall
    outside the mesh (no source device) hold ``fill``: 0 is the zero padding of a convolution, ``-inf``
    the padding of max pooling.

    Args:
      x: the local block, ``plan.in_block`` rows along ``axis``.
      axis: the array axis that is split (1 for h, 2 for w in NHWC).
      axis_name: the mesh axis splitting it.
      plan: from :func:`jaxcnn.geometry.halo_plan`.
      fill: value of rows outside the image (devices with no source for a piece).
    """
    pieces: list[jax.Array] = []
    index = lax.axis_index(axis_name) if fill != 0 else None

    def rows(start: int, count: int) -> jax.Array:
        return lax.slice_in_dim(x, start, start + count, axis=axis)

    def zeros(count: int) -> jax.Array:
        shape = list(x.shape)
        shape[axis] = count
        return jnp.full(shape, fill, x.dtype)

    def received(piece: jax.Array, hop: int) -> jax.Array:
        moved = shift(piece, axis_name, hop, plan.parts)
        if index is None:
            return moved
        source = index - hop
        return jnp.where((source < 0) | (source >= plan.parts), jnp.asarray(fill, x.dtype), moved)

    for hop, count in plan.left_pieces():
        tail = rows(plan.in_block - count, count)
        pieces.append(received(tail, hop) if hop < plan.parts else zeros(count))
    pieces.append(x)
    for hop, count in plan.right_pieces():
        head = rows(0, count)
        pieces.append(received(head, -hop) if hop < plan.parts else zeros(count))
    extended = jnp.concatenate(pieces, axis=axis) if len(pieces) > 1 else x
    if plan.step == 0:
        return lax.slice_in_dim(extended, plan.start, plan.start + plan.window, axis=axis)
    start = plan.start + lax.axis_index(axis_name) * plan.step
    return lax.dynamic_slice_in_dim(extended, start, plan.window, axis=axis)


def channel_panel(x: jax.Array, t: jax.Array | int, panels: int, unit: int, axis: int) -> jax.Array:
    """Panel ``t`` of ``panels`` strided channel panels of a local block.

    The local channels are viewed as ``(groups, panels, unit)``; panel ``t`` is ``[:, t, :]``
    (``groups * unit`` channels). Every device's panel ``t`` holds the global channel units
    ``u ≡ t (mod panels)``, so gathering the panels of x along ``k`` and of the kernel along the row
    axes yields the same channels in the same (increasing) order, whatever the two group sizes are.
    """
    if panels == 1:
        return x
    shape = x.shape
    blocks = x.reshape(*shape[:axis], -1, panels, unit, *shape[axis + 1 :])
    taken = lax.dynamic_index_in_dim(blocks, t, axis=axis + 1, keepdims=False)
    return taken.reshape(*shape[:axis], -1, *shape[axis + 1 :])


def put_channel_panel(
    x: jax.Array, panel: jax.Array, t: jax.Array | int, panels: int, unit: int, axis: int
) -> jax.Array:
    """``x`` with its channel panel ``t`` (:func:`channel_panel`) replaced by ``panel``."""
    if panels == 1:
        return panel
    shape = x.shape
    blocks = x.reshape(*shape[:axis], -1, panels, unit, *shape[axis + 1 :])
    piece = panel.reshape(*shape[:axis], -1, 1, unit, *shape[axis + 1 :])
    return lax.dynamic_update_slice_in_dim(blocks, piece, t, axis=axis + 1).reshape(shape)


def _names(axis_names: Sequence[str]) -> AxisNames:
    names = tuple(axis_names)
    return names if len(names) > 1 else names[0]


def gather(
    x: jax.Array, axis_names: Sequence[str], axis: int, reduce_dtype: jnp.dtype | None = None
) -> jax.Array:
    """Tiled all-gather of ``x`` along ``axis`` over ``axis_names`` (a no-op for no names), in ``x``'s
    dtype; its transpose, the reduce-scatter of the cotangent, sums in :func:`reduction_dtype`."""
    if not axis_names:
        return x
    return _gather(x, _names(axis_names), axis, reduction_dtype(x.dtype, reduce_dtype))


def reduce_scatter(
    x: jax.Array,
    axis_names: Sequence[str],
    axis: int,
    reduce_dtype: jnp.dtype | None = None,
    out_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Tiled reduce-scatter (psum_scatter) of ``x`` along ``axis`` over ``axis_names``, summed in
    ``reduce_dtype`` (default ``x``'s dtype) and returned as ``out_dtype`` (default ``x``'s); its
    transpose gathers the cotangent in its own dtype (a no-op but for the casts for no names)."""
    reduce_dtype = jnp.dtype(reduce_dtype or x.dtype)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    if not axis_names:
        return x.astype(out_dtype)
    return _reduce_scatter(x, _names(axis_names), axis, reduce_dtype, out_dtype, x.dtype)


def _all_gather(x: jax.Array, names: AxisNames, axis: int) -> jax.Array:
    """Tiled all-gather of ``x`` in its own dtype (:func:`jaxcnn.dtypes.as_bits`)."""
    return _moved(lambda b: lax.all_gather(b, names, axis=axis, tiled=True), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _gather(x: jax.Array, names: AxisNames, axis: int, reduce_dtype: jnp.dtype) -> jax.Array:
    return _all_gather(x, names, axis)


def _gather_fwd(x, names, axis, reduce_dtype):
    return _gather(x, names, axis, reduce_dtype), None


def _gather_bwd(names, axis, reduce_dtype, _, ct):
    return (_reduce_scatter(ct, names, axis, reduce_dtype, ct.dtype, ct.dtype),)


_gather.defvjp(_gather_fwd, _gather_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _reduce_scatter(
    x: jax.Array, names: AxisNames, axis: int, reduce_dtype: jnp.dtype, out_dtype: jnp.dtype, in_dtype
) -> jax.Array:
    summed = lax.psum_scatter(x.astype(reduce_dtype), names, scatter_dimension=axis, tiled=True)
    return summed.astype(out_dtype)


def _reduce_scatter_fwd(x, names, axis, reduce_dtype, out_dtype, in_dtype):
    return _reduce_scatter(x, names, axis, reduce_dtype, out_dtype, in_dtype), None


def _reduce_scatter_bwd(names, axis, reduce_dtype, out_dtype, in_dtype, _, ct):
    return (_all_gather(ct, names, axis).astype(in_dtype),)


_reduce_scatter.defvjp(_reduce_scatter_fwd, _reduce_scatter_bwd)
