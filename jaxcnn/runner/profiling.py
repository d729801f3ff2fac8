"""``train.profile_steps: [a, b]``: a JAX profiler trace of optimizer steps a..b (1-based, inclusive).

The trace starts (``jax.profiler.start_trace``) just before step a is dispatched and stops after step b,
once its state is ready (``jax.block_until_ready``), so the device work of every step of the window is in
it; the loop's own work in between (fetching metrics, an eval, a checkpoint) is traced too. A run that
ends or fails inside the window stops the trace in the loop's ``finally`` (:meth:`StepProfiler.close`),
keeping what was recorded. A resumed run records the steps of the window it still runs; one that resumes
at or after step b records nothing, and says so.

Where: ``<run dir>/profile/`` for a single-process run. With several processes every process traces its
own devices into ``<run dir>/profile/process_<i>/`` (JAX names the files after the host, and processes
that share a host would otherwise write the same names). Each trace is a directory
``plugins/profile/<timestamp>/`` holding ``<host>.xplane.pb`` (TensorBoard's profile plugin:
``pip install tensorboard-plugin-profile``, then ``tensorboard --logdir <run dir>/profile``) and
``perfetto_trace.json.gz`` (open it at https://ui.perfetto.dev).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

from jaxcnn.runner.metrics import unwritable


def trace_dir(run_dir: str) -> str:
    """This process's profile directory: ``<run_dir>/profile``, or ``.../profile/process_<i>`` with
    several processes."""
    base = os.path.join(run_dir, "profile")
    return base if jax.process_count() == 1 else os.path.join(base, f"process_{jax.process_index()}")


class StepProfiler:
    """Starts and stops the trace around the loop's steps: :meth:`before_step`, :meth:`after_step`,
    :meth:`close` (in a ``finally``).

    Args:
      steps: ``(a, b)``, or None: nothing is traced.
      log_dir: where the trace goes (:func:`trace_dir`).
      start: the steps already done (a resumed run's step).
      say: prints a note (process 0 only, e.g.).
    """

    def __init__(
        self, steps: tuple[int, int] | None, log_dir: str, start: int, say: Callable[[str], Any]
    ) -> None:
        self.steps, self.log_dir, self.say, self.active = steps, log_dir, say, False
        if steps is not None and start >= steps[1]:
            say(
                f"train.profile_steps={list(steps)}: the run resumes after step {steps[1]}; no trace recorded"
            )
            self.steps = None
        elif steps is not None and start >= steps[0]:
            say(
                f"train.profile_steps={list(steps)}: the run resumes at step {start + 1}; tracing steps "
                f"{start + 1}..{steps[1]}"
            )

    def before_step(self, step: int) -> None:
        """Before the loop dispatches step ``step + 1`` (``step`` is its 0-based index)."""
        if self.steps is None or self.active or not self.steps[0] <= step + 1 <= self.steps[1]:
            return
        try:
            os.makedirs(self.log_dir, exist_ok=True)
        except OSError as e:
            raise unwritable(self.log_dir, e) from None
        jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
        self.active = True

    def after_step(self, done: int, state: Any) -> None:
        """After step ``done``: at the window's last step, waits for ``state`` and stops the trace."""
        if self.active and self.steps is not None and done >= self.steps[1]:
            jax.block_until_ready(state)
            self._stop()

    def close(self) -> None:
        """Stops a trace still running (the run ended or failed inside the window); keeps the files. A
        failure to write them is a note, so it never hides the error that ended the run."""
        if self.active:
            try:
                self._stop()
            except Exception as e:  # any profiler failure: a note, not a second error
                self.say(f"train.profile_steps: the trace could not be written: {e}")

    def _stop(self) -> None:
        self.active, self.steps = False, None
        jax.profiler.stop_trace()
