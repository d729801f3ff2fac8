"""Run a snippet in a fresh Python process with its own number of fake CPU devices.

tests/conftest.py fixes 8 devices for the test process; compile-only sweeps at 64 or 512 devices
run here instead. The snippet prints one JSON document as its last line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from jaxcnn.devices import with_cpu_device_count

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_with_devices(num_devices: int, script: str, *args: object, timeout: float = 600) -> object:
    """Runs ``script`` (with ``sys.argv[1:] = args``) on ``num_devices`` fake devices; returns its JSON."""
    env = dict(
        os.environ,
        XLA_FLAGS=with_cpu_device_count(os.environ.get("XLA_FLAGS", ""), num_devices),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"subprocess on {num_devices} devices failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
