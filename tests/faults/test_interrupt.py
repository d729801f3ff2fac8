"""SIGINT / SIGTERM stop a run at a step boundary with a checkpoint (:mod:`jaxcnn.runner.interrupt`):
real signals to real ``jaxcnn train`` processes.

- SIGTERM from outside (how a scheduler preempts a job): exit 143, two lines on stderr (the request,
  then ``interrupted at step N: checkpoint N saved; continue with resume=true``), checkpoint N on disk
  and the metrics up to step N; no traceback.
- A second signal stops at once: exit 130 and one more line naming the newest checkpoint, without the
  stop's checkpoint.

That resuming gives the losses of an uninterrupted run, bit for bit, is tested in-process
(``tests/runner/test_train.py``) and across processes (``tests/multiprocess/test_launch.py``, Ctrl-C
to ``jaxcnn launch``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from jaxcnn.devices import with_cpu_device_count
from jaxcnn.runner import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "default.yaml")
REQUEST = "jaxcnn train: {}: stopping after the step in flight, with a checkpoint (again: stop at once)"


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="200")
    env["XLA_FLAGS"] = with_cpu_device_count(env.get("XLA_FLAGS", ""), 8)
    return env


def _overrides(tmp_path) -> list[str]:
    return [f"output_dir={tmp_path}", "name=run", "train.log_every=1", "train.eval_every=0"]


def _train_steps(run_dir) -> list[int]:
    path = os.path.join(run_dir, "metrics.jsonl")
    return [r["step"] for r in metrics.read_jsonl(path) if "loss" in r] if os.path.exists(path) else []


def test_sigterm_finishes_the_step_saves_it_and_says_how_to_continue(tmp_path):
    cmd = [sys.executable, "-m", "jaxcnn", "train", CONFIG, *_overrides(tmp_path)]
    cmd += ["train.steps=100000", "checkpoint.every=1000"]  # the run only ends by the signal
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    deadline = time.monotonic() + 240
    while len(_train_steps(tmp_path / "run")) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0] == REQUEST.format("SIGTERM"), err
    stopped = re.fullmatch(
        r"jaxcnn train: interrupted at step (\d+): checkpoint \1 saved; continue with resume=true", lines[1]
    )
    assert stopped, lines[1]
    step = int(stopped.group(1))
    assert step >= 3 and os.listdir(tmp_path / "run" / "checkpoints") == [str(step)]
    assert _train_steps(tmp_path / "run") == list(range(1, step + 1))  # every step's record, none after


# Two signals from inside the run (right after step 2's checkpoint) so that the second one surely comes
# while the first one's stop is still pending: that stop would save step 3.
SECOND_SIGNAL = """
import os, signal, sys, time
from jaxcnn.runner.config import load_config
from jaxcnn.runner.train import train

def twice(done, state):
    if done == 2:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs now: the two signals are not merged into one
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("the second signal did not stop the run", flush=True)

train(load_config(sys.argv[1], sys.argv[2:]), callback=twice)
"""


def test_a_second_signal_stops_at_once_naming_the_newest_checkpoint(tmp_path):
    cmd = [
        sys.executable,
        "-c",
        SECOND_SIGNAL,
        CONFIG,
        *_overrides(tmp_path),
        "train.steps=50",
        "checkpoint.every=1",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=ROOT)

    assert proc.returncode == 130, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "did not stop" not in proc.stdout and "Traceback" not in proc.stderr
    checkpoints = tmp_path / "run" / "checkpoints"
    assert proc.stderr.strip().splitlines() == [
        REQUEST.format("SIGINT"),
        f"jaxcnn train: SIGINT again: stopped at once; newest checkpoint: step 2 in {checkpoints}",
    ]
    assert sorted(os.listdir(checkpoints)) == ["1", "2"]  # not step 3: the first signal's stop
