"""Double-buffered channel panels: the gathers of panel t+1 in flight while panel t is convolved.

A streaming algorithm (2d, 2.5d) run as ``"<name>+overlap"`` whose x is gathered over ``k``
(:func:`pipelined`) replaces the channel loop of :mod:`jaxcnn.algorithms.engine` by the
collective-matmul schedule of JAX's shard_map tutorial: panel 0 is gathered before the loop, and
iteration t issues the all-gathers of panel t+1 (x's over ``k``, the kernel's over the rows) before it
convolves panel t with the buffers gathered in the iteration before. The gathers thereby depend on
nothing the convolution produces, and a backend with asynchronous collectives may run them during it.

The backward pass is written out (``jax.custom_vjp``) the same way, so that autodiff neither keeps
every iteration's gathered panels (a loop carry is saved per iteration: the whole gathered x and
kernel, 3d's memory) nor loses the schedule: starting from panel 0's gathered x and kernel kept from
the forward pass, for each panel it computes the panel's input and kernel gradients with the local
convolution's VJP (panel t+1's gathers issued before them), reduce-scatters them (x's over ``k``, the
kernel's over the rows) and writes them into their channel panels. Residuals: the window, the kernel
block and panel 0's gathered x and kernel, as the plain loop's.

Words moved, per device: as the plain loop, forward ``m`` all-gathers of each operand's panel,
backward ``m - 1`` of each and ``m`` reduce-scatters. Memory: two gathered panels of each operand live
at once (the one convolved, the next one arriving) instead of one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.algorithms.collectives import (
    as_varying,
    channel_panel,
    gather,
    put_channel_panel,
    reduce_scatter,
    varying_axes,
)
from jaxcnn.dtypes import reduction_dtype

if TYPE_CHECKING:
    from jaxcnn.algorithms.base import Layout

Conv = Callable[[jax.Array, jax.Array], jax.Array]


def pipelined_panels(
    conv: Conv, window: jax.Array, kernel: jax.Array, layout: Layout, reduce_dtype: jnp.dtype | None = None
) -> jax.Array:
    """``Σ_t conv(gather(x panel t), gather(kernel panel t))`` over the layout's channel panels,
    double-buffered forward and backward (module docstring).

    Args:
      conv: the local convolution (accumulating in its output dtype).
      window: the halo-extended x block, channels last, holding ``layout.panels`` strided panels
        (:func:`jaxcnn.algorithms.collectives.channel_panel`), all-gathered over ``layout.k_gather``.
      kernel: the kernel block ``(*window, C, K)``; its input channels hold the same panels, each
        all-gathered over ``layout.kernel_gather`` along ``layout.kernel_axis``.
      layout: the layer's layout (``layout.pipelined``).
      reduce_dtype: the dtype the panels' gradients are reduce-scattered in
        (:func:`jaxcnn.dtypes.reduction_dtype`).
    """
    panels, unit = layout.panels, layout.unit
    x_axis, kernel_axis_in = window.ndim - 1, kernel.ndim - 2
    k_gather, kernel_gather, kernel_axis = layout.k_gather, layout.kernel_gather, layout.kernel_axis

    def gathered(w: jax.Array, k: jax.Array, t: jax.Array | int) -> tuple[jax.Array, jax.Array]:
        xp = gather(channel_panel(w, t, panels, unit, axis=x_axis), k_gather, x_axis)
        kp = gather(channel_panel(k, t, panels, unit, axis=kernel_axis_in), kernel_gather, kernel_axis)
        return xp, kp

    def forward(w: jax.Array, k: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """The panels' sum, and panel 0's gathered x and kernel (kept for the backward pass)."""

        def step(t, carry):
            acc, xp, kp = carry
            nxt = gathered(w, k, t + 1)  # issued before panel t's convolution, which it does not read
            return (acc + conv(xp, kp), *nxt)

        first = gathered(w, k, 0)
        out = jax.eval_shape(conv, *first)
        acc = as_varying(jnp.zeros(out.shape, out.dtype), varying_axes(first[0]) | varying_axes(first[1]))
        acc, xp, kp = lax.fori_loop(0, panels - 1, step, (acc, *first))
        return acc + conv(xp, kp), first

    @jax.custom_vjp
    def run(w: jax.Array, k: jax.Array) -> jax.Array:
        return forward(w, k)[0]

    def run_fwd(w: jax.Array, k: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        y, first = forward(w, k)
        return y, (w, k, *first)

    def run_bwd(res: tuple[jax.Array, ...], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
        w, k, xp, kp = res

        def panel_grads(t, xp, kp, dw, dk):
            _, vjp = jax.vjp(conv, xp, kp)
            dxp, dkp = vjp(dy)
            summed = reduction_dtype(dxp.dtype, reduce_dtype)
            dxp = reduce_scatter(dxp, k_gather, x_axis, summed, dw.dtype)
            dkp = reduce_scatter(dkp, kernel_gather, kernel_axis, summed, dk.dtype)
            dw = put_channel_panel(dw, dxp, t, panels, unit, axis=x_axis)
            dk = put_channel_panel(dk, dkp, t, panels, unit, axis=kernel_axis_in)
            return dw, dk

        def step(t, carry):
            dw, dk, xp, kp = carry
            nxt = gathered(w, k, t + 1)  # issued before panel t's gradients
            return (*panel_grads(t, xp, kp, dw, dk), *nxt)

        zeros = tuple(as_varying(jnp.zeros(a.shape, a.dtype), varying_axes(a)) for a in (w, k))
        dw, dk, xp, kp = lax.fori_loop(0, panels - 1, step, (*zeros, xp, kp))
        return panel_grads(panels - 1, xp, kp, dw, dk)

    run.defvjp(run_fwd, run_bwd)
    return run(window, kernel)


def pipelined(streaming: bool, overlap: bool, panels: int, x_gathered: bool) -> bool:
    """Whether a layout runs :func:`pipelined_panels`: an ``+overlap`` streaming algorithm whose x is
    gathered over ``k`` (with ``k = 1`` its halos overlap the interior instead,
    :mod:`jaxcnn.algorithms.overlap`), with at least 3 panels. With 2, each loop has one trip, XLA
    removes the loops, and in a whole train step it then merges the backward pass's gather of panel 1
    with the forward pass's (measured: a ResNet-18 on 2d@n=2,h=2,k=2 lost 12 of its gathers), keeping
    that panel alive in between: fewer bytes and more memory than counted, and one gather to hide."""
    return streaming and overlap and panels >= 3 and x_gathered
