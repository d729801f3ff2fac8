"""Orbax checkpoints of the train state: every host writes its own shards; restore keeps shardings.

Layout: ``<run dir>/checkpoints/<step>/`` with three items: ``leaves`` (the state's arrays, each process
writing the shards it holds), ``meta`` (JSON: step and each leaf's key path) and ``data`` (JSON: the input
pipeline's position, so a resumed run reads exactly the batches an uninterrupted one would).

- **Atomic.** Orbax writes a step into a temporary directory and renames it into place only when every
  process has finished writing; a step directory therefore exists only complete. Temporary directories
  left by a killed save (``<step>.orbax-checkpoint-tmp-<time>``) are never listed as steps, and orbax
  deletes them when the next run opens the directory (``cleanup_tmp_directories``).
- **Any mesh, any process count.** Arrays are restored into the current state's shardings, so a
  checkpoint written by 2 processes x 4 devices restores on 1 x 8 (or onto another mesh) and back.
- **A damaged newest checkpoint is skipped.** :meth:`Checkpointer.restore` tries steps newest first; a
  step that cannot be read (truncated or garbage files) is reported through ``warn`` and the next older
  one is tried. All processes agree on the step they restore.
- **Failed saves are one clear error.** A save that fails (read-only directory, disk full) raises
  :class:`CheckpointError` naming the step, the directory and the reason; earlier checkpoints are kept
  (orbax deletes old steps only after a new one is complete).

Saving is synchronous: a step's checkpoint is complete on disk when :meth:`Checkpointer.save` returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxcnn.runner.state import TrainState, abstract


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no checkpoint could be restored."""


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _all_agree(ok: bool) -> bool:
    """True when ``ok`` holds on every process (one tiny all-gather when there are several)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([ok]))))


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


class Checkpointer:
    """Saves and restores the train state under ``directory`` (``<run dir>/checkpoints``).

    Args:
      directory: checkpoint directory (created if missing).
      max_to_keep: keep this many most recent steps.

    Raises:
      CheckpointError: the directory cannot be created or written.
    """

    def __init__(self, directory: str, max_to_keep: int = 3) -> None:
        self.directory = os.path.abspath(directory)
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    enable_async_checkpointing=False,
                    cleanup_tmp_directories=True,
                ),
                item_names=("leaves", "meta", "data"),
            )
        except OSError as e:
            raise CheckpointError(f"cannot use checkpoint directory {self.directory}: {_reason(e)}") from None

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None = None) -> None:
        """Saves ``state`` (and the input pipeline's ``data_state``) as step ``step``.

        All processes call this; each writes its shards.

        Raises:
          CheckpointError: the write failed (earlier checkpoints are intact).
        """
        leaves = jax.tree.leaves(state)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    leaves=ocp.args.StandardSave(leaves),
                    meta=ocp.args.JsonSave({"step": step, "paths": _paths(state)}),
                    data=ocp.args.JsonSave(data_state or {}),
                ),
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as e:  # OSError, or orbax/tensorstore's wrappers of it (e.g. RESOURCE_EXHAUSTED)
            kept = [s for s in self.all_steps() if s != step]
            raise CheckpointError(
                f"could not write checkpoint step {step} to {self.directory} ({_reason(e)}); earlier "
                f"checkpoints kept: {kept or 'none'}"
            ) from None

    def _restore_step(self, like: TrainState, step: int) -> tuple[TrainState, dict[str, Any]]:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        expected = _paths(like)
        if not isinstance(meta, dict) or meta.get("paths") != expected:
            got = meta.get("paths", []) if isinstance(meta, dict) else []
            diff = sorted(set(got) ^ set(expected))[:5]
            raise ValueError(
                f"checkpoint {self.directory} step {step} does not match this model/optimizer "
                f"(first differing leaves: {diff}); use a new run name or resume=false"
            )
        leaves, treedef = jax.tree.flatten(like)
        args = {"leaves": ocp.args.StandardRestore(abstract(leaves))}
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            args["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        data_state = dict(restored["data"] or {}) if has_data else {}
        return jax.tree.unflatten(treedef, list(restored["leaves"])), data_state

    def restore(
        self, like: TrainState, warn: Callable[[str], None] | None = None
    ) -> tuple[TrainState, dict[str, Any], int]:
        """Restores the newest readable step into ``like``'s structure and shardings.

        Args:
          like: a state of the same model and optimizer (its shardings are the restored ones').
          warn: called with one line for each damaged step that is skipped.

        Returns:
          ``(state, data_state, step)``.

        Raises:
          FileNotFoundError: no checkpoint.
          ValueError: the checkpoint holds a different state structure (other model or optimizer).
          CheckpointError: every checkpoint is damaged.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        for step in reversed(steps):
            try:
                state, data_state = self._restore_step(like, step)
                ok = True
            except ValueError as e:
                if "does not match this model" in str(e):
                    raise
                ok, err = False, e
            except Exception as e:  # damaged files: tensorstore, JSON, orbax metadata errors
                ok, err = False, e
            if _all_agree(ok):
                return state, data_state, step
            reason = _reason(err) if not ok else "damaged on another process"
            failures.append(f"step {step}: {reason}")
            if warn is not None:
                warn(f"checkpoint step {step} in {self.directory} unreadable ({reason}); trying an older one")
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be read ({'; '.join(failures)}); rerun with resume=false "
            "to start over"
        )

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
