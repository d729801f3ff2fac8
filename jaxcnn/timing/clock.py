"""Timing compiled programs: medians of repeated runs, and the time of one operation inside a program.

A step runs its collectives and convolutions inside one compiled program, with no dispatch between
them; timing one call of a jitted function would add the dispatch and the program launch to each. So
:func:`seconds_per_iteration` times programs that apply the operation ``n1`` and ``n2`` times in a
row (each application depending on the last, so none can be skipped or overlapped) and takes the
slope: the fixed costs cancel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def median_seconds(fn: Callable[..., Any], *args: Any, repeats: int = 5, warmup: int = 1) -> float:
    """The median wall time of ``fn(*args)`` (results waited for) over ``repeats`` runs after
    ``warmup`` runs (the first compiles)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def seconds_per_iteration(
    build: Callable[[int], Callable[..., Any]],
    args: Sequence[Any],
    counts: tuple[int, int] = (1, 4),
    repeats: int = 5,
) -> float:
    """Seconds of one application of an operation, without the program's fixed costs.

    Args:
      build: ``build(n)`` returns a jitted function of ``args`` that applies the operation ``n``
        times in a chain.
      args: its arguments.
      counts: the two chain lengths ``n1 < n2``.
      repeats: runs per median.

    Returns:
      ``(t(n2) - t(n1)) / (n2 - n1)``; where noise makes that slope not positive, ``t(n2) / n2`` (an
      upper estimate, never zero).
    """
    n1, n2 = counts
    if not 1 <= n1 < n2:
        raise ValueError(f"counts must be 1 <= n1 < n2, got {counts}")
    t1, t2 = (median_seconds(build(n), *args, repeats=repeats) for n in (n1, n2))
    slope = (t2 - t1) / (n2 - n1)
    return slope if slope > 0 else t2 / n2
