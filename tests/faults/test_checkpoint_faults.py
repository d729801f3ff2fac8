"""Checkpoint and run-directory faults through ``jaxcnn train`` (issue 10): each is one line on stderr
(``jaxcnn train: ...``, exit 2, no traceback) and earlier checkpoints survive.

- the newest checkpoint damaged, plus orbax temporary directories of unfinished saves: ``resume=true``
  warns, restores the newest complete step and trains on (saving the damaged step's number again);
- ``output_dir`` under a regular file, or on a read-only file system; a file system that fills up at a
  checkpoint (or while metrics are written);
- a save killed half-way: for real (``kill -9`` while orbax's temporary directory exists: the run,
  started through a wrapper that holds orbax's second save just before it renames the temporary
  directory into place, writes a marker file there and the test kills it then) and simulated (copies
  of a step under orbax's temporary names with truncated files); ``resume=true`` ignores them.

The read-only and disk-full cases run twice: ``[tmpfs]`` mounts a small tmpfs (root and ``mount``
needed; chmod does not stop root) and skips with the reason where mounting is not permitted;
``[simulated]`` runs everywhere, the same run and assertions on a plain directory where the failing
writes raise the OS error instead (``EROFS`` for Python's writes under the directory, ``ENOSPC`` at
orbax's first array write of the step-4 checkpoint or at the first ``metrics.jsonl`` write after the
step-2 checkpoint).

Runs go through the CLI's ``main`` in this process (``capfd``: everything written to fds 1 and 2,
orbax's and absl's logs included).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import glob
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jaxcnn.__main__ import main as jaxcnn_main
from jaxcnn.runner import metrics
from jaxcnn.runner import train as train_module
from jaxcnn.runner.checkpoint import Checkpointer
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.metrics import MetricsLog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: A constant learning rate: train.steps is then no constant of the compiled step, and every run of this
#: module (4 steps, resumed to 6 or 2, in this process or in a subprocess) compiles the same train step,
#: which the test run's persistent compilation cache (tests/conftest.py) compiles once.
CONSTANT_LR = "optimizer.schedule=constant"
SMALL = ["train.steps=4", "train.log_every=2", "checkpoint.every=2", "train.eval_every=0", CONSTANT_LR]


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


# ------------------------------------------------------------------------------------ simulated


def _os_error(code: int, path=None) -> OSError:
    return (
        OSError(code, os.strerror(code))
        if path is None
        else OSError(code, os.strerror(code), os.fsdecode(path))
    )


def simulate_read_only(monkeypatch, root: str) -> None:
    """Python's writes under ``root`` fail as on a read-only mount: ``open``/``os.open`` for writing,
    ``mkdir`` (``EEXIST`` first where the path exists, as Linux checks), ``remove``/``unlink``/``rmdir``/
    ``rename``/``replace`` and ``shutil.rmtree`` raise ``EROFS`` (``rmtree(ignore_errors=True)`` does
    nothing). Tensorstore's writes (C++) are not covered: the tests check that nothing under ``root``
    changed."""
    root = os.path.realpath(root)

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.realpath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep)

    def refuse(real, writes):
        def call(path, *args, **kwargs):
            if under(path) and writes(*args, **kwargs):
                raise _os_error(errno.EROFS, path)
            return real(path, *args, **kwargs)

        return call

    def writing_mode(mode="r", *args, **kwargs) -> bool:
        return any(c in mode for c in "wax+")

    def writing_flags(flags, *args, **kwargs) -> bool:
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))

    real_mkdir, real_rmtree = os.mkdir, shutil.rmtree

    def mkdir(path, *args, **kwargs):
        if under(path):
            raise _os_error(errno.EEXIST if os.path.lexists(path) else errno.EROFS, path)
        return real_mkdir(path, *args, **kwargs)

    def rmtree(path, ignore_errors=False, *args, **kwargs):
        if not under(path):
            return real_rmtree(path, ignore_errors, *args, **kwargs)
        if not ignore_errors:
            raise _os_error(errno.EROFS, path)

    always = lambda *args, **kwargs: True  # noqa: E731
    monkeypatch.setattr(builtins, "open", refuse(builtins.open, writing_mode))
    monkeypatch.setattr(io, "open", refuse(io.open, writing_mode))  # pathlib's
    monkeypatch.setattr(os, "open", refuse(os.open, writing_flags))
    monkeypatch.setattr(os, "mkdir", mkdir)  # os.makedirs too
    for name in ("remove", "unlink", "rmdir", "rename", "replace"):
        monkeypatch.setattr(os, name, refuse(getattr(os, name), always))
    monkeypatch.setattr(shutil, "rmtree", rmtree)


def simulate_full_at_checkpoint(monkeypatch, step: int) -> None:
    """Orbax's first array write of checkpoint ``step`` (into its temporary directory, which exists by
    then) raises ``ENOSPC``; earlier steps are written normally."""
    from orbax.checkpoint._src.serialization import serialization

    real = serialization.async_serialize_from_host

    async def write(rslices_on_host, tensorstore_spec, **kwargs):
        if f"/{step}.orbax-checkpoint-tmp" in str(tensorstore_spec):
            raise _os_error(errno.ENOSPC)
        return await real(rslices_on_host, tensorstore_spec, **kwargs)

    monkeypatch.setattr(serialization, "async_serialize_from_host", write)


class _FullFile:
    """A file opened for appending on a full disk: the open works, every write raises ``ENOSPC``."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data) -> None:
        raise _os_error(errno.ENOSPC, self.f.name)

    writelines = write


