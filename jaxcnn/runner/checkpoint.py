"""Orbax checkpoints of the train state: every host writes its own shards; restore keeps shardings.

Layout: ``<run dir>/checkpoints/<step>/`` with three items: ``leaves`` (the state's arrays, each process
writing the shards it holds), ``meta`` (JSON: step, each leaf's key path and shape, and the run's
``notes``, e.g. its divergence reference) and ``data`` (JSON: the input pipeline's position, so a resumed
run reads exactly the batches an uninterrupted one would).

- **Atomic.** Orbax writes a step into a temporary directory and renames it into place only when every
  process has finished writing; a step directory therefore exists only complete. Temporary directories
  left by a killed or failed save (``<step>.orbax-checkpoint-tmp[-<time>]``) are never listed as steps,
  and opening the directory deletes them before :class:`Checkpointer` returns (process 0, the others
  wait), so the directory holds complete steps only from then on. (Orbax's own
  ``cleanup_tmp_directories`` does this in a background thread whose failure nobody sees.)
- **Any mesh, any process count.** Arrays are restored into the current state's shardings, so a
  checkpoint written by 2 processes x 4 devices restores on 1 x 8 (or onto another mesh) and back.
- **Another model's checkpoint is refused, not skipped.** A state whose leaves' key paths or shapes
  differ from the checkpoint's (another model, width or optimizer) raises ``ValueError`` naming the
  first differing leaves, before any array is read (checkpoints older than the shapes in ``meta`` are
  checked by path only).
- **A damaged newest checkpoint is skipped.** :meth:`Checkpointer.restore` tries steps newest first; a
  step that cannot be read (truncated or garbage files) is reported through ``warn`` and the next older
  one is tried. All processes agree on the step they restore. Once one is restored, the unreadable newer
  steps are renamed to ``<step>.unreadable`` (kept for inspection, no longer steps), so the resumed run
  can save those steps again.
- **Failed saves are one clear error.** A save that fails (read-only directory, disk full) raises
  :class:`CheckpointError` naming the step, the directory and the reason (the OS error, e.g. "No space
  left on device"); earlier checkpoints are kept (orbax deletes old steps only after a new one is
  complete). The tracebacks orbax's writer threads log for such a failure are held back (the error says
  it once); a save that succeeds passes any such log on.
- **Nothing on stderr after the fact.** Orbax closes the event loop of a save or restore as soon as
  one array read or write fails, with the others still in flight in tensorstore; their completions
  would then print ``RuntimeError: Event loop is closed`` tracebacks (and "Task exception was never
  retrieved" at exit) long after the one-line error or warning. Saves and restores therefore run with
  event loops that let those finish before closing (:class:`_DrainingEventLoop`).

- **Read-only readers.** ``Checkpointer(..., read_only=True)`` (``jaxcnn eval`` and ``jaxcnn predict``,
  which may read a run that is still training) changes nothing on disk: it neither deletes unfinished
  saves (one may be in flight) nor renames damaged steps; it can restore one given step, and only some
  of the state's entries (the parameters and statistics: the optimizer state is never read).

Saving is synchronous: a step's checkpoint is complete on disk when :meth:`Checkpointer.save` returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxcnn.runner.config import CheckpointConfig
from jaxcnn.runner.state import TrainState, abstract


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no checkpoint could be restored."""


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _shapes(tree: Any) -> list[list[int]]:
    return [list(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]


_UNFINISHED = re.compile(r"^\d+\.orbax-checkpoint-tmp(-\d+)?$")  # a save's directory until it commits


def _barrier(name: str) -> None:
    """All processes wait here (nothing when there is one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_agree(ok: bool) -> bool:
    """True when ``ok`` holds on every process (one tiny all-gather when there are several)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([ok]))))


def _reason(e: BaseException) -> str:
    """One line: the OS error first when there is one (an ``OSError``, or tensorstore's
    ``[os_error_code='28']``), then the exception, cut to 300 characters."""
    text = " ".join(str(e).split())
    reason = f"{type(e).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")
    code = re.search(r"os_error_code='?(\d+)", text)
    os_error = e.strerror if isinstance(e, OSError) and e.strerror else None
    if os_error is None and code is not None:
        os_error = os.strerror(int(code.group(1)))
    if os_error and os_error not in reason:
        reason = f"{os_error}; {reason}"
    return reason


