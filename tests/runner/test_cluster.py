"""``jaxcnn.runner.cluster``: the ``cluster`` config section, :func:`resolved` (the keyword arguments
for ``jax.distributed.initialize``: config values, ``JAXCNN_*`` overrides, validation) and
:func:`initialize` turning JAX's "cannot detect the job" error into a :class:`ConfigError`.

``jax.distributed.initialize`` can run only once per process, so the test that calls it runs in a
subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxcnn.runner import cluster
from jaxcnn.runner.cluster import ENV, ClusterConfig, resolved
from jaxcnn.runner.config import from_dict
from jaxcnn.runner.config.typed import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUTS = {"initialization_timeout": 120, "heartbeat_timeout_seconds": 30, "shutdown_timeout_seconds": 30}


def test_defaults_leave_job_to_auto_detection_and_pass_timeouts():
    assert resolved(ClusterConfig(), {}) == TIMEOUTS


def test_config_values_pass_through():
    cfg = ClusterConfig(
        coordinator_address="10.0.0.1:1234",
        num_processes=4,
        process_id=0,
        cluster_detection_method="slurm",
        initialization_timeout_s=7,
        heartbeat_timeout_s=8,
        shutdown_timeout_s=9,
    )
    assert resolved(cfg, {}) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 0,
        "cluster_detection_method": "slurm",
        "initialization_timeout": 7,
        "heartbeat_timeout_seconds": 8,
        "shutdown_timeout_seconds": 9,
    }


def test_last_process_id_is_valid():
    kwargs = resolved(ClusterConfig(num_processes=4, process_id=3), {})
    assert kwargs["num_processes"] == 4 and kwargs["process_id"] == 3


def test_env_overrides_config():
    cfg = ClusterConfig(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    env = {
        "JAXCNN_COORDINATOR_ADDRESS": "127.0.0.1:5555",
        "JAXCNN_NUM_PROCESSES": "2",
        "JAXCNN_PROCESS_ID": "1",
    }
    assert resolved(cfg, env) == {
        "coordinator_address": "127.0.0.1:5555",
        "num_processes": 2,
        "process_id": 1,
        **TIMEOUTS,
    }


def test_env_fills_in_unset_values_and_empty_env_is_ignored():
    cfg = ClusterConfig(coordinator_address="10.0.0.1:1234")
    env = {"JAXCNN_COORDINATOR_ADDRESS": "", "JAXCNN_NUM_PROCESSES": "3", "JAXCNN_PROCESS_ID": "0"}
    assert resolved(cfg, env) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 3,
        "process_id": 0,
        **TIMEOUTS,
    }


def test_process_id_zero_from_env_is_kept():
    # 0 is falsy: it must still be passed (not mistaken for "unset").
    assert resolved(ClusterConfig(), {"JAXCNN_PROCESS_ID": "0"})["process_id"] == 0


def test_reads_os_environ_by_default(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JAXCNN_NUM_PROCESSES", "6")
    assert resolved(ClusterConfig())["num_processes"] == 6


@pytest.mark.parametrize("key", ["num_processes", "process_id"])
@pytest.mark.parametrize("text", ["two", "-1", "1.5", " 2"])
def test_bad_env_value_names_key_and_variable(key, text):
    var = ENV[key]
    with pytest.raises(ConfigError) as info:
        resolved(ClusterConfig(), {var: text})
    message = str(info.value)
    assert message.startswith(f"cluster.{key}:")
    assert f"${var}" in message
    assert repr(text) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("cfg", "env", "pid", "n"),
    [
        (ClusterConfig(num_processes=2, process_id=2), {}, 2, 2),
        (ClusterConfig(num_processes=2), {"JAXCNN_PROCESS_ID": "5"}, 5, 2),
        (ClusterConfig(num_processes=8, process_id=3), {"JAXCNN_NUM_PROCESSES": "3"}, 3, 3),
    ],
)
def test_process_id_outside_range(cfg, env, pid, n):
    with pytest.raises(ConfigError, match=r"^cluster\.process_id:") as info:
        resolved(cfg, env)
    assert f"{pid} is outside [0, num_processes={n})" in str(info.value)


@pytest.mark.parametrize("address", ["localhost", "10.0.0.1", "host:port", "host:"])
def test_bad_coordinator_address_is_one_line_config_error(address):
    with pytest.raises(ConfigError) as info:
        from_dict({"cluster": {"coordinator_address": address}})
    message = str(info.value)
    assert message.startswith("cluster.coordinator_address:")
    assert "host:port" in message
    assert repr(address) in message
    assert "\n" not in message


def test_config_section_loads_through_from_dict():
    cfg = from_dict({"cluster": {"coordinator_address": "10.0.0.1:1234", "num_processes": 2}}).cluster
    assert resolved(cfg, {})["coordinator_address"] == "10.0.0.1:1234"
    assert resolved(cfg, {})["num_processes"] == 2


def test_bad_detection_method_is_config_error():
    with pytest.raises(ConfigError, match=r"^cluster\.cluster_detection_method"):
        from_dict({"cluster": {"cluster_detection_method": "kubernetes"}})


def test_initialize_rejects_bad_env_before_calling_jax(monkeypatch):
    # resolved() raises first, so jax.distributed.initialize is never reached in this process.
    monkeypatch.setenv("JAXCNN_NUM_PROCESSES", "many")
    with pytest.raises(ConfigError, match=r"cluster\.num_processes"):
        cluster.initialize(ClusterConfig())
    assert cluster._initialized is False


@pytest.mark.slow
def test_initialize_without_cluster_is_config_error():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAXCNN_", "SLURM_", "OMPI_", "PMI_", "PMIX_", "TPU_", "CLOUD_TPU"))
    }
    env["JAX_PLATFORMS"] = "cpu"
    code = (
        "from jaxcnn.runner import cluster\n"
        "try:\n"
        "    cluster.initialize(cluster.ClusterConfig())\n"
        "except cluster.ConfigError as e:\n"
        "    print('ConfigError:', e)\n"
        "else:\n"
        "    print('no error')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ConfigError:")]
    assert len(lines) == 1, proc.stdout
    message = lines[0]
    assert "cluster.coordinator_address" in message
    assert "jax.distributed.initialize could not set up the job" in message
    assert "jaxcnn launch" in message


def test_discard_native_stdout_keeps_pythons_lines_and_drops_native_writes():
    # os.write(1, ...) stands for native code (gloo) writing to descriptor 1
    code = (
        "import os, sys\n"
        "from jaxcnn.runner import cluster\n"
        "print('before', flush=True)\n"
        "cluster.discard_native_stdout()\n"
        "os.write(1, b'[Gloo] Rank 0 is connected to 1 peer ranks. \\n')\n"
        "print('after', 'é')\n"
        "os.write(2, b'native stderr\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, encoding="utf-8"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "before\nafter é\n"
    assert proc.stderr == "native stderr\n"
