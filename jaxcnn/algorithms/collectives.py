"""Collective helpers shared by every algorithm (used inside ``shard_map`` bodies only).

- :func:`shift`: the ppermute ``shift`` idiom of JAX's shard_map tutorial, non-cyclic, so a device with
  no source receives zeros (which is exactly zero padding at the image border).
- :func:`halo_extend`: halo exchange along one split spatial dimension, any reach (several hops when the
  halo is wider than a neighbour's block), then each device cuts its own input window.
- :func:`channel_panel` / :func:`put_channel_panel` / :func:`gather`: the strided channel panels
  streamed by 2d / 2.5d (read, and written back as gradients by :mod:`.pipeline`) and the tiled
  all-gather that assembles them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

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
    perm = [(src, src + hop) for src in range(parts) if 0 <= src + hop < parts]
    return lax.ppermute(x, axis_name, perm)


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


def gather(x: jax.Array, axis_names: Sequence[str], axis: int) -> jax.Array:
    """Tiled all-gather of ``x`` along ``axis`` over ``axis_names`` (a no-op for no names)."""
    if not axis_names:
        return x
    names = tuple(axis_names)
    return lax.all_gather(x, names if len(names) > 1 else names[0], axis=axis, tiled=True)


def reduce_scatter(x: jax.Array, axis_names: Sequence[str], axis: int) -> jax.Array:
    """Tiled reduce-scatter (psum_scatter) of ``x`` along ``axis`` over ``axis_names``."""
    if not axis_names:
        return x
    names = tuple(axis_names)
    return lax.psum_scatter(x, names if len(names) > 1 else names[0], scatter_dimension=axis, tiled=True)
