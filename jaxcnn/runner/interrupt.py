"""A preemption-safe stop: SIGINT (Ctrl-C) or SIGTERM (how SLURM, Kubernetes and TPU VMs preempt a job)
ends a run at a step boundary with a checkpoint of that step.

While :func:`jaxcnn.runner.train.train` runs, :class:`StopSignals` holds both signals:

- **The first** records the request and says so on stderr (``jaxcnn train: SIGTERM: stopping after
  the step in flight, with a checkpoint (again: stop at once)``). The loop finishes the step in flight,
  fetches its metrics (the NaN and divergence checks run on them as on any fetch), saves a checkpoint of
  that step on every process (unless ``checkpoint.enabled`` is false), and raises :class:`Interrupted`:
  ``jaxcnn train`` prints ``interrupted at step N: checkpoint N saved; continue with resume=true`` and
  exits 130 (SIGINT) or 143 (SIGTERM), the shell's codes for a process ended by those signals. Resuming
  it gives the losses of an uninterrupted run, bit for bit (the checkpoint holds the input pipeline's
  position).
- **A second** stops at once: one line on stderr, then ``os._exit(128 + signal)``, without the step in
  flight, its checkpoint or any clean-up (a save cut short this way is ignored when resuming:
  :meth:`jaxcnn.runner.checkpoint.Checkpointer` removes unfinished saves). Python runs a signal handler
  between bytecodes of the main thread, so "at once" is as soon as a running XLA call returns.

**Several processes agree on the step.** A signal may reach the processes of a job at different steps, or
only one of them (``kill`` of one pid), and a process that stopped alone would leave its peers waiting in
the next step's collectives. So in a multi-process job every process votes after every step through the
JAX coordination service (the key-value store and barriers of ``jax.distributed``, host-side only, no
device work): a process with a request writes ``<prefix>/<position>/<process>`` *before* the barrier of
that position; after the barrier every process reads the directory and stops when some request's position
is at most its own. A key written after a process passed a barrier names a later position, so every
process decides the same step. The cost is one barrier and one read per step (about a millisecond on a
local network); the vote waits for the slowest process's host loop, not for the devices, so it does not
stall asynchronous dispatch. ``jax.distributed``'s own preemption service (``reached_preemption_sync_point``)
hears only SIGTERM and logs a warning per signal; the handlers here replace its SIGTERM handler.

``jaxcnn launch`` forwards SIGINT and SIGTERM to its processes (started in their own sessions, so a
terminal's Ctrl-C reaches only the launcher) and exits with their code.

Handlers are only installed from the main thread (Python allows no other); a ``train()`` called from
another thread runs without them. On leaving, the previous Python handlers are put back; a handler that
was not Python's (``jax.distributed``'s SIGTERM notifier) cannot be, and SIGTERM's default takes its place.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

import jax
from jax._src import distributed  # the coordination service's client (as orbax reaches it)

__all__ = ["SIGNALS", "Interrupted", "StopSignals"]

#: The signals that ask a run to stop.
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PREFIX = "jaxcnn_stop"
#: A vote waits this long for the slowest process (a dead peer ends the job sooner: the heartbeat).
_VOTE_TIMEOUT_MS = 30 * 60 * 1000


class Interrupted(Exception):
    """The run stopped on a signal at a step boundary.

    Attributes:
      signum: the signal (the exit code is ``128 + signum``).
      step: the steps done.
      main: raised on the process that prints.
    """

    def __init__(self, signum: int, step: int, saved: str, main: bool) -> None:
        self.signum, self.step, self.main = signum, step, main
        super().__init__(f"interrupted at step {step}: {saved}; continue with resume=true")

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopSignals:
    """Holds SIGINT and SIGTERM for a run (a context manager); :meth:`stop_at` says when to stop.

    Args:
      main: this process prints the second signal's line.

    Attributes:
      signum: the signal that asked to stop (None: none yet).
      newest: the end of the second signal's line: the newest checkpoint (the run keeps it current).
    """

    def __init__(self, main: bool = True) -> None:
        self.signum: int | None = None
        self.newest = "no checkpoint saved yet"
        self._main = main
        self._previous: dict[int, object] = {}
        self._announced = False
        self._votes = 0

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            self._say(f"{name}: stopping after the step in flight, with a checkpoint (again: stop at once)")
            return
        self._say(f"{name} again: stopped at once; {self.newest}")
        os._exit(128 + signum)

    def _say(self, line: str) -> None:
        """One line on stderr from the printing process (``os.write``: safe in a signal handler)."""
        if self._main:
            os.write(sys.stderr.fileno(), f"jaxcnn train: {line}\n".encode())

    def stop_at(self, position: int) -> bool:
        """Whether to stop at ``position`` (the steps done): on one process, whether a signal came; on
        several, whether any process had one by this position (the same answer on every process).

        Afterwards :attr:`signum` is the signal to exit with (the first requester's, on every process).
        """
        if jax.process_count() == 1:
            return self.signum is not None
        client = distributed.global_state.client
        vote = self._votes  # one train() may vote at a position twice (before its first step and after)
        self._votes += 1
        if self.signum is not None and not self._announced:
            client.key_value_set(f"{_PREFIX}/{position}/{jax.process_index()}", str(self.signum))
            self._announced = True
        client.wait_at_barrier(f"{_PREFIX}_{vote}", _VOTE_TIMEOUT_MS)
        requests = sorted(
            (int(key.rsplit("/", 2)[-2]), int(value)) for key, value in client.key_value_dir_get(_PREFIX)
        )
        if not requests or requests[0][0] > position:
            return False
        self.signum = requests[0][1]
        return True