def simulate_full_metrics_after(monkeypatch, path: str, ready) -> None:
    """Appends to ``metrics.jsonl`` at ``path`` (``jaxcnn.runner.metrics``' writes) find the disk full once
    ``ready()`` holds."""

    def full_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned open)
        return _FullFile(f) if os.fsdecode(file) == path and "a" in mode and ready() else f

    monkeypatch.setattr(metrics, "open", full_open, raising=False)


@pytest.fixture(params=["tmpfs", "simulated"])
def read_only_fs(request, small_fs, tmp_path, monkeypatch):
    """``make(before)``: a directory that ``before(path)`` fills and that is read-only from then on: a
    tmpfs remounted read-only (skips where mounting is not permitted), or a plain directory under which
    writes fail with ``EROFS`` (:func:`simulate_read_only`)."""

    def make(before) -> str:
        if request.param == "tmpfs":
            return small_fs("1m", read_only=True, before=before)
        where = tmp_path / "ro"
        where.mkdir()
        before(str(where))
        simulate_read_only(monkeypatch, str(where))
        return str(where)

    return make


@pytest.fixture(params=["tmpfs", "simulated"])
def full_at_step_4(request, small_fs, tmp_path, monkeypatch) -> str:
    """An ``output_dir`` whose disk is full when the 4-step run writes its checkpoint of step 4: a 1.5 MB
    tmpfs (config, metrics and the 0.9 MB checkpoint of step 2 fit; step 4's does not), or a plain
    directory where that checkpoint's first array write raises ``ENOSPC``."""
    if request.param == "tmpfs":
        return small_fs("1500k")
    simulate_full_at_checkpoint(monkeypatch, 4)
    return str(tmp_path)


# ------------------------------------------------------------------------------ run directory


