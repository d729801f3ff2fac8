"""Orbax checkpoints of the train state: every host writes its own shards; restore keeps shardings.

The state (a pytree of NNX ``State`` s and optax states) is stored as the flat list of its leaves plus a
JSON item with each leaf's key path, so any pytree round-trips without depending on how orbax names
custom nodes. Restore rebuilds the tree from the current (freshly initialised) state's structure and
checks the key paths, so a checkpoint from a different model or optimizer fails with a clear message.
Saving is synchronous: a step's checkpoint is complete on disk when :meth:`Checkpointer.save` returns.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcnn.runner.state import TrainState, abstract


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class Checkpointer:
    """Saves and restores the train state under ``directory`` (``<run dir>/checkpoints``).

    Args:
      directory: checkpoint directory (created if missing).
      max_to_keep: keep this many most recent steps.
    """

    def __init__(self, directory: str, max_to_keep: int = 3) -> None:
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False),
            item_names=("leaves", "meta"),
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState) -> None:
        """Saves ``state`` as step ``step`` (all hosts call this; each writes its shards)."""
        leaves = jax.tree.leaves(state)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                leaves=ocp.args.StandardSave(leaves),
                meta=ocp.args.JsonSave({"step": step, "paths": _paths(state)}),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """Restores step ``step`` (default: the latest) into ``like``'s structure and shardings.

        Raises:
          FileNotFoundError: no checkpoint.
          ValueError: the checkpoint holds a different state structure (other model or optimizer).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        expected = _paths(like)
        if meta["paths"] != expected:
            diff = sorted(set(meta["paths"]) ^ set(expected))[:5]
            raise ValueError(
                f"checkpoint {self.directory} step {step} does not match this model/optimizer "
                f"(first differing leaves: {diff}); use a new run name or resume=false"
            )
        leaves, treedef = jax.tree.flatten(like)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(leaves=ocp.args.StandardRestore(abstract(leaves)))
        )["leaves"]
        return jax.tree.unflatten(treedef, list(restored))

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