@contextmanager
def _held_back_tracebacks(failed: list[bool]) -> Iterator[None]:
    """Holds back the absl log records with a traceback (orbax's writer threads log one per failed
    write) while a save runs; passes them on afterwards unless ``failed[0]`` was set."""
    held: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno >= logging.ERROR:
            held.append(record)
            return False
        return True

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
        if not failed[0]:
            for record in held:
                logger.handle(record)


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """An event loop that, when closed, first lets the tasks it ran finish (at most ``_DRAIN_S``).

    Orbax runs each save and restore in a fresh event loop that it closes as soon as the operation
    returns. When one array read (or write) fails, ``asyncio.gather`` raises at once while the
    others are still waiting for tensorstore; closing the loop then leaves them behind, and when
    tensorstore finishes them its callbacks reach the closed loop: ``RuntimeError: Event loop is
    closed`` tracebacks on stderr from tensorstore's threads, and "Task exception was never retrieved"
    at exit, long after the one-line error or warning. Draining first closes the loop with nothing
    pending. The leftover tasks' exceptions are marked retrieved: the first one is what orbax raised.
    """

    _DRAIN_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[asyncio.Future] = []
        self.set_task_factory(self._track)

    def _track(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self._tasks.append(task)
        return task

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = [t for t in self._tasks if not t.done()]
            if pending:
                _, late = self.run_until_complete(asyncio.wait(pending, timeout=self._DRAIN_S))
                for task in late:
                    task.cancel()
                if late:
                    self.run_until_complete(asyncio.wait(late))
            for task in self._tasks:
                if task.done() and not task.cancelled():
                    task.exception()
            self._tasks.clear()
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingEventLoop()


@contextmanager
def _draining_event_loops() -> Iterator[None]:
    """New event loops (orbax's ``asyncio_utils.run_sync`` makes one per operation, in whichever thread)
    are :class:`_DrainingEventLoop` meanwhile. The event loop policy is the one hook that needs no
    patching of orbax (policies are deprecated from Python 3.14: revisit then)."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


class Checkpointer:
    """Saves and restores the train state under ``directory`` (``<run dir>/checkpoints``).

    Args:
      directory: checkpoint directory (created if missing, unless ``read_only``).
      max_to_keep: keep this many most recent steps.
      read_only: only restore; change nothing on disk (see the module docstring).

    Raises:
      CheckpointError: the directory cannot be created or written.
    """

    def __init__(self, directory: str, max_to_keep: int = 3, *, read_only: bool = False) -> None:
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=None if read_only else max_to_keep,
                    enable_async_checkpointing=False,
                    cleanup_tmp_directories=False,  # done here, synchronously: _remove_unfinished
                    create=not read_only,  # (orbax's own read_only mode logs warnings on every use)
                ),
                item_names=("leaves", "meta", "data"),
            )
        except OSError as e:
            raise CheckpointError(f"cannot use checkpoint directory {self.directory}: {_reason(e)}") from None
        if not read_only:
            self._remove_unfinished()

    def _remove_unfinished(self) -> None:
        """Deletes the temporary directories of saves that never finished (process 0; all wait).

        Raises:
          CheckpointError: one cannot be deleted (the error names it and the reason).
        """
        if jax.process_index() == 0:
            for name in sorted(os.listdir(self.directory)):
                if not _UNFINISHED.match(name):
                    continue
                path = os.path.join(self.directory, name)
                for attempt in range(3):  # a writer that outlived its failed save may still add a file
                    try:
                        shutil.rmtree(path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError as e:
                        if attempt == 2:
                            raise CheckpointError(
                                f"cannot delete the unfinished save {path} ({_reason(e)}); remove it and "
                                "rerun"
                            ) from None
                        time.sleep(0.2)
        _barrier("jaxcnn.runner.checkpoint.remove_unfinished")

    @classmethod
    def for_run(cls, run_dir: str, cfg: CheckpointConfig) -> Checkpointer | None:
        """The run's checkpointer (``<run_dir>/checkpoints``), or None when ``checkpoint.enabled`` is off."""
        return cls(os.path.join(run_dir, "checkpoints"), cfg.max_to_keep) if cfg.enabled else None

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: TrainState,
        data_state: dict[str, Any] | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        """Saves ``state`` (and the input pipeline's ``data_state``) as step ``step``.

        All processes call this; each writes its shards. ``notes`` (JSON-serialisable) are kept with the
        step, for :meth:`notes`.

        Raises:
          CheckpointError: the write failed (earlier checkpoints are intact).
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; cannot save step {step}")
        leaves = jax.tree.leaves(state)
        failed = [False]
        try:
            with _held_back_tracebacks(failed), _draining_event_loops():
                try:
                    self.manager.save(
                        step,
                        args=ocp.args.Composite(
                            leaves=ocp.args.StandardSave(leaves),
                            meta=ocp.args.JsonSave(
                                {
                                    "step": step,
                                    "paths": _paths(state),
                                    "shapes": _shapes(state),
                                    "notes": dict(notes or {}),
                                }
                            ),
                            data=ocp.args.JsonSave(data_state or {}),
                        ),
                        force=True,
                    )
                    self.manager.wait_until_finished()
                except Exception:
                    failed[0] = True
                    raise
        except Exception as e:  # OSError, or orbax/tensorstore's wrappers of it (e.g. RESOURCE_EXHAUSTED)
            kept = [s for s in self.all_steps() if s != step]
            raise CheckpointError(
                f"could not write checkpoint step {step} to {self.directory} ({_reason(e)}); earlier "
                f"checkpoints kept: {kept or 'none'}"
            ) from None

    def _meta(self, step: int) -> Any:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def notes(self, step: int) -> dict[str, Any]:
        """The ``notes`` saved with ``step`` ({} for a checkpoint saved without)."""
        meta = self._meta(step)
        notes = meta.get("notes") if isinstance(meta, dict) else None
        return dict(notes) if isinstance(notes, dict) else {}

    def _restore_step(
        self, like: TrainState, step: int, keys: tuple[str, ...] | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        meta = self._meta(step)
        expected = _paths(like)
        advice = "start a new run with name=<new name>, or start over with overwrite=true"
        if not isinstance(meta, dict) or meta.get("paths") != expected:
            got = meta.get("paths", []) if isinstance(meta, dict) else []
            diff = sorted(set(got) ^ set(expected))[:5]
            raise ValueError(
                f"checkpoint {self.directory} step {step} does not match this model/optimizer "
                f"(first differing leaves: {diff}); {advice}"
            )
        saved_shapes = meta.get("shapes")
        if saved_shapes is not None and saved_shapes != _shapes(like):
            diff = [
                f"{path}: saved {tuple(a)}, now {tuple(b)}"
                for path, a, b in zip(expected, saved_shapes, _shapes(like), strict=False)
                if a != b
            ][:3]
            raise ValueError(
                f"checkpoint {self.directory} step {step} does not match this model/optimizer "
                f"(first differing shapes: {'; '.join(diff)}); {advice}"
            )
        flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        if keys is None:
            args = {"leaves": ocp.args.StandardRestore(abstract([leaf for _, leaf in flat]))}
        else:  # the other entries' leaves are placeholders: not read (orbax's PyTree handler skips them)
            targets = [abstract(leaf) if path[0].key in keys else ocp.PLACEHOLDER for path, leaf in flat]
            args = {
                "leaves": ocp.args.PyTreeRestore(
                    item=targets, restore_args=ocp.checkpoint_utils.construct_restore_args(targets)
                )
            }
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            args["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        data_state = dict(restored["data"] or {}) if has_data else {}
        state = jax.tree.unflatten(treedef, list(restored["leaves"]))
        return (state if keys is None else {k: state[k] for k in keys}), data_state

    def restore(
        self,
        like: TrainState,
        warn: Callable[[str], None] | None = None,
        *,
        step: int | None = None,
        keys: tuple[str, ...] | None = None,
    ) -> tuple[TrainState, dict[str, Any], int]:
        """Restores the newest readable step (or ``step``) into ``like``'s structure and shardings.

        Args:
          like: a state of the same model and optimizer (its shardings are the restored ones'; its
            leaves may be ``jax.ShapeDtypeStruct`` s).
          warn: called with one line for each damaged step that is skipped.
          step: restore this step only (no older one is tried).
          keys: restore only these entries of the state (e.g. ``("params", "rest")``); the others are
            not read, and the state returned has only these.

        Returns:
          ``(state, data_state, step)``.

        Raises:
          FileNotFoundError: no checkpoint, or no step ``step``.
          ValueError: the checkpoint holds a different state structure (other model or optimizer).
          CheckpointError: every checkpoint is damaged, or a skipped one cannot be renamed aside.
        """
        wanted, steps = step, self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if wanted is not None:
            if wanted not in steps:
                raise FileNotFoundError(
                    f"no checkpoint step {wanted} in {self.directory} (steps: {', '.join(map(str, steps))})"
                )
            steps = [wanted]
        failures, skipped = [], []
        for step in reversed(steps):
            try:
                with _draining_event_loops():
                    state, data_state = self._restore_step(like, step, keys)
                ok = True
            except ValueError as e:
                if "does not match this model" in str(e):
                    raise
                ok, err = False, e
            except Exception as e:  # damaged files: tensorstore, JSON, orbax metadata errors
                ok, err = False, e
            if _all_agree(ok):
                if not self.read_only:
                    self._move_aside(skipped)
                return state, data_state, step
            reason = _reason(err) if not ok else "damaged on another process"
            failures.append(f"step {step}: {reason}")
            skipped.append(step)
            if warn is not None:
                warn(f"checkpoint step {step} in {self.directory} unreadable ({reason}); trying an older one")
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be read ({'; '.join(failures)}); start over with "
            "overwrite=true (deletes them)"
        )

    def _move_aside(self, steps: list[int]) -> None:
        """Renames the unreadable ``steps`` to ``<step>.unreadable`` (process 0; all processes wait), so
        they stop being steps and the resumed run can save them again.

        Raises:
          CheckpointError: a rename failed.
        """
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                src = os.path.join(self.directory, str(step))
                dst, n = f"{src}.unreadable", 1
                while os.path.exists(dst):
                    n += 1
                    dst = f"{src}.unreadable-{n}"
                try:
                    os.rename(src, dst)
                except OSError as e:
                    raise CheckpointError(
                        f"cannot move unreadable checkpoint step {step} aside ({_reason(e)}); remove {src} "
                        "and rerun"
                    ) from None
        _barrier("jaxcnn.runner.checkpoint.move_aside")
        self.manager.reload()

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