def test_output_dir_under_a_regular_file_is_one_line(capfd, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")

    def prepare(*_, **__):
        raise AssertionError("the model was built before the run directory was checked")

    monkeypatch.setattr(train_module, "prepare", prepare)  # fails fast: no build, no compile
    code, _, err = train(capfd, afile)
    assert code == 2
    line = one_line(err)
    assert line == (
        f"jaxcnn train: config error: output_dir={afile}: cannot write the run directory "
        f"{afile}/default: Not a directory"
    )
    assert afile.read_text() == "not a directory\n"


def test_read_only_output_dir_is_one_line_and_keeps_the_earlier_run(capfd, read_only_fs):
    def earlier_run(where: str) -> None:
        os.makedirs(os.path.join(where, "default", "checkpoints", "2"))
        for name in ("metrics.jsonl", "config.yaml", os.path.join("checkpoints", "2", "x")):
            with open(os.path.join(where, "default", name), "w") as f:
                f.write("earlier\n")

    ro = read_only_fs(earlier_run)
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


def test_disk_full_while_metrics_are_written_is_one_line_and_keeps_the_earlier_checkpoints_simulated(
    capfd, tmp_path, monkeypatch
):
    # The run's own metrics writes (the tmpfs case above writes through MetricsLog directly): the first
    # record after the checkpoint of step 2 (step 4's) finds the disk full.
    run_dir = tmp_path / "default"
    path = str(run_dir / "metrics.jsonl")
    checkpoints = str(run_dir / "checkpoints")
    simulate_full_metrics_after(monkeypatch, path, lambda: steps_on_disk(checkpoints) == ["2"])
    code, _, err = train(capfd, tmp_path)
    assert code == 2
    line = one_line(err)
    assert line == (
        f"jaxcnn train: config error: cannot write {path}: No space left on device; free space or choose "
        "another output_dir"
    )
    assert [r["step"] for r in metrics.read_jsonl(path)] == [2]  # the records before it are kept
    assert steps_on_disk(checkpoints) == ["2"]
    assert os.path.exists(os.path.join(checkpoints, "2", "commit_success.txt"))
    assert Checkpointer(checkpoints).all_steps() == [2]


# -------------------------------------------------------------------------------------- checkpoints


def test_disk_full_at_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(capfd, full_at_step_4):
    fs = full_at_step_4
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
    # Step 2 is complete; the next open deletes the failed save's temporary directory before it returns.
    assert os.path.exists(os.path.join(checkpoints, "2", "commit_success.txt"))
    assert steps_on_disk(checkpoints) == ["2", "4.orbax-checkpoint-tmp"]
    reopened = Checkpointer(checkpoints)
    assert steps_on_disk(checkpoints) == ["2"]
    assert reopened.all_steps() == [2]
    reopened.close()


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


# Runs `jaxcnn train` with orbax's commit of its STALL_AT-th save (the step's files written into the
# temporary directory, just before it is renamed into place) replaced by: touch MARKER, wait forever.
_STALLED_SAVE = """
import sys, time
from orbax.checkpoint._src.path import atomicity

STALL_AT, MARKER = int(sys.argv[1]), sys.argv[2]
commit, saves = atomicity.on_commit_callback, []

async def stall_then_commit(tmp_dir, **kwargs):
    saves.append(tmp_dir)
    if len(saves) == STALL_AT:
        open(MARKER, "w").close()
        while True:
            time.sleep(60)
    return await commit(tmp_dir, **kwargs)

atomicity.on_commit_callback = stall_then_commit
from jaxcnn.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_kill_9_during_a_real_save_then_resume_ignores_the_partial_save(tmp_path, capfd):
    # A checkpoint every step; the run stops inside the save of step 2 (step 1 complete, step 2's files
    # all in orbax's temporary directory, not yet renamed) and is killed there.
    out, marker = tmp_path / "runs", tmp_path / "stalled"
    args = ["train.steps=4", "train.log_every=1", "checkpoint.every=1", "train.eval_every=0", CONSTANT_LR]
    args = ["train", os.path.join(ROOT, "configs/default.yaml"), *args, f"output_dir={out}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    stalled = [sys.executable, "-c", _STALLED_SAVE, "2", str(marker), *args]
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(stalled, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
    deadline = time.monotonic() + 300
    try:
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    tail = (tmp_path / "stderr").read_text()[-2000:]
    assert marker.exists(), (
        f"the run never reached its second save's commit within 300 s (exit code {proc.returncode}): {tail}"
    )
    assert proc.returncode == -signal.SIGKILL
    checkpoints = out / "default" / "checkpoints"
    left = sorted(os.listdir(checkpoints))
    assert [n for n in left if n.isdigit()] == ["1"], left
    partial = [n for n in left if n.startswith("2.orbax-checkpoint-tmp")]
    assert partial, f"no temporary directory of the killed save of step 2: {left}"
    assert os.listdir(checkpoints / partial[0]), "the killed save's temporary directory is empty"

    capfd.readouterr()
    code = jaxcnn_main([*args, "resume=true", "train.steps=2"])  # in this process, as the tests above
    resumed_out, resumed_err = capfd.readouterr()
    assert code == 0, resumed_err[-2000:]
    assert "steps 1→2" in " ".join(resumed_out.split())
    left = os.listdir(checkpoints)
    assert not any(".orbax-checkpoint-tmp" in n for n in left), left  # cleaned up
    assert sorted(n for n in left if n.isdigit()) == ["1", "2"]
