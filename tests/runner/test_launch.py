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


def test_job_all_succeed_prefixes_output_and_drops_gloo_chatter(capsys, jobs):
    code = (
        "import sys\n"
        "i = sys.argv[1]\n"
        "print('hello from', i)\n"
        "print('Rank 0 is connected peer ranks: [1] [gloo]')\n"
        "print('bye from', i, file=sys.stderr)\n"
    )
    job = jobs([[*_py(code), "0"], [*_py(code), "1"]])
    assert job.wait(grace_s=1.0) == 0
    lines = _lines(capsys.readouterr().out)
    assert sorted(lines) == ["[p0] bye from 0", "[p0] hello from 0", "[p1] bye from 1", "[p1] hello from 1"]
    assert all(p.returncode == 0 for p in job.procs)


def test_job_verbose_keeps_gloo_chatter(capsys, jobs):
    job = jobs([_py("print('x connected peer ranks y')")], verbose=True)
    assert job.wait(grace_s=1.0) == 0
    assert _lines(capsys.readouterr().out) == ["[p0] x connected peer ranks y"]


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
