"""Compile-only ("golden") checks of the big configs nobody can run in CI: ResNet-50 on a 256-chip TPU
pod, an 8-GPU node and a 32-GPU SLURM cluster, lowered and compiled on fake CPU meshes of the same size
(small batch and images; compiled fast as tests/conftest.py sets it, since only partitioning and lowering
are under test).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxcnn.devices import with_cpu_device_count

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RESNET50_PARAMS = 25_557_032  # torchvision's resnet50 with 1000 classes has the same count


def _compile_only(config: str, devices: int, *overrides: str) -> dict[str, str]:
    # No persistent compilation cache (tests/conftest.py): each of these programs is compiled once.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XLA_FLAGS"] = with_cpu_device_count(os.environ.get("XLA_FLAGS", ""), devices)  # tests/conftest.py's
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "jaxcnn", "train", f"configs/{config}", "--compile-only", *overrides]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)


def _tpu_pod(*overrides: str) -> dict[str, str]:
    return _compile_only(
        "resnet50_tpu_pod.yaml",
        256,
        "train.batch_size=64",  # one image per n=64 batch shard (256: 7% longer to compile)
        "data.source=synthetic",
        "data.image_size=[32, 32]",
        *overrides,
    )


@pytest.mark.slow
def test_resnet50_tpu_pod_compiles_on_256_devices_short():
    # The shipped config, every placement of it, on 256 devices; stages 2-4 one bottleneck each (a
    # projection, the stride-2 3x3 on 2.5d) instead of 4, 6 and 3 identical ones: 19 s against 38 s for
    # the full network (make test-sweep). The config's layer1.1/layer1.2 keys need all of stage 1.
    figures = _tpu_pod("model.options={stage_sizes: [3, 1, 1, 1]}")
    assert figures["mesh"] == "{'n': 64, 'd': 1, 'h': 1, 'w': 1, 'k': 2, 'c': 2}"

    # 25,557,032 less three bottlenecks of 512, five of 1024 and two of 2048 channels (each
    # 1x1 c->c/4, 3x3 c/4->c/4, 1x1 c/4->c with a BatchNorm (scale, bias) after each)
    def bottleneck(c: int) -> int:
        m = c // 4
        return c * m + 9 * m * m + m * c + 2 * (m + m + c)

    removed = 3 * bottleneck(512) + 5 * bottleneck(1024) + 2 * bottleneck(2048)
    assert int(figures["num_params"]) == RESNET50_PARAMS - removed


@pytest.mark.slow
@pytest.mark.sweep  # ~38 s; make test keeps the short network's compile above
def test_resnet50_tpu_pod_compiles_on_256_devices():
    figures = _tpu_pod()
    assert figures["mesh"] == "{'n': 64, 'd': 1, 'h': 1, 'w': 1, 'k': 2, 'c': 2}"
    assert int(figures["num_params"]) == RESNET50_PARAMS


@pytest.mark.slow
# ~65 s; make test keeps the TPU pod's short ResNet-50 compile and resnet50-short-auto-8's whole step
@pytest.mark.sweep
def test_resnet50_gpu_node_compiles_on_8_devices():
    figures = _compile_only("resnet50_gpu_node.yaml", 8, "train.batch_size=16", "data.image_size=[32, 32]")
    assert figures["mesh"] == "{'n': 8, 'd': 1, 'h': 1, 'w': 1, 'k': 1, 'c': 1}"
    assert int(figures["num_params"]) == RESNET50_PARAMS


@pytest.mark.slow
@pytest.mark.sweep  # ~90 s (planning ResNet-50 for 32 devices); make test-sweep
def test_resnet50_slurm_gpu_compiles_on_32_devices_with_auto():
    figures = _compile_only(
        "resnet50_slurm_gpu.yaml",
        32,
        "train.batch_size=32",
        "train.eval_batch_size=32",
        "data.source=synthetic",
        "data.image_size=[32, 32]",
    )
    assert figures["mesh"] == "{'n': 32, 'd': 1, 'h': 1, 'w': 1, 'k': 1, 'c': 1}"
    assert int(figures["num_params"]) == RESNET50_PARAMS
    texts = [figures.get(f"{p}comm_bytes_per_step_max_device") for p in ("", "predicted_")]
    assert None not in texts and "None" not in texts, texts  # both figures present
    # exactly equal (dyadic fractions where an all-reduce's 2·S·(p-1)/p is not whole: exact in floats)
    metered, predicted = (float(t) for t in texts)
    assert metered > 0
    assert predicted == metered, (predicted, metered, figures.get("predicted_components"))
