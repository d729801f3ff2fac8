"""GPU/TPU smoke test (``make test-accelerator``): skipped on a machine without an accelerator.

tests/conftest.py pins the test process to 8 virtual CPU devices, so each check runs in a subprocess
without ``JAX_PLATFORMS``, where JAX picks the accelerator by itself (as ``make train`` does).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.utils import once_per_test_run

ROOT = pathlib.Path(__file__).resolve().parents[1]

BACKEND = """
import json, jax
d = jax.devices()
print(json.dumps({"backend": jax.default_backend(), "devices": len(d), "kind": d[0].device_kind}))
"""

CONV = """
import json, jax, jax.numpy as jnp, numpy as np
import jaxcnn

n = jax.device_count()
mesh = jaxcnn.make_mesh(n=n)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2 * n, 16, 16, 8)), jnp.float32)
kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32)

def ref(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

def mine(x, kernel):
    return jaxcnn.conv2d(x, kernel, mesh=mesh, algorithm="data")

def loss(f):
    return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(f(x, k) ** 2), argnums=(0, 1)))

with jax.default_matmul_precision("highest"):
    (a, ga), (b, gb) = loss(mine)(x, kernel), loss(ref)(x, kernel)
errs = [float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v))) for u, v in zip((a, *ga), (b, *gb))]
print(json.dumps({"backend": jax.default_backend(), "platform": b.devices().pop().platform, "errs": errs}))
"""

TRAIN = """
import json, sys, jax
from jaxcnn.runner.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "backend": jax.default_backend()}))
"""


def _run(script: str, *args: str, timeout: float = 600) -> dict:
    """Runs ``script`` with JAX's own platform choice; returns the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def accelerator(tmp_path_factory) -> dict:
    def probe(out):  # once per test run, whichever worker asks first
        (out / "backend.json").write_text(json.dumps(_run(BACKEND, timeout=120)))

    made = once_per_test_run(tmp_path_factory, "accelerator", probe)
    info = json.loads((made / "backend.json").read_text())
    if info["backend"] == "cpu":
        pytest.skip("no GPU/TPU: JAX's default backend is the CPU")
    return info


def test_conv_on_the_accelerator(accelerator):
    res = _run(CONV)
    assert res["backend"] == res["platform"] == accelerator["backend"]
    assert max(res["errs"]) < 1e-4, res


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_short_training_run_on_the_accelerator(accelerator, tmp_path, dtype):
    # configs/default.yaml places its convolutions on 8 devices; with fewer, plain data parallelism.
    fewer = [] if accelerator["devices"] >= 8 else ["mesh.n=-1", "model.algorithms=data"]
    args = ["configs/default.yaml", *fewer, f"output_dir={tmp_path}", "name=smoke", f"model.dtype={dtype}"]
    args += ["train.steps=40", "train.eval_every=40", "train.log_every=10", "checkpoint.every=40"]
    res = _run(TRAIN, *args)
    assert res == {"rc": 0, "backend": accelerator["backend"]}
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["devices"] == accelerator["devices"]
    assert summary["final_eval_accuracy"] > 0.5  # 8x8 digits: well above chance (0.1) after 40 steps
    # the step time of each dtype, for docs/mixed_precision.md (pytest -s shows it)
    print(f"{accelerator['kind']} {dtype}: mean step time {summary['mean_step_time_s'] * 1e3:.2f} ms")
