"""Runs a user must not lose or misread, through ``jaxcnn train`` (issue 19): each stop is one line.

- a run directory that holds checkpoints, rerun without ``resume=true``: exit 2 naming ``resume=true``
  and ``overwrite=true``, nothing on disk changed; ``overwrite=true`` starts over;
- ``resume=true`` with a config that differs where the checkpoints are concerned (width, batch size,
  optimizer): exit 2 naming each key with both values, before any checkpoint is opened (no orbax,
  asyncio or TensorStore output), ``config.yaml`` and the checkpoints untouched.

The refused runs stop before the model is built, so they take well under a second; the module trains
two short runs (default config, 4 steps, as ``test_checkpoint_faults.py``'s).
"""

from __future__ import annotations

import hashlib
import os

from jaxcnn.runner import metrics
from tests.faults.test_checkpoint_faults import one_line, steps_on_disk, train, wide_console  # noqa: F401


def snapshot(root) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (modification time in ns, SHA-256 of its content)."""
    files = {}
    for where, _, names in os.walk(root):
        for name in names:
            path = os.path.join(where, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = (
                    os.stat(path).st_mtime_ns,
                    hashlib.sha256(f.read()).hexdigest(),
                )
    return files


def test_rerun_refuses_to_delete_a_run_and_a_mismatched_resume_changes_nothing(capfd, tmp_path):
    code, _, err = train(capfd, tmp_path)
    assert code == 0, err
    run_dir = tmp_path / "default"
    checkpoints = str(run_dir / "checkpoints")
    assert steps_on_disk(checkpoints) == ["2", "4"]
    before = snapshot(run_dir)
    assert "config.yaml" in before and "metrics.jsonl" in before and "summary.json" in before

    # The same run again, without resume: refused; nothing deleted.
    code, out, err = train(capfd, tmp_path)
    assert code == 2
    assert one_line(err) == (
        f"jaxcnn train: config error: {run_dir} already holds a run with checkpoints (steps 2, 4); "
        "resume=true continues it, overwrite=true deletes its checkpoints and metrics and starts over, "
        "name=<new name> starts a new run beside it"
    )
    assert out == ""
    assert snapshot(run_dir) == before

    # Resume with another width, batch size and optimizer: each key with both values, nothing touched.
    changed = ["model.options={width: 2.0}", "train.batch_size=128", "optimizer.name=sgd", "train.steps=6"]
    code, out, err = train(capfd, tmp_path, "resume=true", *changed)
    assert code == 2
    line = one_line(err)
    assert line.startswith(
        f"jaxcnn train: config error: resume=true: this config differs from the run's {run_dir}/config.yaml "
        "in what its checkpoints hold or mean: "
    ), line
    for difference in (
        "model.options.width=2.0 (saved: 1.0)",
        "train.batch_size=128 (saved: 64)",
        "optimizer.name=sgd (saved: adam)",
    ):
        assert difference in line, line
    assert "train.steps" not in line  # a resumed run may train further
    assert "overwrite=true" in line and "name=<new name>" in line
    assert out == ""  # no warnings: no checkpoint was opened
    assert snapshot(run_dir) == before

    # overwrite=true starts over: the old checkpoints and metrics are gone, config.yaml is the new one.
    code, out, err = train(capfd, tmp_path, "overwrite=true", "train.steps=2")
    assert code == 0, err
    assert "steps 0→2" in out
    assert steps_on_disk(checkpoints) == ["2"]
    assert [r["step"] for r in metrics.read_jsonl(str(run_dir / "metrics.jsonl"))] == [2, 2]  # train, eval
    assert "train:\n  steps: 2\n" in (run_dir / "config.yaml").read_text()
