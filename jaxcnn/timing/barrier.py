"""Calibrating what a collective costs inside a step: the devices arrive at it from computation.

A collective measured on its own (:mod:`jaxcnn.timing.collectives`) finds every device ready at
once. In a step each device reaches it after its own local work, and it waits for the last one. Where
devices share cores (8 virtual CPU devices on 2 here) the last one arrives late: the operating system
does not finish every device's work at once, and the cores idle while the stragglers run. Measured
here: a 1-element psum after a convolution adds 0.5-1 ms on top of the convolution and the psum
alone, and more after a longer convolution.

So each measurement times three chains on every device at once (the chain linked as in
:mod:`jaxcnn.timing.compute`): a convolution of :data:`SHAPES` alone, a psum of :data:`PSUM_ELEMENTS`
(a kernel gradient's size) alone, and the convolution followed by the psum, medians over rounds of the
three in turn. The extra seconds ``t(conv + psum) - t(conv) - t(psum)`` are priced as
``sync + s · steps + compute_s / R`` (:func:`barrier_fit`, a :class:`LinearFit` over
:data:`FEATURES`): ``sync`` seconds per collective; ``s`` per latency step of it, since a psum over a
group of 2 waits for one other device and one over 8 for seven (measured over both); and ``1/R``, the
share of the work before a collective that waiting adds to it (``compute_s`` the convolution's own
time, measured after a longer convolution). On a GPU or TPU, whose devices
do not share cores, all should come out near zero.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.timing import compute
from jaxcnn.timing.compute import AXIS, LINK_SCALE, ConvShape
from jaxcnn.timing.profile import LinearFit, latency_steps

#: Per-device convolutions the barrier is measured after (about 1 and 10 ms here): the first with psums
#: over groups of 2 and of every device, the second over every device.
SHAPES: tuple[ConvShape, ...] = (ConvShape(4, 16, 16, 32, 32), ConvShape(8, 16, 16, 64, 64))
#: Elements of the psum after each convolution (a kernel gradient's size: 64 KiB).
PSUM_ELEMENTS = 1 << 14
FEATURES = ("latency_steps", "compute_s")


def _mesh(group: int) -> Mesh:
    return Mesh(np.asarray(jax.devices()).reshape(-1, group), ("r", AXIS))


def _chain(shape: ConvShape, group: int, conv: bool, psum: bool) -> Callable[[int], Callable[..., jax.Array]]:
    def build(n: int) -> Callable[..., jax.Array]:
        def body(x: jax.Array, w: jax.Array) -> jax.Array:
            for _ in range(n):
                y = compute._conv(shape, x, w) if conv else x
                link = y.reshape(-1)[:PSUM_ELEMENTS]
                if psum:
                    link = jax.lax.psum(link, AXIS)
                x = x.at[0, 0, 0, 0].set(link[0] * LINK_SCALE)
            return x

        batch = P(("r", AXIS))
        return jax.jit(jax.shard_map(body, mesh=_mesh(group), in_specs=(batch, P()), out_specs=batch))

    return build


def measure_barrier(
    shape: ConvShape,
    group: int | None = None,
    repeats: int = 5,
    *,
    rounds: int = 3,
    target_s: float = compute.TARGET_SECONDS,
) -> tuple[float, float]:
    """``(the convolution's seconds, the extra seconds of a psum over groups of ``group`` devices after
    it)`` on every device at once (default: one group of all): medians over ``rounds`` rounds of the
    three chains in turn (a shared machine's slow spells then reach all three)."""
    devices = jax.device_count()
    group = devices if group is None else group
    x = jax.device_put(
        np.ones((devices * shape.batch, *shape.input_shape[1:]), np.float32),
        NamedSharding(_mesh(group), P(("r", AXIS))),
    )
    w = jnp.full(shape.kernel_shape, 0.01, jnp.float32)
    convs, extras = [], []
    for _ in range(rounds):
        times = {
            (conv, psum): compute._seconds(
                _chain(shape, group, conv, psum),
                (x, w),
                repeats=repeats,
                max_chain=compute.MAX_CONV_CHAIN,
                target_s=target_s,
            )
            for conv, psum in ((True, False), (False, True), (True, True))
        }
        convs.append(times[True, False])
        extras.append(times[True, True] - times[True, False] - times[False, True])
    return float(np.median(convs)), float(np.median(extras))


def _points(quick: bool) -> list[tuple[ConvShape, int | None]]:
    """(shape, group) of each measurement: the shorter convolution with psums over 2 devices and over
    all of them, the longer over all (``quick``: the first two)."""
    points = [(SHAPES[0], 2), (SHAPES[0], None), (SHAPES[1], None)]
    return points[:2] if quick else points


def calibrate_barrier(
    quick: bool = False, repeats: int = 5, progress: Callable[[str], None] | None = None
) -> LinearFit | None:
    """The in-step cost of a collective (:func:`barrier_fit`); None on one device (nothing to wait at)."""
    devices = jax.device_count()
    if devices < 2:
        return None
    points = []
    target = compute.QUICK_TARGET_SECONDS if quick else compute.TARGET_SECONDS
    for shape, group in _points(quick):
        g = devices if group is None else group
        if progress is not None:
            progress(f"a psum over {g} after a convolution, {shape.describe()}")
        conv_s, extra = measure_barrier(shape, group, repeats, rounds=2 if quick else 5, target_s=target)
        points.append((float(latency_steps("all-reduce", g)), conv_s, extra))
    return barrier_fit(points)


def barrier_fit(points: list[tuple[float, float, float]]) -> LinearFit:
    """``extra = sync + steps · s + compute_s / R`` (a :class:`LinearFit` over :data:`FEATURES`) from the
    ``(latency steps, convolution seconds, extra seconds)`` points of :func:`calibrate_barrier`, in its
    order: the first two (one convolution, psums over a small and a large group) give ``s`` and
    ``sync``, a third (a longer convolution) ``1/R``; each at least 0 (a difference of three timings
    can come out negative in noise).
    """
    (k1, _, e1), (k2, _, e2) = points[0], points[1]
    per_step = max(0.0, (e2 - e1) / (k2 - k1)) if k2 != k1 else 0.0
    sync = max(0.0, e1 - per_step * k1)
    share = 0.0
    if len(points) > 2:
        k, conv_s, extra = points[2]
        share = max(0.0, extra - sync - per_step * k) / conv_s

    def rate(c: float) -> float:
        return 1 / c if c > 0 else float("inf")

    return LinearFit(sync, (rate(per_step), rate(share)), FEATURES, tuple(points))


def measurement_count(quick: bool = False) -> int:
    """How many barrier timings a calibration takes."""
    return len(_points(quick))
