"""Run outputs on process 0: ``metrics.jsonl`` and PNG plots of the loss / accuracy curves.

``metrics.jsonl`` has one JSON object per line:

- train records (every ``train.log_every`` steps): ``step``, ``loss`` and ``accuracy`` (means over the
  steps since the previous record), ``step_time_s`` (mean wall time per step over them),
  ``images_per_s``, ``lr``;
- eval records (every ``train.eval_every`` steps and at the end): ``step``, ``eval_accuracy``,
  ``eval_loss``, and for segmentation ``eval_dice`` (foreground Dice over the held-out voxels; loss and
  accuracy are then per voxel).

A resumed run appends to the file, dropping records after the step it resumes from. Each record also
goes to the log's optional ``sink`` (the run's TensorBoard event file, :mod:`jaxcnn.runner.tensorboard`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from jaxcnn.yaml_io import ConfigError


def unwritable(path: str, e: OSError) -> ConfigError:
    """One line for a run output that cannot be written (disk full, read-only, ...)."""
    return ConfigError(f"cannot write {path}: {e.strerror or e}; free space or choose another output_dir")


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` as indented JSON to ``path`` (a one-line ConfigError if it cannot be written)."""
    try:
        with open(path, "w") as f:
            json.dump(value, f, indent=2)
    except OSError as e:
        raise unwritable(path, e) from None


class Sink(Protocol):
    """Another destination of a :class:`MetricsLog`'s records (e.g. ``tensorboard.TensorBoardLog``)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """Appends records to ``<run dir>/metrics.jsonl`` (no-op unless ``enabled``), and to ``sink``.

    Args:
      path: the JSONL file.
      enabled: write at all (True on process 0 only).
      resume_step: keep existing records up to this step (a resumed run); None starts a new file.
      sink: also gets each record (when ``enabled``); :meth:`close` closes it.
    """

    def __init__(
        self, path: str, enabled: bool, resume_step: int | None = None, sink: Sink | None = None
    ) -> None:
        self.path, self.enabled, self.sink = path, enabled, sink
        self.records: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and os.path.exists(path):
            self.records = [r for r in read_jsonl(path) if r["step"] <= resume_step]
        try:
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)
        except OSError as e:
            raise unwritable(path, e) from None

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record (floats at full precision, so a resumed run's losses compare exactly)."""
        self.records.append(record)
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise unwritable(self.path, e) from None
            if self.sink is not None:
                self.sink.write(record)

    def close(self) -> None:
        """Closes the sink (the JSONL file is closed after each record)."""
        if self.sink is not None:
            self.sink.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_title(run_dir: str) -> str:
    """``"<name>: <model> on mesh n=8 h=1 ... (8 devices)"`` from the run directory's ``config.yaml``
    and ``summary.json`` (what is there; the directory's name otherwise)."""
    import yaml

    def load(name: str, reader: Any) -> dict[str, Any]:
        try:
            with open(os.path.join(run_dir, name)) as f:
                value = reader(f)
        except (OSError, ValueError, yaml.YAMLError):
            return {}
        return value if isinstance(value, dict) else {}

    cfg, summary = load("config.yaml", yaml.safe_load), load("summary.json", json.load)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    mesh = summary.get("mesh") or cfg.get("mesh") or {}
    title = str(cfg.get("name") or os.path.basename(os.path.normpath(run_dir)))
    if model.get("name"):
        title += f": {model['name']}"
    if isinstance(mesh, dict) and mesh:
        title += " on mesh " + " ".join(f"{k}={v}" for k, v in mesh.items())
    if summary.get("devices"):
        title += f" ({summary['devices']} devices)"
    return title


#: Per plot: (file name, train key, eval key, y-axis label with its unit, title metric).
PLOTS = (
    ("loss", "loss", "eval_loss", "cross-entropy loss (nats per image, log scale)", "loss"),
    ("accuracy", "accuracy", "eval_accuracy", "accuracy (fraction of images correct)", "accuracy"),
)


def plot(records: list[dict[str, Any]], run_dir: str, title: str | None = None) -> list[str]:
    """Writes ``loss.png`` and ``accuracy.png`` into ``run_dir`` (matplotlib Agg); returns their paths.

    Each plot's title names the run (``title``; default :func:`run_title`) and the metric.
    """
    # The object-oriented API, without pyplot (no global figure state, no backend switch) and with
    # fixed margins: tight_layout measured every text extent and took half of a plot's time.
    from matplotlib.figure import Figure

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    run = run_title(run_dir) if title is None else title
    paths = []
    for name, train_key, eval_key, ylabel, metric in PLOTS:
        fig = Figure(figsize=(6, 4))
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.87)
        ax = fig.add_subplot()
        ax.plot([r["step"] for r in train], [r[train_key] for r in train], label=f"train {name}")
        if evals:
            ax.plot([r["step"] for r in evals], [r[eval_key] for r in evals], "o-", label=f"test {name}")
        ax.set_title(f"{run}\ntrain and test {metric}", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel, fontsize=9)
        if name == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(run_dir, f"{name}.png")
        try:
            fig.savefig(path, dpi=100)
        except OSError as e:
            raise unwritable(path, e) from None
        paths.append(path)
    return paths
