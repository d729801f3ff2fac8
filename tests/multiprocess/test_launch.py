"""Multi-process training with real processes: ``jaxcnn launch`` (2 processes x 4 CPU devices, gloo).

Two runs of 6 steps, made once per test run (session fixtures), with a checkpoint at every step:
``reference`` (``jaxcnn train --cpu-devices 8``, one process) and ``two_process`` (``jaxcnn launch``,
2 x 4). They reduce in different orders, and that alone sets their trajectories apart: over a dozen steps
a discrete event (an argmax or a ReLU that flips on a rounding difference) can move one seed's state by
4e-2 while another's stays within 1e-6 (``experiments/reduction_spread.py``). So across process counts
every comparison here is one step from the same state, with a tolerance set from the measured spread,
and whatever runs on one process count is compared bit for bit:

- the first step: ``two_process``'s step 1 (loss and state) against ``reference``'s;
- resume across process counts: ``reference``'s step-5 checkpoint (written by 1 process) resumed on
  2 x 4 for one step, against ``reference``'s step 6; ``two_process``'s step-5 checkpoint (written by
  2 processes) resumed on 1 x 8 for one step, against ``two_process``'s step 6;
- a 2 x 4 launch stopped by Ctrl-C (SIGINT to the launcher) part-way: both processes save the step they
  agreed on and the job exits 130 with one line; relaunched with ``resume=true`` it finishes with
  ``two_process``'s losses and final state, bitwise;
- (make test-sweep) one process of a launch killed (SIGKILL) part-way: ``launch`` exits non-zero within
  60 s.

Every run is ``configs/default.yaml`` (a small CNN whose four convolutions use spatial, 2d, 3d and data
placements, so halos, panel gathers and reductions all cross the process boundary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxcnn.runner import launch
from tests.utils import assert_trees_relatively_close, once_per_test_run

# Slow; on one xdist worker (`--dist loadgroup`, tests/conftest.py): the runs they share
# (tests.utils.once_per_test_run) are made by the worker that uses them, which waits for no other.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "default.yaml")
STEPS = 6  # step 5's checkpoint resumed for one step on the other process count
COMMON = [
    "train.log_every=1",
    "train.eval_every=0",
    "checkpoint.every=1",
    f"checkpoint.max_to_keep={STEPS}",
    "optimizer.schedule=constant",  # the learning rate must not depend on train.steps
    # SGD with momentum, not the config's Adam: Adam's first update is lr·g/(|g| + eps) ≈ lr·sign(g),
    # so an element whose gradient is rounding noise (one that cancels to ~0) moves by ±lr depending
    # on the reduction order; momentum moves it by lr·g, as close as the gradients are.
    "optimizer.name=momentum",
    "optimizer.learning_rate=0.1",
]
#: Runs whose checkpoints only the stop and the end need: each save costs the processes a few barriers.
SAVE_AT_STOP = ("checkpoint.every=0",)
#: Relative-norm tolerance, per tensor, for one step from the same state on another process count
#: (2 x 4 over gloo vs 1 x 8): the step's loss, and each parameter, BatchNorm statistic and momentum
#: trace after it. About 10x the spread measured with ``python experiments/reduction_spread.py launch``
#: (seeds 0-4, both directions): the loss ≤ 1.3e-7, the state ≤ 6.8e-7 after step 1 (seed 3, conv2's
#: BatchNorm bias), ≤ 2.5e-7 after a resumed step 6 and ≤ 3.4e-7 after a resumed step 13 (this module
#: resumes step 6). A lost or doubled cross-process reduction errs by order 1.
RTOL = 1e-5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # The runs below compile the same few programs again and again: the test run's persistent
    # compilation cache, inherited (tests/conftest.py), keeps them.
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


def _leaves(run_dir, step: int) -> dict[str, np.ndarray]:
    manager = ocp.CheckpointManager(
        os.path.join(run_dir, "checkpoints"), item_names=("leaves", "meta", "data")
    )
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    as_numpy = [ocp.RestoreArgs(restore_type=np.ndarray)] * len(meta["paths"])  # any topology
    leaves = manager.restore(
        step, args=ocp.args.Composite(leaves=ocp.args.PyTreeRestore(restore_args=as_numpy))
    )["leaves"]
    manager.close()
    return {str(path): np.asarray(a) for path, a in zip(meta["paths"], leaves, strict=True)}


def _assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _one_step_apart(got_dir, want_dir, step: int) -> None:
    """The loss of ``step`` and the state after it within RTOL: runs that reduce in other orders, from
    the same state at ``step - 1``."""
    got = {"loss": np.asarray(_losses(got_dir)[step]), "state": _leaves(got_dir, step)}
    want = {"loss": np.asarray(_losses(want_dir)[step]), "state": _leaves(want_dir, step)}
    assert_trees_relatively_close(got, want, RTOL, f"step {step}: {got_dir} vs {want_dir}")


def _resumed_for_one_step(run_dir, at: int, into, runner, *overrides: str):
    """A copy of ``run_dir`` as it was after step ``at`` (its checkpoints up to ``at``), resumed by
    ``runner`` (``_train`` or ``_launch``, with ``overrides``) for one step; returns the copy's run
    directory."""
    copy = into / "resumed"
    shutil.copytree(run_dir, copy)
    for name in os.listdir(copy / "checkpoints"):
        if int(name.split(".")[0]) > at:
            shutil.rmtree(copy / "checkpoints" / name)
    _assert_ok(runner(into, "resumed", f"train.steps={at + 1}", "resume=true", *overrides))
    assert max(_losses(copy)) == at + 1
    return copy


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    def make(out):
        _assert_ok(_train(out, "ref", f"train.steps={STEPS}"))

    return once_per_test_run(tmp_path_factory, "reference", make) / "ref"


def _assert_no_stray_lines(lines: list[str]) -> None:
    """Every line is a prefixed line of words: no gloo chatter, no piece of it (``[p0] 3``), no blank."""
    for line in lines:
        prefix, _, text = line.partition("] ")
        assert prefix in ("[launch", "[p0", "[p1") and re.search("[A-Za-z\u2500-\u257f]", text), repr(line)
        assert "Gloo" not in text and "peer ranks" not in text, repr(line)


@pytest.fixture(scope="session")
def two_process(tmp_path_factory):
    def make(out):
        proc = _launch(out, "mp", f"train.steps={STEPS}")
        _assert_ok(proc)
        assert "[p0] " in proc.stdout and "2 processes" in proc.stdout
        _assert_no_stray_lines(proc.stdout.splitlines())

    return once_per_test_run(tmp_path_factory, "two_process", make) / "mp"


def test_two_processes_equal_one_and_resume_across_process_counts(reference, two_process, tmp_path):
    for run in (reference, two_process):
        assert sorted(_losses(run)) == list(range(1, STEPS + 1))
    # The same initial state, one step on each process count.
    _one_step_apart(two_process, reference, 1)
    # A checkpoint written by 1 process, restored on 2 for one step ...
    (tmp_path / "a").mkdir()
    _one_step_apart(_resumed_for_one_step(reference, STEPS - 1, tmp_path / "a", _launch), reference, STEPS)
    # ... and one written by 2 processes, restored on 1.
    (tmp_path / "b").mkdir()
    _one_step_apart(_resumed_for_one_step(two_process, STEPS - 1, tmp_path / "b", _train), two_process, STEPS)


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


def _pids(lines: list[str]) -> dict[int, int]:
    found = (re.match(r"\[launch\] process (\d) pid (\d+)", line) for line in list(lines))
    return {int(m.group(1)): int(m.group(2)) for m in found if m}


def test_ctrl_c_saves_every_process_and_resume_finishes_both_bit_for_bit(two_process, tmp_path):
    run_dir = tmp_path / "cut"
    # Ctrl-C to the launcher: forwarded; the processes agree on a step, save it and exit 130.
    job = subprocess.Popen(
        _launch_cmd(tmp_path, "cut", f"train.steps={STEPS}", *SAVE_AT_STOP),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines = _collect(job)
    _wait_for_step(job, lines, run_dir, 2)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=90) == 130, "".join(lines[-40:])
    time.sleep(0.5)  # the output threads' last lines
    stopped = [
        re.search(r"interrupted at step (\d+): checkpoint \1 saved; continue with resume=true", line)
        for line in lines
    ]
    assert sum(m is not None for m in stopped) == 1, "".join(lines[-40:])
    at = int(next(m for m in stopped if m).group(1))
    assert 2 <= at < STEPS - 1 and max(_losses(run_dir)) == at
    assert max(int(n) for n in os.listdir(run_dir / "checkpoints") if n.isdigit()) == at
    _assert_no_stray_lines(lines)
    for line in lines:  # the request and the stop (process 0), nothing stray (no traceback, no SIGTERM)
        assert line.startswith(("[launch] ", "[p0] ")), line
        assert not re.search(r"Traceback|SIGTERM|exited with", line), line

    proc = _launch(tmp_path, "cut", f"train.steps={STEPS}", "resume=true", *SAVE_AT_STOP)
    _assert_ok(proc)
    # The same process count as the uninterrupted run, so the same reduction order: bit for bit.
    assert _losses(run_dir) == _losses(two_process)
    got, want = _leaves(run_dir, STEPS), _leaves(two_process, STEPS)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)


# make test-sweep: make test covers its parts (tests/runner/test_launch.py: the launcher stops the others
# when one fails, SIGKILL after the grace period to one that ignores SIGTERM; the test below: a survivor
# whose peer died leaves its collective within the heartbeat timeout).
@pytest.mark.sweep
def test_a_killed_process_ends_the_launched_job_within_60_s(tmp_path):
    # --grace 1: the survivor, blocked in a collective with its dead peer, ignores SIGTERM; the launcher
    # kills it 1 s after instead of the default 10 (the stop path is the same).
    run_dir = tmp_path / "killed"
    cmd = _launch_cmd(tmp_path, "killed", f"train.steps={STEPS}", *SAVE_AT_STOP)
    cmd[cmd.index("launch") + 1 : cmd.index("launch") + 1] = ["--grace", "1"]
    job = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    lines = _collect(job)
    _wait_for_step(job, lines, run_dir, 2)
    pids = _pids(lines)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    code = job.wait(timeout=90)
    elapsed = time.monotonic() - t0
    assert code != 0 and elapsed < 60, (code, elapsed)
    assert max(_losses(run_dir)) < STEPS  # it really was cut short


def test_without_the_launcher_a_dead_peer_ends_the_survivor_within_the_heartbeat_timeout(tmp_path):
    # What a pod or cluster job sees: no launcher watching; the survivor's JAX client notices the
    # missing heartbeats (cluster.heartbeat_timeout_s) and ends the process with a non-zero code.
    port = launch.free_port()
    cmd = launch.train_command(
        CONFIG,
        [f"output_dir={tmp_path}", "name=bare", *COMMON, *SAVE_AT_STOP, "cluster.heartbeat_timeout_s=5"],
        4,
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
    _wait_for_step(procs[0], lines, tmp_path / "bare", 2)
    procs[1].kill()
    t0 = time.monotonic()
    try:
        code = procs[0].wait(timeout=90)
    finally:
        procs[0].kill()
    elapsed = time.monotonic() - t0
    assert code != 0 and elapsed < 45, (code, elapsed, "".join(lines[-20:]))
