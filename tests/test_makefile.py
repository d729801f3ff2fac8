"""The Makefile leaves the platform to JAX: ``make train`` uses a GPU/TPU where there is one.

tests/conftest.py pins this process to the CPU; each check here starts a subprocess without
``JAX_PLATFORMS`` (and without the variables of an outer ``make``), with the environment that ``make``
gives its recipes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: Variables that make (conftest, an outer ``make test``) put into this process, not the user's.
OUTER = ("JAX_PLATFORMS", "XLA_FLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
PROBE = """
import json, sys
sys.argv = ["jaxcnn", "train", "configs/default.yaml", "--print-config"]
from jaxcnn.runner import cli
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    assert cli.main(sys.argv[2:]) == 0  # the CLI's own start-up, as `make train` runs it
import jax
print(json.dumps({"backend": jax.default_backend(), "devices": jax.device_count()}))
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OUTER}


def _make(*args: str) -> str:
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def _recipe_env() -> dict[str, str]:
    """The environment make gives a recipe (its exported variables on top of the caller's)."""
    lines = _make("--eval=_print_env: ; @env -0", "_print_env")
    return dict(item.split("=", 1) for item in lines.split("\0") if "=" in item)


def _probe(env: dict[str, str]) -> dict:
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_makefile_sets_no_platform():
    env = _recipe_env()
    assert "JAX_PLATFORMS" not in env
    assert "--xla_force_host_platform_device_count=8" in env["XLA_FLAGS"].split()
    train = _make("-n", "train").splitlines()[-1].split()
    assert train[:3] == [".venv/bin/jaxcnn", "train", "configs/default.yaml"], train
    assert not any("cpu" in a.lower() or "JAX_PLATFORMS" in a for a in train), train


def test_make_train_runs_on_jaxs_own_platform():
    # Here (no accelerator) both are the CPU; on a GPU/TPU machine both are the accelerator.
    made = _probe(_recipe_env())
    clean = _probe({k: v for k, v in _clean_env().items() if k != "XLA_FLAGS"})
    assert made["backend"] == clean["backend"]
    if made["backend"] == "cpu":
        assert made["devices"] == 8  # the Makefile's virtual CPU devices
