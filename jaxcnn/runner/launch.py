"""``jaxcnn launch --processes N --cpu-devices M CONFIG [key=value ...]``: a multi-process job on one machine.

Starts ``N`` processes of ``jaxcnn train CONFIG distributed=true ...`` with ``M`` virtual CPU devices
each, a coordinator on ``127.0.0.1`` at a free port (``--port`` to choose one) and CPU collectives over
gloo: the same program a pod or cluster runs on every host, emulated with real processes. Each process
learns its place from ``JAXCNN_COORDINATOR_ADDRESS`` / ``JAXCNN_NUM_PROCESSES`` / ``JAXCNN_PROCESS_ID``
(read by :mod:`jaxcnn.runner.cluster`, overriding the config's ``cluster`` section).

Output lines are prefixed ``[p<i>]``. Unless ``--verbose``, gloo's connection chatter is dropped: the
processes discard native writes to descriptor 1, where gloo prints (its threads write each line in
pieces, which would land inside other lines), and :func:`without_chatter` takes out what still comes.
The launcher exits 0 when every process does; as soon as one fails it stops the others (SIGTERM, then
SIGKILL after ``--grace`` seconds) and exits with the first failure's code (128 + signal for a process
killed by a signal), so a dead process ends the job in seconds; ``--timeout S`` also bounds a job whose
processes are alive but stuck (exit 124). A process that exits 130 or 143 stopped on a signal with a
checkpoint, and so do its peers: they are waited for.

SIGINT (Ctrl-C) and SIGTERM to the launcher are forwarded to every process (each runs in its own session,
so a terminal's Ctrl-C reaches the launcher alone): the processes agree on a step, save its checkpoint and
exit 130 or 143 (:mod:`jaxcnn.runner.interrupt`), process 0 printing the one line that says so; the
launcher waits for all of them and exits with that code, adding nothing. A second signal is forwarded too:
the processes stop at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from jaxcnn.devices import with_cpu_device_count
from jaxcnn.runner.cluster import DISCARD_NATIVE_STDOUT

POLL_S = 0.1
#: Exit code of a job stopped by ``--timeout`` (as coreutils' ``timeout``).
TIMEOUT_EXIT = 124
#: The exit codes of a process that stopped on SIGINT / SIGTERM with a checkpoint (its peers, which agree
#: on the step, stop with it: they are waited for, not stopped).
INTERRUPTED = (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)
#: gloo prints ``[Gloo] Rank R is connected to N peer ranks. Expected number of connected peer ranks is : N``
#: to descriptor 1 per communicator, from one thread per rank, each line written as eight pieces (four
#: texts, three numbers, the newline): lines of several threads interleave piece by piece. The processes
#: drop it at the source (:data:`jaxcnn.runner.cluster.DISCARD_NATIVE_STDOUT`); this catches what still
#: comes (a gloo that writes to descriptor 2). A piece is one of the texts and a number after it, or a
#: number alone (a line that holds nothing else was cut from one of these lines: ``[p0] 3``).
GLOO_PIECES = re.compile(
    r"\[Gloo\] Rank (\d+)?| is connected to (\d+)?| peer ranks\. ?(\d+)?"
    r"|Expected number of connected peer ranks is : (\d+)?"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(
    base: dict[str, str], index: int, processes: int, cpu_devices: int, port: int, verbose: bool = False
) -> dict[str, str]:
    """The environment of process ``index``: CPU platform with ``cpu_devices`` devices, gloo collectives,
    and the ``JAXCNN_*`` variables that place it in the job; unless ``verbose``, native output to
    descriptor 1 discarded (:func:`jaxcnn.runner.cluster.discard_native_stdout`: gloo's chatter)."""
    env = dict(base)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        XLA_FLAGS=with_cpu_device_count(base.get("XLA_FLAGS", ""), cpu_devices),
        JAXCNN_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAXCNN_NUM_PROCESSES=str(processes),
        JAXCNN_PROCESS_ID=str(index),
        PYTHONUNBUFFERED="1",
        COLUMNS=base.get("COLUMNS", "120"),  # output is a pipe: let rich use a full-width table
    )
    if not verbose:
        env[DISCARD_NATIVE_STDOUT] = "1"
    return env


def train_command(config: str, overrides: Sequence[str], cpu_devices: int) -> list[str]:
    """``python -m jaxcnn train CONFIG --cpu-devices M distributed=true OVERRIDES...``."""
    return [
        sys.executable,
        "-m",
        "jaxcnn",
        "train",
        config,
        "--cpu-devices",
        str(cpu_devices),
        "distributed=true",
        *overrides,
    ]


def exit_code(returncode: int) -> int:
    """A child's return code as a shell exit code (``-9`` → 137)."""
    return 128 - returncode if returncode < 0 else returncode


def without_chatter(line: str, after_chatter: bool) -> str | None:
    """``line`` (with its newline) without gloo's pieces (:data:`GLOO_PIECES`); None when nothing else is
    left: a line of gloo's pieces, a blank line, or a bare number while ``after_chatter`` (the stream has
    carried gloo's pieces, so the number is the cut-off end of one of its lines; jaxcnn prints no such
    line)."""
    kept = GLOO_PIECES.sub("", line)
    text = kept.strip()
    if not text or (after_chatter and text.isdigit()):
        return None
    return kept if kept.endswith("\n") else kept + "\n"


