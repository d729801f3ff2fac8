"""Runs a user must not lose or misread, through ``jaxcnn train`` (issue 19): each stop is one line.

- a run directory that holds checkpoints, rerun without ``resume=true``: exit 2 naming ``resume=true``
  and ``overwrite=true``, nothing on disk changed; ``overwrite=true`` starts over;
- ``resume=true`` with a config that differs where the checkpoints are concerned (width, batch size,
  optimizer): exit 2 naming each key with both values, before any checkpoint is opened (no orbax,
  asyncio or TensorStore output), ``config.yaml`` and the checkpoints untouched;
- a diverging run (SGD at learning rate 1e6, the issue's example: its loss stays finite): exit 1 naming
  the step and the last good checkpoint; resumed, it stops again at the same step (the early loss it is
  measured against is kept in the checkpoint).

The refused runs stop before the model is built, so they take well under a second; the module trains
four short runs (default config, 4 steps, as ``test_checkpoint_faults.py``'s).
"""

from __future__ import annotations

import hashlib
import os

from jaxcnn.runner import metrics
from jaxcnn.runner.checkpoint import Checkpointer
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


def test_a_diverging_run_stops_with_one_line_naming_the_step_and_the_last_good_checkpoint(capfd, tmp_path):
    # The example: SGD at learning rate 1e6 (configs/default.yaml: loss 2.39 at step 1, about
    # 1e10 at step 2, finite throughout). Checked and saved at every step: step 1 is kept, step 2 stops.
    diverging = [
        "optimizer.name=sgd",
        "optimizer.learning_rate=1e6",
        "train.log_every=1",
        "checkpoint.every=1",
    ]
    code, _, err = train(capfd, tmp_path, *diverging)
    assert code == 1
    line = one_line(err)
    checkpoints = str(tmp_path / "default" / "checkpoints")
    assert line.startswith("jaxcnn train: training loss diverged at step 2: "), line
    assert "is over train.divergence_factor=100 times its early value 2.3" in line, line
    assert f"Last good checkpoint: step 1 in {checkpoints}. To go on, resume=true with a lower " in line, line
    assert "train.divergence_factor=0 turns this check off" in line
    assert steps_on_disk(checkpoints) == ["1"]
    records = metrics.read_jsonl(str(tmp_path / "default" / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1]  # nothing of the diverged step is logged
    assert not (tmp_path / "default" / "summary.json").exists()

    # Resumed as it was, it stops at the same step: the early loss is the run's (kept with step 1), not
    # the resumed run's first (diverged) loss.
    reference = Checkpointer(checkpoints).notes(1)["loss_reference"]
    assert 2 < reference < 2.5
    code, _, err = train(capfd, tmp_path, *diverging, "resume=true")
    assert code == 1
    assert one_line(err).startswith("jaxcnn train: training loss diverged at step 2: "), err
    assert steps_on_disk(checkpoints) == ["1"]
