"""TensorBoard event files and the profiler trace of a run (``train.tensorboard``, ``train.profile_steps``).

One 6-step training run (configs/default.yaml's mixed 8-device model, tests/runner/conftest.py; shared
with tests/runner/test_inference.py) is read back with TensorBoard's own reader (``EventAccumulator``): every
``metrics.jsonl`` value is there at its step. TensorBoard stores scalars as float32, so each value equals
``np.float32`` of the record's exactly. The resume, the segmentation tag and the write errors are
checked on :class:`TensorBoardLog` directly.
"""

from __future__ import annotations

import errno
import glob
import gzip
import json
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import record_writer

from jaxcnn.runner import profiling, tensorboard
from jaxcnn.runner.config import ConfigError, from_dict
from tests.runner.conftest import GROUP
from tests.runner.test_train import _jsonl

# The tests share one run (made once per test run): on one xdist worker, none waits for another.
pytestmark = pytest.mark.xdist_group(GROUP)


def _scalars(log_dir) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` as TensorBoard shows them (orphaned events of a resumed run purged)."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="session")
def run_dir(trained_run):
    """The shared 6-step run (tests/runner/conftest.py): train records at steps 1..6, evals at 4 and 6
    (the end), a trace of steps 2..3."""
    return trained_run[0]


def test_every_metrics_record_is_a_tensorboard_scalar_at_its_step(run_dir):
    records = _jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    scalars = _scalars(run_dir / "tensorboard")
    expected: dict[str, dict[int, float]] = {}
    comm = {
        "comm/bytes_per_step": summary["comm_bytes_per_step_max_device"],
        "comm/predicted_bytes_per_step": summary["predicted_comm_bytes_per_step_max_device"],
    }
    assert all(v > 0 for v in comm.values())  # both figures exist for this model
    for r in records:
        for key, tag in tensorboard.TAGS.items():
            if key in r:
                expected.setdefault(tag, {})[r["step"]] = float(np.float32(r[key]))
        if "loss" in r:
            for tag, v in comm.items():
                expected.setdefault(tag, {})[r["step"]] = float(np.float32(v))
    assert scalars == expected
    # the tags the issue lists, at the steps the config asks for (classification: no Dice)
    train_tags = ["train/loss", "train/accuracy", "train/learning_rate", "train/step_time_s"]
    train_tags += ["train/images_per_s", *tensorboard.COMM_TAGS]
    assert {tag: sorted(scalars[tag]) for tag in train_tags} == {
        tag: [1, 2, 3, 4, 5, 6] for tag in train_tags
    }
    assert {tag: sorted(scalars[tag]) for tag in ("eval/accuracy", "eval/loss")} == {
        "eval/accuracy": [4, 6],
        "eval/loss": [4, 6],
    }
    assert "eval/dice" not in scalars


def test_profile_steps_record_a_trace_of_the_train_step(run_dir):
    (trace,) = glob.glob(str(run_dir / "profile" / "plugins" / "profile" / "*"))  # one window, one trace
    sizes = {os.path.basename(p): os.path.getsize(p) for p in glob.glob(os.path.join(trace, "*"))}
    xplanes = [name for name in sizes if name.endswith(".xplane.pb")]
    assert len(xplanes) == 1 and sizes[xplanes[0]] > 0 and sizes["perfetto_trace.json.gz"] > 0
    with gzip.open(os.path.join(trace, "perfetto_trace.json.gz"), "rt") as f:
        names = [e.get("name", "") for e in json.load(f)["traceEvents"]]
    # Only the compiled train step (jaxcnn.runner.step.train_step) ran in the window, twice (steps 2 and
    # 3): two dispatches from Python, and on each of the 8 devices ("[d] ..." on XLA's CPU threads).
    runs = [n for n in names if "Execute (jit_" in n]
    assert all(n.endswith("Execute (jit_train_step)") for n in runs), sorted(set(runs))
    assert len([n for n in runs if not n.startswith("[")]) == 2
    assert sorted(n.split("]")[0] + "]" for n in runs if n.startswith("[")) == sorted(
        f"[{d}]" for d in range(8) for _ in range(2)
    )


@pytest.mark.parametrize("window", [[0, 2], [3, 2], [2, 5], [2], [1, 2, 3]])
def test_bad_profile_steps_is_a_config_error_naming_the_value(window):
    with pytest.raises(ConfigError) as e:
        from_dict({"train": {"steps": 4, "profile_steps": window}})
    assert str(e.value) == (
        f"train.profile_steps: must be [a, b] with 1 <= a <= b <= train.steps (4), or null; got {window}"
    )


def test_a_resumed_log_hides_the_earlier_attempts_steps_after_the_resume_step(tmp_path):
    first = tensorboard.TensorBoardLog(str(tmp_path))
    for step in range(1, 6):  # the first attempt got to step 5; its last checkpoint was step 3
        first.write({"step": step, "loss": 1.0 * step})
    first.close()
    second = tensorboard.TensorBoardLog(str(tmp_path), resume_step=3, comm_bytes={"comm/bytes_per_step": 64})
    for step in range(4, 7):
        second.write({"step": step, "loss": 10.0 * step})
    second.write({"step": 6, "eval_accuracy": 0.5, "eval_loss": 0.25, "eval_dice": 0.75})
    second.close()
    second.close()  # again: nothing
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2  # the earlier file stays
    assert _scalars(tmp_path) == {
        "train/loss": {1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0, 5: 50.0, 6: 60.0},
        "comm/bytes_per_step": {4: 64.0, 5: 64.0, 6: 64.0},
        "eval/accuracy": {6: 0.5},
        "eval/loss": {6: 0.25},
        "eval/dice": {6: 0.75},
    }


def test_an_unwritable_tensorboard_directory_or_a_full_disk_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError) as e:
        tensorboard.TensorBoardLog(str(tmp_path / "afile" / "tensorboard"))
    assert str(e.value) == (
        f"cannot write {tmp_path}/afile/tensorboard: Not a directory; free space or choose another output_dir"
    )
    # A write that fails is an error in the loop, at once (SummaryWriter's thread would die silently,
    # and its queue would block the loop once full).
    log = tensorboard.TensorBoardLog(str(tmp_path / "tb"))

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    with pytest.raises(ConfigError) as e:
        log.write({"step": 1, "loss": 1.0})
    assert str(e.value) == (
        f"cannot write {tmp_path}/tb: No space left on device; free space or choose another output_dir"
    )


def test_a_run_resumed_after_the_window_records_no_trace(tmp_path):
    notes: list[str] = []
    profiler = profiling.StepProfiler((2, 3), str(tmp_path / "profile"), 3, notes.append)
    profiler.before_step(3)
    profiler.after_step(4, None)
    profiler.close()
    assert not os.path.exists(tmp_path / "profile")
    assert notes == ["train.profile_steps=[2, 3]: the run resumes after step 3; no trace recorded"]


def test_a_run_that_ends_inside_the_window_keeps_its_trace(tmp_path):
    notes: list[str] = []
    profiler = profiling.StepProfiler((2, 3), str(tmp_path), 1, notes.append)  # resumed at step 1
    profiler.before_step(1)  # step 2: the window opens
    x = jax.numpy.ones(4) + 1  # step 2's work
    profiler.after_step(2, x)
    assert profiler.active and notes == []  # not the window's last step: still tracing
    profiler.close()  # step 3 failed: the loop's finally stops the trace
    profiler.close()  # again: nothing
    (trace,) = glob.glob(str(tmp_path / "plugins" / "profile" / "*"))
    xplanes = [n for n in os.listdir(trace) if n.endswith(".xplane.pb")]
    assert len(xplanes) == 1 and os.path.getsize(os.path.join(trace, xplanes[0])) > 0
    late = profiling.StepProfiler((2, 3), str(tmp_path / "late"), 2, notes.append)
    assert late.steps == (2, 3)
    assert notes == ["train.profile_steps=[2, 3]: the run resumes at step 3; tracing steps 3..3"]
