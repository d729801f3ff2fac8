"""Multi-process training with real processes: ``jaxcnn launch`` (2 processes x 4 CPU devices, gloo).

One reference run (``jaxcnn train --cpu-devices 8``, 24 steps) against:
- a 2 x 4 launch of the first 12 steps: the same loss at every logged step and the same parameters;
- that 2 x 4 checkpoint resumed on 1 x 8 up to step 18, and that checkpoint resumed on 2 x 4 up to step
  24: the reference's losses and final parameters again;
- a 2 x 4 launch of all 24 steps with one process killed (SIGKILL) part-way: ``launch`` exits non-zero
  within 60 s; relaunched with ``resume=true`` it finishes with the reference's losses.

Every run is ``configs/default.yaml`` (a small CNN whose four convolutions use spatial, 2d, 3d and data
placements, so halos, panel gathers and reductions all cross the process boundary).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxcnn.runner import launch

# Slow, and on one xdist worker (`--dist loadgroup`) so the module's reference run is made once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "default.yaml")
STEPS = 24
COMMON = [
    "train.log_every=2",
    "train.eval_every=0",
    "checkpoint.every=4",
    "checkpoint.max_to_keep=10",
    "optimizer.schedule=constant",  # the learning rate must not depend on train.steps (12 vs 24 below)
]
RTOL = 1e-5


CACHE = os.path.join(tempfile.gettempdir(), f"jaxcnn-test-compilation-cache-{os.getuid()}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # The runs below compile the same few programs again and again: JAX's persistent cache keeps them.
    env["JAX_COMPILATION_CACHE_DIR"] = CACHE
    return env


def _train(out, name: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jaxcnn", "train", CONFIG, "--cpu-devices", "8"]
    cmd += [f"output_dir={out}", f"name={name}", *COMMON, *overrides]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)


def _launch_cmd(out, name: str, *overrides: str) -> list[str]:
    cmd = [sys.executable, "-m", "jaxcnn", "launch", "--processes", "2", "--cpu-devices", "4", CONFIG]
    return [*cmd, f"output_dir={out}", f"name={name}", *COMMON, *overrides]


def _launch(out, name: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = _launch_cmd(out, name, *overrides)
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)


def _losses(run_dir) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _leaves(run_dir, step: int) -> list[np.ndarray]:
    manager = ocp.CheckpointManager(
        os.path.join(run_dir, "checkpoints"), item_names=("leaves", "meta", "data")
    )
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    as_numpy = [ocp.RestoreArgs(restore_type=np.ndarray)] * len(meta["paths"])  # any topology
    leaves = manager.restore(
        step, args=ocp.args.Composite(leaves=ocp.args.PyTreeRestore(restore_args=as_numpy))
    )["leaves"]
    manager.close()
    return [np.asarray(a) for a in leaves]


def _assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _assert_same_losses(got: dict[int, float], want: dict[int, float], steps) -> None:
    for s in steps:
        assert got[s] == pytest.approx(want[s], rel=RTOL), (s, got[s], want[s])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _assert_ok(_train(out, "ref", f"train.steps={STEPS}"))
    return out / "ref"


def test_two_processes_equal_one_and_resume_across_process_counts(reference, tmp_path):
    want = _losses(reference)
    assert sorted(want) == list(range(2, STEPS + 1, 2))

    # 2 processes x 4 devices, first half of the run.
    proc = _launch(tmp_path, "mp", "train.steps=12")
    _assert_ok(proc)
    assert "[p0] " in proc.stdout and "connected peer ranks" not in proc.stdout
    assert "2 processes" in proc.stdout
    half = _losses(tmp_path / "mp")
    assert sorted(half) == list(range(2, 13, 2))
    _assert_same_losses(half, want, range(2, 13, 2))
    for a, b in zip(_leaves(tmp_path / "mp", 12), _leaves(reference, 12), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # Its checkpoint (written by 2 processes) resumed by 1 process with 8 devices ...
    _assert_ok(_train(tmp_path, "mp", "train.steps=18", "resume=true"))
    # ... and that one's checkpoint (1 process) resumed by 2 processes.
    _assert_ok(_launch(tmp_path, "mp", f"train.steps={STEPS}", "resume=true"))
    _assert_same_losses(_losses(tmp_path / "mp"), want, range(2, STEPS + 1, 2))
    for a, b in zip(_leaves(tmp_path / "mp", STEPS), _leaves(reference, STEPS), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _collect(proc: subprocess.Popen) -> list[str]:
    """The process's output lines, gathered by a thread as they come."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return lines


def _wait_for_step(job: subprocess.Popen, lines: list[str], run_dir, step: int) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if metrics.exists() and any(s >= step for s in _losses(run_dir)):
            return
        assert job.poll() is None, "".join(lines[-40:])
        time.sleep(0.2)
    job.kill()
    pytest.fail(f"the job did not reach step {step} in 240 s:\n" + "".join(lines[-40:]))


def test_killed_process_ends_the_job_and_resume_finishes_it(reference, tmp_path):
    cmd = _launch_cmd(tmp_path, "killed", f"train.steps={STEPS}")
    job = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    lines = _collect(job)
    _wait_for_step(job, lines, tmp_path / "killed", 8)  # a checkpoint at step 4 or 8 exists then
    pids = dict(
        (int(m.group(1)), int(m.group(2)))
        for m in (re.match(r"\[launch\] process (\d) pid (\d+)", line) for line in list(lines))
        if m
    )
    assert sorted(pids) == [0, 1]

    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    code = job.wait(timeout=90)
    elapsed = time.monotonic() - t0
    assert code != 0 and elapsed < 60, (code, elapsed)
    done = max(_losses(tmp_path / "killed"))
    assert done < STEPS  # it really was cut short

    proc = _launch(tmp_path, "killed", f"train.steps={STEPS}", "resume=true")
    _assert_ok(proc)
    _assert_same_losses(_losses(tmp_path / "killed"), _losses(reference), range(2, STEPS + 1, 2))


def test_without_the_launcher_a_dead_peer_ends_the_survivor_within_the_heartbeat_timeout(tmp_path):
    # What a pod or cluster job sees: no launcher watching; the survivor's JAX client notices the
    # missing heartbeats (cluster.heartbeat_timeout_s) and ends the process with a non-zero code.
    port = launch.free_port()
    cmd = launch.train_command(
        CONFIG, [f"output_dir={tmp_path}", "name=bare", *COMMON, "cluster.heartbeat_timeout_s=10"], 4
    )
    procs = [
        subprocess.Popen(
            cmd,
            env=launch.process_env(_env(), i, 2, 4, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    lines = _collect(procs[0])
    _collect(procs[1])
    _wait_for_step(procs[0], lines, tmp_path / "bare", 4)
    procs[1].kill()
    t0 = time.monotonic()
    try:
        code = procs[0].wait(timeout=90)
    finally:
        procs[0].kill()
    elapsed = time.monotonic() - t0
    assert code != 0 and elapsed < 45, (code, elapsed, "".join(lines[-20:]))
