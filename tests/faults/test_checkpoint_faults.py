"""Checkpoint and run-directory faults through ``jaxcnn train`` (issue 10): each is one line on stderr
(``jaxcnn train: ...``, exit 2, no traceback) and earlier checkpoints survive.

- the newest checkpoint damaged, plus orbax temporary directories of unfinished saves: ``resume=true``
  warns, restores the newest complete step and trains on (saving the damaged step's number again);
- ``output_dir`` under a regular file, or on a read-only file system; a file system that fills up at a
  checkpoint (or while metrics are written);
- a save killed half-way: for real (``kill -9`` while orbax's temporary directory exists, checkpoints
  every step) and simulated deterministically (copies of a step under orbax's temporary names with
  truncated files); ``resume=true`` ignores them.

The read-only and disk-full cases mount a small tmpfs (root and ``mount`` needed; chmod does not stop
root) and skip with the reason where mounting is not permitted.

Runs go through the CLI's ``main`` in this process (``capfd``: everything written to fds 1 and 2,
orbax's and absl's logs included).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jaxcnn.__main__ import main as jaxcnn_main
from jaxcnn.runner.checkpoint import Checkpointer
from jaxcnn.runner.metrics import MetricsLog
from jaxcnn.runner.typed import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["train.steps=4", "train.log_every=2", "checkpoint.every=2", "train.eval_every=0"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich prints lines as wide as COLUMNS: no wrapping inside the messages the tests look for."""
    monkeypatch.setenv("COLUMNS", "4000")


def train(capfd, output_dir, *overrides: str) -> tuple[int, str, str]:
    """``jaxcnn train configs/default.yaml`` (4 steps, checkpoints at 2 and 4) -> (exit code, out, err)."""
    args = ["train", os.path.join(ROOT, "configs/default.yaml"), *SMALL, f"output_dir={output_dir}"]
    code = jaxcnn_main([*args, *overrides])
    out, err = capfd.readouterr()
    return code, " ".join(out.split()), err


