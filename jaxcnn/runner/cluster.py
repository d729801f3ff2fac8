"""Joining a multi-process job: the ``cluster`` config section and ``jax.distributed.initialize()``.

A pod or cluster job runs the same command on every host (``jaxcnn train CONFIG distributed=true``).
``jax.distributed.initialize()`` finds the coordinator, the process count and this process's id by
itself on Cloud TPU, under SLURM and under Open MPI; everywhere else (and to override what it detects)
the ``cluster`` section gives them explicitly. ``jaxcnn launch`` (:mod:`jaxcnn.runner.launch`) sets
them through ``JAXCNN_*`` environment variables, which take precedence over the file, so one config
serves a laptop launch and a pod.

Timeouts default far below JAX's own (300 s to connect, 100 s heartbeat, 300 s shutdown), so a job
whose peer died ends in bounded time instead of sitting in a barrier for minutes.

Under ``jaxcnn launch`` (without ``--verbose``) the process first sends native code's writes to file
descriptor 1 to /dev/null (:func:`discard_native_stdout`): gloo prints a line per communicator there,
in pieces from one thread per rank, and its pieces would land inside the program's own lines.

This is the only module of jaxcnn that calls ``jax.distributed.initialize()``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from jaxcnn.runner.config.cluster import ENV, ClusterConfig
from jaxcnn.runner.config.typed import ConfigError


def resolved(cfg: ClusterConfig, environ: os._Environ | dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``jax.distributed.initialize``: the section, overridden by ``JAXCNN_*``.

    Unset values are left out, so JAX auto-detects them.

    Raises:
      ConfigError: a ``JAXCNN_*`` variable that is not a valid value, or ``process_id`` outside
        ``[0, num_processes)``.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {
        "coordinator_address": cfg.coordinator_address or None,
        "num_processes": cfg.num_processes or None,
        "process_id": None if cfg.process_id < 0 else cfg.process_id,
    }
    for key, var in ENV.items():
        text = env.get(var, "")
        if not text:
            continue
        if key == "coordinator_address":
            values[key] = text
            continue
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(f"cluster.{key}: ${var}={text!r} is not a non-negative integer")
        values[key] = int(text)
    n, pid = values["num_processes"], values["process_id"]
    if n is not None and pid is not None and not 0 <= pid < n:
        raise ConfigError(f"cluster.process_id: {pid} is outside [0, num_processes={n})")
    kwargs = {k: v for k, v in values.items() if v is not None}
    if cfg.cluster_detection_method:
        kwargs["cluster_detection_method"] = cfg.cluster_detection_method
    kwargs.update(
        initialization_timeout=cfg.initialization_timeout_s,
        heartbeat_timeout_seconds=cfg.heartbeat_timeout_s,
        shutdown_timeout_seconds=cfg.shutdown_timeout_s,
    )
    return kwargs


_initialized = False
#: Set to ``1`` by ``jaxcnn launch`` (unless ``--verbose``): :func:`discard_native_stdout` before joining.
DISCARD_NATIVE_STDOUT = "JAXCNN_DISCARD_NATIVE_STDOUT"


def discard_native_stdout() -> None:
    """Points file descriptor 1 at /dev/null and moves ``sys.stdout`` to a line-buffered copy of it.

    Python's output (``print``, rich) keeps its destination, one whole line per write; what native code
    writes to descriptor 1 (gloo's ``[Gloo] Rank R is connected to N peer ranks...``, written piece by
    piece from several threads) is dropped. Native writes to descriptor 2 (XLA's warnings) are kept.
    """
    sys.stdout.flush()
    kept = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = open(kept, "w", buffering=1, encoding=sys.stdout.encoding, errors=sys.stdout.errors)  # noqa: SIM115


def initialize(cfg: ClusterConfig) -> None:
    """Calls ``jax.distributed.initialize(**resolved(cfg))`` once per process.

    Raises:
      ConfigError: from :func:`resolved`, or JAX could not determine the job from the environment
        (names the keys to set).
    """
    global _initialized
    if _initialized:
        return
    import jax

    kwargs = resolved(cfg)
    if os.environ.get(DISCARD_NATIVE_STDOUT) == "1":
        discard_native_stdout()
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # "coordinator_address should be defined." / "Number of processes ..."
        raise ConfigError(
            f"cluster: jax.distributed.initialize could not set up the job ({e}); outside TPU, SLURM and "
            "Open MPI set cluster.coordinator_address, cluster.num_processes and cluster.process_id (or "
            "use `jaxcnn launch` on one machine)"
        ) from None
    _initialized = True
