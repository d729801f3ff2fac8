"""``jaxcnn.runner.launch``: each process's environment and command, exit codes, ``main``'s argument
errors, and :class:`Job` with small fake child processes (``python -c``): prefixed output without gloo's
chatter, the first failure stopping the others, and SIGKILL after the grace period for a child that
ignores SIGTERM. No training runs here (tests/multiprocess does real launches).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import pytest

from jaxcnn.runner import launch
from jaxcnn.runner.launch import Job, exit_code, main, process_env, train_command


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _env() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture
def jobs():
    """Makes :class:`Job` s; kills whatever of theirs is still running when the test ends (even failing)."""
    made: list[Job] = []

    def make(commands, verbose=False):
        job = Job(commands, [_env() for _ in commands], verbose=verbose)
        made.append(job)
        return job

    yield make
    for job in made:
        for p in job.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("[launch]")]


def test_process_env_places_process_in_job():
    base = {"PATH": "/bin", "XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"}
    env = process_env(base, 1, 3, 4, 5678)
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=4"]
    assert env["JAXCNN_COORDINATOR_ADDRESS"] == "127.0.0.1:5678"
    assert env["JAXCNN_NUM_PROCESSES"] == "3"
    assert env["JAXCNN_PROCESS_ID"] == "1"
    assert env["PATH"] == "/bin"
    assert env["JAXCNN_DISCARD_NATIVE_STDOUT"] == "1"  # gloo's chatter
    assert "JAXCNN_DISCARD_NATIVE_STDOUT" not in process_env(base, 1, 3, 4, 5678, verbose=True)
    assert base == {"PATH": "/bin", "XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"}


def test_process_env_overrides_inherited_platform_and_job_variables():
    base = {"JAX_PLATFORMS": "cuda", "JAXCNN_PROCESS_ID": "7", "JAXCNN_NUM_PROCESSES": "9"}
    env = process_env(base, 0, 2, 1, 1234)
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["JAXCNN_PROCESS_ID"] == "0"
    assert env["JAXCNN_NUM_PROCESSES"] == "2"
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"


def test_train_command():
    cmd = train_command("cfg.yaml", ["train.steps=3", "name=x"], 4)
    assert cmd[:4] == [sys.executable, "-m", "jaxcnn", "train"]
    assert cmd[4] == "cfg.yaml"
    assert cmd[cmd.index("--cpu-devices") + 1] == "4"
    assert "distributed=true" in cmd
    assert cmd[-2:] == ["train.steps=3", "name=x"]


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (3, 3), (-9, 137), (-15, 143), (-2, 130)])
def test_exit_code(code, expected):
    assert exit_code(code) == expected


def test_free_port_is_bindable():
    import socket

    port = launch.free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    return str(path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--processes", "0"], "--processes must be >= 1, got 0"),
        (["--processes", "2", "--cpu-devices", "0"], "--cpu-devices must be >= 1, got 0"),
        (["--processes", "2", "--port", "70000"], "--port must be in [0, 65535]"),
        (["--processes", "2", "--port", "-1"], "--port must be in [0, 65535]"),
        (["--processes", "2", "--timeout", "-1"], "--timeout and --grace must be >= 0"),
    ],
)
def test_main_argument_errors(capsys, config_file, args, needle):
    assert main([*args, config_file]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing started
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxcnn launch: ")
    assert needle in lines[0]


def test_main_missing_config_file(capsys, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert main(["--processes", "2", missing]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"jaxcnn launch: config file not found: {missing}"]


GLOO = "[Gloo] Rank {} is connected to {} peer ranks. Expected number of connected peer ranks is : {}"


@pytest.mark.parametrize(
    "line, after, kept",
    [
        (GLOO.format(0, 1, 1) + "\n", True, None),
        # two threads' lines, cut where gloo's pieces meet (seen in 2 x 4 launches)
        ("[Gloo] Rank " + GLOO.format(1, 1, 1) + "\n", True, None),
        ("0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n", True, None),
        ("3\n", True, None),  # the end of a line whose start went into the line before
        # the pieces " peer ranks. " and "Expected ..." apart, a rank's number between them
        (" peer ranks. Expected number of connected peer ranks is : 7 peer ranks. 7\n", True, None),
        (" peer ranks. \n", True, None),
        ("\n", False, None),
        ("[Gloo] Rank train ━━━━ 7/8 loss 0.3046\n", True, "train ━━━━ 7/8 loss 0.3046\n"),
        ("step 40: test accuracy 0.95" + GLOO.format(2, 3, 3) + "\n", True, "step 40: test accuracy 0.95\n"),
        ("3\n", False, "3\n"),  # a number with no gloo line before it is output
        ("│ steps │ 40 │\n", True, "│ steps │ 40 │\n"),
        ("no newline", False, "no newline\n"),
    ],
)
def test_without_chatter_drops_gloo_pieces_and_keeps_the_rest(line, after, kept):
    assert launch.without_chatter(line, after) == kept


def test_job_all_succeed_prefixes_output_and_drops_gloo_chatter(capsys, jobs):
    # Two "threads" of gloo writing their lines piece by piece, interleaved as seen in real launches,
    # around the program's own lines.
    pieces = [
        "[Gloo] Rank ",
        "0",
        " is connected to ",
        "3",
        " peer ranks. Expected number of connected peer ranks is : ",
    ]
    code = (
        "import sys\n"
        "i = sys.argv[1]\n"
        "print('hello from', i, flush=True)\n"
        f"a = {pieces!r}\n"
        f"b = {GLOO.format(1, 3, 3)!r} + '\\n'\n"
        "for p in a: sys.stderr.write(p); sys.stderr.flush()\n"
        "sys.stderr.write(b); sys.stderr.write('3'); sys.stderr.write('\\n'); sys.stderr.flush()\n"
        "print('bye from', i, file=sys.stderr)\n"
    )
    job = jobs([[*_py(code), "0"], [*_py(code), "1"]])
    assert job.wait(grace_s=1.0) == 0
    lines = _lines(capsys.readouterr().out)
    assert sorted(lines) == ["[p0] bye from 0", "[p0] hello from 0", "[p1] bye from 1", "[p1] hello from 1"]
    assert all(p.returncode == 0 for p in job.procs)


def test_job_verbose_keeps_gloo_chatter(capsys, jobs):
    job = jobs([_py(f"print({GLOO.format(0, 1, 1)!r}); print('3')")], verbose=True)
    assert job.wait(grace_s=1.0) == 0
    assert _lines(capsys.readouterr().out) == ["[p0] " + GLOO.format(0, 1, 1), "[p0] 3"]


def test_job_first_failure_stops_the_others(capsys, jobs):
    start = time.monotonic()
    job = jobs([_py("import time; time.sleep(600)"), _py("import time, sys; time.sleep(0.3); sys.exit(3)")])
    assert job.wait(grace_s=5.0) == 3
    elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed
    sleeper = job.procs[0]
    assert sleeper.poll() == -signal.SIGTERM
    assert "[launch] process 1 exited with 3; stopping the others" in capsys.readouterr().out


def test_job_timeout_stops_a_stuck_job(capsys, jobs):
    start = time.monotonic()
    job = jobs([_py("import time; time.sleep(600)"), _py("import time; time.sleep(600)")])
    assert job.wait(grace_s=1.0, timeout_s=1.0) == launch.TIMEOUT_EXIT
    assert time.monotonic() - start < 10
    assert all(p.poll() == -signal.SIGTERM for p in job.procs)
    assert "exceeded --timeout 1 s" in capsys.readouterr().out


def test_job_child_killed_by_signal_gives_128_plus_signal(capsys, jobs):
    job = jobs([_py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")])
    assert job.wait(grace_s=1.0) == 137
    assert "[launch] process 0 exited with 137" in capsys.readouterr().out


def test_job_sigkills_child_that_ignores_sigterm(tmp_path, capsys, jobs):
    ready = tmp_path / "ready"
    stubborn = (
        "import signal, time, pathlib, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(600)\n"
    )
    # The failing child exits only once the stubborn one ignores SIGTERM (no race on its handler).
    failing = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.02)\nsys.exit(4)\n"
    )
    job = jobs([[*_py(stubborn), str(ready)], [*_py(failing), str(ready)]])
    start = time.monotonic()
    assert job.wait(grace_s=1.0) == 4
    elapsed = time.monotonic() - start
    assert job.procs[0].poll() == -signal.SIGKILL
    assert elapsed >= 1.0, elapsed  # SIGTERM's grace period was waited out
    assert elapsed < 8.0, elapsed  # ... and then SIGKILL, not a hang
