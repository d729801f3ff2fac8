"""Run outputs on process 0: ``metrics.jsonl`` and PNG plots of the loss / accuracy curves.

``metrics.jsonl`` has one JSON object per line:

- train records (every ``train.log_every`` steps): ``step``, ``loss`` and ``accuracy`` (means over the
  steps since the previous record), ``step_time_s`` (mean wall time per step over them),
  ``images_per_s``, ``lr``;
- eval records (every ``train.eval_every`` steps and at the end): ``step``, ``eval_accuracy``,
  ``eval_loss``.

A resumed run appends to the file, dropping records after the step it resumes from.
"""

from __future__ import annotations

import json
import os
from typing import Any


class MetricsLog:
    """Appends records to ``<run dir>/metrics.jsonl`` (no-op unless ``enabled``).

    Args:
      path: the JSONL file.
      enabled: write at all (True on process 0 only).
      resume_step: keep existing records up to this step (a resumed run); None starts a new file.
    """

    def __init__(self, path: str, enabled: bool, resume_step: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and os.path.exists(path):
            self.records = [r for r in read_jsonl(path) if r["step"] <= resume_step]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record (floats at full precision, so a resumed run's losses compare exactly)."""
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(records: list[dict[str, Any]], run_dir: str) -> list[str]:
    """Writes ``loss.png`` and ``accuracy.png`` into ``run_dir`` (matplotlib Agg); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    paths = []
    for name, train_key, eval_key in (
        ("loss", "loss", "eval_loss"),
        ("accuracy", "accuracy", "eval_accuracy"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in train], [r[train_key] for r in train], label=f"train {name}")
        if evals:
            ax.plot([r["step"] for r in evals], [r[eval_key] for r in evals], "o-", label=f"test {name}")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        if name == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(run_dir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
