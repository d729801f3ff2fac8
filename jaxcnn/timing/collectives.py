"""Calibrating collectives: each kind timed over group sizes and buffer sizes on every device at once.

The devices (all of ``jax.devices()``) are laid out as a ``(P/g, g)`` mesh ``("r", "g")`` and each
collective runs over ``g`` under ``shard_map``, so the ``P/g`` groups communicate at the same time, as
a layer's groups do in a step. A program applies the collective ``n`` times in a chain (each on the
last one's result) and :func:`jaxcnn.timing.clock.seconds_per_iteration` takes the slope between two
chain lengths, so neither dispatch nor program launch is counted.

Local buffers (float32), with ``m`` elements per device and ``S`` the buffer the cost model counts
(``docs/conventions.md``), and what each device receives:

=====================  ==================================  ==================
kind                   one application                     received bytes
=====================  ==================================  ==================
all-gather             ``(m,) → (g·m,)``, then a slice       ``4m·(g-1)``
                       of another device's block
reduce-scatter         ``(g·m,) → (m,)``, written back       ``4m·(g-1)``
                       into the buffer's first block
all-reduce             ``(m,) → (m,)``                       ``2·4m·(g-1)/g``
all-to-all             ``(m,) → (m,)``                       ``4m·(g-1)/g``
collective-permute     ``(m,) → (m,)``, device i → i+1       ``4m``
=====================  ==================================  ==================

Each kind's points are fitted to ``t = α·latency_steps(kind, g) + received / β``
(:func:`jaxcnn.timing.profile.fit_linear`, no intercept).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.timing.clock import seconds_per_iteration
from jaxcnn.timing.profile import COLLECTIVE_KINDS, CollectiveFit, fit_linear, latency_steps

ITEMSIZE = 4  # float32 buffers


def received_bytes(kind: str, group: int, elements: int) -> float:
    """Bytes each device receives in one ``kind`` over ``group`` devices on an ``elements``-long local
    buffer (the table of the module docstring)."""
    latency_steps(kind, group)  # validates kind and group
    s = ITEMSIZE * elements
    return {
        "all-gather": s * (group - 1),
        "reduce-scatter": s * (group - 1),
        "all-reduce": 2 * s * (group - 1) / group,
        "all-to-all": s * (group - 1) / group,
        "collective-permute": float(s),
    }[kind]


def _step(kind: str, group: int, m: int) -> Callable[[jax.Array], jax.Array]:
    """One application on the local buffer (inside ``shard_map``, axis ``"g"``)."""
    if kind == "all-gather":
        return lambda x: jax.lax.all_gather(x, "g", tiled=True)[m : 2 * m]
    if kind == "reduce-scatter":

        def reduce_scatter(x: jax.Array) -> jax.Array:
            part = jax.lax.psum_scatter(x, "g", tiled=True)
            return jax.lax.dynamic_update_slice(x, part * (1.0 / group), (0,))

        return reduce_scatter
    if kind == "all-reduce":
        # the sum is the same on the group's devices; marked varying again so the loop carry keeps its type
        return lambda x: jax.lax.pcast(jax.lax.psum(x, "g") * (1.0 / group), "g", to="varying")
    if kind == "all-to-all":
        return lambda x: jax.lax.all_to_all(x, "g", 0, 0, tiled=True)
    perm = [(i, (i + 1) % group) for i in range(group)]
    return lambda x: jax.lax.ppermute(x, "g", perm)


def measure_collective(kind: str, group: int, elements: int, *, repeats: int = 5) -> float:
    """Seconds of one ``kind`` over ``group`` devices on ``elements`` float32 per device (all devices,
    ``P/group`` groups at once; the module docstring).

    Raises:
      ValueError: an unknown kind, or ``group`` does not divide the device count, or ``elements`` is
        not a positive multiple of ``group`` (all-to-all splits the buffer into ``group`` blocks).
    """
    devices = jax.devices()
    latency_steps(kind, group)
    if group < 2 or len(devices) % group:
        raise ValueError(f"group {group} must be >= 2 and divide the {len(devices)} devices")
    if elements < group or elements % group:
        raise ValueError(f"elements {elements} must be a positive multiple of the group {group}")
    mesh = Mesh(np.asarray(devices).reshape(-1, group), ("r", "g"))
    local = group * elements if kind == "reduce-scatter" else elements
    step = _step(kind, group, elements)

    def build(n: int) -> Callable[[jax.Array], jax.Array]:
        def body(x: jax.Array) -> jax.Array:
            return jax.lax.fori_loop(0, n, lambda _, v: step(v), x)

        spec = P(("r", "g"))
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))

    x = jax.device_put(jnp.ones((len(devices) * local,), jnp.float32), NamedSharding(mesh, P(("r", "g"))))
    return seconds_per_iteration(build, (x,), repeats=repeats)


def fit_collective(kind: str, points: Sequence[tuple[int, float, float]]) -> CollectiveFit:
    """``t = α·latency_steps(kind, g) + bytes / β`` fitted to ``(group, received bytes, seconds)`` points."""
    fit = fit_linear(
        [(latency_steps(kind, g), b) for g, b, _ in points],
        [t for _, _, t in points],
        ("latency_steps", "bytes"),
        intercept=False,
    )
    alpha = 0.0 if np.isinf(fit.rates[0]) else 1.0 / fit.rates[0]
    return CollectiveFit(alpha, fit.rates[1], tuple((int(g), float(b), float(t)) for g, b, t in points))


def calibrate_collectives(
    groups: Sequence[int],
    elements: Sequence[int],
    *,
    kinds: Sequence[str] = COLLECTIVE_KINDS,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict[str, CollectiveFit]:
    """Every kind timed over every group size and buffer length, and fitted.

    Args:
      groups: group sizes (each divides the device count, >= 2).
      elements: float32 elements per device (multiples of every group).
      kinds: the kinds to measure.
      repeats: runs per median.
      progress: called with a short description before each measurement.
    """
    fits = {}
    for kind in kinds:
        points = []
        for g in groups:
            for m in elements:
                if progress is not None:
                    progress(f"{kind} over {g} devices, {ITEMSIZE * m:,} B per device")
                points.append(
                    (g, received_bytes(kind, g, m), measure_collective(kind, g, m, repeats=repeats))
                )
        fits[kind] = fit_collective(kind, points)
    return fits
