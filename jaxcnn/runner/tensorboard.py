"""TensorBoard event files under ``<run dir>/tensorboard/`` (process 0): every ``metrics.jsonl`` record
as scalars.

Written with tensorboardX's event writer (``tensorboardX.event_file_writer.EventsWriter``, protobuf only:
no TensorFlow), synchronously: each record is written and flushed before the step loop goes on, so a
write error (a full disk) is a one-line :class:`ConfigError` like ``metrics.jsonl``'s, and a crash loses
nothing logged. (``tensorboardX.SummaryWriter`` writes from a background thread: when a write fails that
thread dies, and after ``max_queue`` more scalars the training loop blocks forever on the full queue.)

The tags, each at the record's ``step`` (see :mod:`jaxcnn.runner.metrics` for the values):

- ``train/loss``, ``train/accuracy``, ``train/learning_rate``, ``train/step_time_s``,
  ``train/images_per_s`` from each train record, and with them the run's communication per step:
  ``comm/bytes_per_step`` (metered from the compiled step: bytes the busiest device receives) and
  ``comm/predicted_bytes_per_step`` (the cost model's figure), where the run has them;
- ``eval/accuracy``, ``eval/loss`` and for segmentation ``eval/dice`` from each eval record.

TensorBoard stores scalars as float32. A new run starts with an empty directory
(:func:`jaxcnn.runner.run_directory.prepare_run_dir` removes an earlier run's). A resumed run keeps the
earlier attempt's event files and adds a new one that starts with a ``SessionLog.START`` event at the
step after the resume step (what ``SummaryWriter(purge_step=...)`` writes): TensorBoard then hides the
earlier files' events from that step on, which the earlier attempt wrote after its last checkpoint and
this run writes again, so each step shows once, as ``metrics.jsonl`` keeps it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.summary import scalar

from jaxcnn.runner.config import Config
from jaxcnn.runner.metrics import unwritable
from jaxcnn.runner.prepare import Prepared

#: ``metrics.jsonl`` key → TensorBoard tag.
TAGS = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "lr": "train/learning_rate",
    "step_time_s": "train/step_time_s",
    "images_per_s": "train/images_per_s",
    "eval_accuracy": "eval/accuracy",
    "eval_loss": "eval/loss",
    "eval_dice": "eval/dice",
}
#: The communication tags written with each train record (constant over a run).
COMM_TAGS = ("comm/bytes_per_step", "comm/predicted_bytes_per_step")


class TensorBoardLog:
    """Writes records as scalars to a new event file in ``log_dir`` (created if missing).

    Args:
      log_dir: the directory, ``<run dir>/tensorboard``.
      resume_step: a resumed run's first step is ``resume_step + 1``: events of the earlier files from
        that step on are hidden (see the module docstring); None for a new run.
      comm_bytes: ``{tag of COMM_TAGS: bytes}`` written with every train record (None values skipped).

    Raises:
      ConfigError: the directory or the file cannot be written (one line naming the path).
    """

    def __init__(
        self, log_dir: str, resume_step: int | None = None, comm_bytes: dict[str, float | None] | None = None
    ) -> None:
        self.log_dir = log_dir
        self.comm = {tag: float(v) for tag, v in (comm_bytes or {}).items() if v is not None}
        try:
            os.makedirs(log_dir, exist_ok=True)
            # events.out.tfevents.<seconds>.<host>.<nanoseconds>: unique, and sorted as written (TensorBoard
            # reads a directory's files in name order; a resume within the second gets its own file)
            prefix = os.path.join(log_dir, "events")
            self._writer: EventsWriter | None = EventsWriter(prefix, f".{time.time_ns()}")
        except OSError as e:
            raise unwritable(log_dir, e) from None
        if resume_step is not None:
            start = SessionLog(status=SessionLog.START)
            self._write(Event(wall_time=time.time(), step=resume_step + 1, session_log=start))

    def write(self, record: dict[str, Any]) -> None:
        """Writes ``record``'s keys of :data:`TAGS` (and, for a train record, the comm tags) at its step."""
        values = {TAGS[k]: float(v) for k, v in record.items() if k in TAGS and v is not None}
        if "loss" in record:
            values |= self.comm
        summaries = [scalar(tag, value).value[0] for tag, value in values.items()]
        event = Event(wall_time=time.time(), step=int(record["step"]))
        event.summary.value.extend(summaries)
        self._write(event)

    def _write(self, event: Event) -> None:
        if self._writer is None:
            raise ValueError(f"TensorBoardLog({self.log_dir!r}) is closed")
        try:
            self._writer.write_event(event)
            self._writer.flush()
        except OSError as e:
            raise unwritable(self.log_dir, e) from None

    def close(self) -> None:
        """Flushes and closes the event file (again: nothing)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError as e:
                raise unwritable(self.log_dir, e) from None


def for_run(cfg: Config, run: Prepared, run_dir: str, start: int) -> TensorBoardLog | None:
    """The run's log in ``<run_dir>/tensorboard`` on process 0 with ``train.tensorboard``, else None.

    Args:
      cfg: the run's config (``resume``: a resumed run continues its event files after step ``start``).
      run: the prepared run (its metered and predicted bytes per step).
      run_dir: the run directory.
      start: the step the run starts from.
    """
    if not cfg.train.tensorboard or jax.process_index() != 0:
        return None
    predicted = None if run.predicted is None else run.predicted.max_bytes
    comm = dict(zip(COMM_TAGS, (run.comm_bytes, predicted), strict=True))
    return TensorBoardLog(os.path.join(run_dir, "tensorboard"), start if cfg.resume else None, comm)