def one_line(err: str) -> str:
    """The single ``jaxcnn train: ...`` line that is all of ``err``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxcnn train: "), err
    assert "Traceback" not in err
    return lines[0]


def steps_on_disk(checkpoints: str) -> list[str]:
    return sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []


def data_files(step_dir: str) -> list[str]:
    files = [f for f in glob.glob(os.path.join(step_dir, "leaves", "**", "d", "*"), recursive=True)]
    assert files, f"no array data files under {step_dir}"
    return files


def truncate(step_dir: str) -> None:
    for f in data_files(step_dir):
        open(f, "wb").close()


# ------------------------------------------------------------------------------------------ tmpfs


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path):
    """``mount(size, read_only=False, before=None)``: a tmpfs of ``size`` at a fresh directory; ``before``
    is called with its path before a read-only remount. Skips where mounting is not permitted;
    unmounted in teardown."""
    mounted = []

    def mount(size: str, read_only: bool = False, before=None) -> str:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        r = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        if r.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
        mounted.append(str(where))
        if before is not None:
            before(str(where))
        if read_only:
            r = _run("mount", "-o", "remount,ro", str(where))
            if r.returncode != 0:
                pytest.skip(f"remounting a tmpfs read-only is not permitted here: {r.stderr.strip()}")
        return str(where)

    yield mount
    for where in reversed(mounted):
        if _run("umount", where).returncode != 0:
            _run("umount", "-l", where)


# ------------------------------------------------------------------------------ run directory


def test_output_dir_under_a_regular_file_is_one_line(capfd, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    code, _, err = train(capfd, afile)
    assert code == 2
    line = one_line(err)
    assert line == (
        f"jaxcnn train: config error: output_dir={afile}: cannot write the run directory "
        f"{afile}/default: Not a directory"
    )
    assert afile.read_text() == "not a directory\n"


def test_read_only_output_dir_is_one_line_and_keeps_the_earlier_run(capfd, small_fs):
    def earlier_run(where: str) -> None:
        os.makedirs(os.path.join(where, "default", "checkpoints", "2"))
        for name in ("metrics.jsonl", "config.yaml", os.path.join("checkpoints", "2", "x")):
            with open(os.path.join(where, "default", name), "w") as f:
                f.write("earlier\n")

    ro = small_fs("1m", read_only=True, before=earlier_run)
    files = sorted(glob.glob(os.path.join(ro, "**"), recursive=True))
    for resume in ("false", "true"):  # false: removing the old metrics fails; true: config.yaml
        code, _, err = train(capfd, ro, f"resume={resume}")
        assert code == 2
        line = one_line(err)
        assert line.startswith(f"jaxcnn train: config error: output_dir={ro}: cannot write the run directory")
        assert line.endswith("Read-only file system"), line
    assert sorted(glob.glob(os.path.join(ro, "**"), recursive=True)) == files
    with open(os.path.join(ro, "default", "checkpoints", "2", "x")) as f:
        assert f.read() == "earlier\n"


def test_metrics_writes_on_a_full_or_missing_directory_are_one_line(tmp_path, small_fs):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError, match=r"cannot write .*afile/metrics.jsonl: Not a directory;"):
        MetricsLog(str(afile / "metrics.jsonl"), enabled=True)

    full = small_fs("64k")
    log = MetricsLog(os.path.join(full, "metrics.jsonl"), enabled=True)
    with open(os.path.join(full, "filler"), "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * (1 << 20))
    with pytest.raises(ConfigError) as e:
        for step in range(1000):  # the page cache may take a few records before the disk is full
            log.write({"step": step, "loss": 1.0, "padding": "x" * 4096})
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"cannot write {full}/metrics.jsonl: No space left on device;")


# -------------------------------------------------------------------------------------- checkpoints


def test_disk_full_at_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(capfd, small_fs):
    # 1.5 MB: config, metrics and the 0.9 MB checkpoint of step 2 fit; step 4's does not.
    fs = small_fs("1500k")
    code, _, err = train(capfd, fs)
    assert code == 2
    line = one_line(err)
    checkpoints = os.path.join(fs, "default", "checkpoints")
    # The OS reason whichever write hit the limit (an OSError, or tensorstore's RESOURCE_EXHAUSTED).
    assert line.startswith(
        f"jaxcnn train: checkpoint error: could not write checkpoint step 4 to {checkpoints} ("
    ), line
    assert "No space left on device" in line
    assert line.endswith("earlier checkpoints kept: [2]"), line
    assert "4" not in steps_on_disk(checkpoints)
    # Step 2 is complete; the next open deletes the failed save's temporary directory.
    assert os.path.exists(os.path.join(checkpoints, "2", "commit_success.txt"))
    reopened = Checkpointer(checkpoints)
    assert reopened.all_steps() == [2]
    reopened.close()
    deadline = time.monotonic() + 30  # orbax deletes temporaries in a background thread
    while steps_on_disk(checkpoints) != ["2"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert steps_on_disk(checkpoints) == ["2"]


def test_damaged_newest_and_unfinished_saves_resume_from_the_newest_complete_step(capfd, tmp_path):
    code, _, err = train(capfd, tmp_path)
    assert code == 0, err
    checkpoints = str(tmp_path / "default" / "checkpoints")
    assert steps_on_disk(checkpoints) == ["2", "4"]
    # Unfinished saves as a killed run leaves them (this orbax names them `<step>.orbax-checkpoint-tmp`,
    # older ones add `-<time>`), then the newest complete step damaged.
    for name in ("6.orbax-checkpoint-tmp", "8.orbax-checkpoint-tmp-1700000000"):
        shutil.copytree(os.path.join(checkpoints, "4"), os.path.join(checkpoints, name))
        truncate(os.path.join(checkpoints, name))
    truncate(os.path.join(checkpoints, "4"))

    code, out, err = train(capfd, tmp_path, "resume=true", "train.steps=6")
    assert code == 0, err
    assert err.strip() == "", err
    assert f"warning: checkpoint step 4 in {checkpoints} unreadable (" in out
    assert "trying an older one" in out
    assert "checkpoint step 6" not in out and "checkpoint step 8" not in out
    assert "steps 2→6" in out
    # The damaged step is kept aside; steps 4 and 6 are written again; the temporary directories are gone.
    assert steps_on_disk(checkpoints) == ["2", "4", "4.unreadable", "6"]
    assert Checkpointer(checkpoints).all_steps() == [2, 4, 6]


@pytest.mark.slow
def test_kill_9_during_a_real_save_then_resume_ignores_the_partial_save(tmp_path):
    # A checkpoint every step with a wider model: the process spends much of each step saving, so
    # polling for orbax's temporary directory catches a save in flight; SIGKILL it right there.
    out = tmp_path / "runs"
    args = ["train.steps=400", "train.log_every=1", "checkpoint.every=1", "checkpoint.max_to_keep=2"]
    args += ["train.eval_every=0", "model.options={width: 4.0}", f"output_dir={out}"]
    cmd = [sys.executable, "-m", "jaxcnn", "train", os.path.join(ROOT, "configs/default.yaml"), *args]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    checkpoints = out / "default" / "checkpoints"
    partial = []
    deadline = time.monotonic() + 240
    try:
        while not partial and time.monotonic() < deadline and proc.poll() is None:
            names = os.listdir(checkpoints) if checkpoints.is_dir() else []
            complete = [n for n in names if n.isdigit()]
            partial = [n for n in names if ".orbax-checkpoint-tmp" in n] if complete else []
            if partial:
                proc.send_signal(signal.SIGKILL)
            else:
                time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    assert partial, "never saw a save in flight within 240 s"
    left = os.listdir(checkpoints)
    if not any(".orbax-checkpoint-tmp" in n for n in left):
        pytest.skip(f"the save finished before SIGKILL landed ({left}); nothing partial to test")
    complete = sorted(int(n) for n in left if n.isdigit())
    resumed = subprocess.run(
        [*cmd[:-1], "resume=true", f"train.steps={complete[-1] + 1}", f"output_dir={out}"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"steps {complete[-1]}→{complete[-1] + 1}" in " ".join(resumed.stdout.split())
    assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(checkpoints))  # cleaned up