def _pump(stream: IO[str], prefix: str, verbose: bool, lock: threading.Lock) -> None:
    chatter = False
    for line in stream:
        if not verbose:
            chatter = chatter or GLOO_PIECES.search(line) is not None
            line = without_chatter(line, chatter)
            if line is None:
                continue
        with lock:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()


class Job:
    """``N`` child processes run together; :meth:`wait` ends them all when one fails.

    Args:
      commands: one argv per process.
      envs: one environment per process.
      verbose: keep gloo's connection lines.
    """

    def __init__(self, commands: Sequence[list[str]], envs: Sequence[dict[str, str]], verbose: bool = False):
        self.procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        self.forwarded: int | None = None  # a signal passed on to the processes: they stop by themselves
        lock = threading.Lock()
        for i, (cmd, env) in enumerate(zip(commands, envs, strict=True)):
            p = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,  # its own process group: stopping it stops its workers too
            )
            self.procs.append(p)
            print(f"[launch] process {i} pid {p.pid}", flush=True)
            t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", verbose, lock), daemon=True)
            t.start()
            self._threads.append(t)

    def forward(self, signum: int, frame: object = None) -> None:
        """Passes ``signum`` on to every live process (a signal handler: ``signal.signal(sig, job.forward)``);
        :meth:`wait` then waits for all of them to exit by themselves."""
        self.forwarded = signum
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.kill(p.pid, signum)  # the process itself: it stops its input workers

    def stop(self, grace_s: float) -> None:
        """SIGTERM to every live process group, SIGKILL to what is still alive after ``grace_s``."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            live = [p for p in self.procs if p.poll() is None]
            for p in live:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.killpg(p.pid, sig)
            deadline = time.monotonic() + wait_s
            while any(p.poll() is None for p in live) and time.monotonic() < deadline:
                time.sleep(POLL_S)

    def wait(self, grace_s: float, timeout_s: float = 0.0) -> int:
        """Waits for all processes; the first failure stops the rest.

        Args:
          grace_s: seconds between SIGTERM and SIGKILL when stopping.
          timeout_s: stop everything after this many seconds (0: no limit), e.g. for a job whose
            processes are alive but stuck.

        Returns:
          0 if every process exited 0, :data:`TIMEOUT_EXIT` after ``timeout_s``, else the first
          failure's exit code; after a :meth:`forward`, the first non-zero code once all have exited.
        """
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    print(f"[launch] the job exceeded --timeout {timeout_s:g} s; stopping it", flush=True)
                    self.stop(grace_s)
                    return TIMEOUT_EXIT
                codes = [p.poll() for p in self.procs]
                # A signal forwarded, or one sent to a process alone (it exits 130/143 and its peers stop
                # with it): each process saves and stops by itself; wait for all, then their code.
                if self.forwarded is not None or any(c in INTERRUPTED for c in codes):
                    if all(c is not None for c in codes):
                        return next((exit_code(c) for c in codes if c), 0)
                    time.sleep(POLL_S)
                    continue
                failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    i, code = failed[0]
                    print(
                        f"[launch] process {i} exited with {exit_code(code)}; stopping the others", flush=True
                    )
                    self.stop(grace_s)
                    return exit_code(code)
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            print("[launch] interrupted; stopping all processes", flush=True)
            self.stop(grace_s)
            return 130
        finally:
            for t in self._threads:
                t.join(timeout=2.0)


def parser() -> argparse.ArgumentParser:
    """The ``jaxcnn launch`` argument parser."""
    p = argparse.ArgumentParser(
        prog="jaxcnn launch",
        description="Run `jaxcnn train CONFIG distributed=true` as N processes on this machine "
        "(virtual CPU devices, gloo collectives): a pod job, emulated locally.",
    )
    p.add_argument("--processes", type=int, required=True, metavar="N", help="processes to start")
    p.add_argument("--cpu-devices", type=int, default=1, metavar="M", help="virtual CPU devices per process")
    p.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="stop the job after S seconds, exit 124 (0: no limit)",
    )
    p.add_argument("--verbose", action="store_true", help="keep gloo's connection messages")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (as for train)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, starts the processes and waits for them.

    Returns:
      0 when all succeed; 2 for bad arguments; otherwise the first failing process's exit code.
    """
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if not args.timeout >= 0 or args.grace < 0:
        print(
            f"jaxcnn launch: --timeout and --grace must be >= 0, got {args.timeout:g} and {args.grace:g}",
            file=sys.stderr,
        )
        return 2
    for flag, value, low in (("--processes", args.processes, 1), ("--cpu-devices", args.cpu_devices, 1)):
        if value < low:
            print(f"jaxcnn launch: {flag} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    if not 0 <= args.port < 65536:
        print(
            f"jaxcnn launch: --port must be in [0, 65535] (0: a free port), got {args.port}", file=sys.stderr
        )
        return 2
    if not os.path.isfile(args.config):
        print(f"jaxcnn launch: config file not found: {args.config}", file=sys.stderr)
        return 2
    port = args.port or free_port()
    n, m = args.processes, args.cpu_devices
    print(f"[launch] {n} processes x {m} CPU devices, coordinator 127.0.0.1:{port}", flush=True)
    job = Job(
        [train_command(args.config, args.overrides, m)] * n,
        [process_env(dict(os.environ), i, n, m, port, args.verbose) for i in range(n)],
        verbose=args.verbose,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, job.forward)
    return job.wait(args.grace, args.timeout)
