"""Virtual CPU devices for laptops, CI and compile-only sweeps: set before JAX's backend starts."""

from __future__ import annotations

import os

FLAG = "--xla_force_host_platform_device_count"


def with_cpu_device_count(flags: str, count: int) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the CPU device count set to ``count``."""
    kept = [f for f in flags.split() if not f.startswith(FLAG)]
    return " ".join([*kept, f"{FLAG}={count}"])


def cpu_devices_problem(count: int, minimum: int = 1, why: str = "") -> str | None:
    """Applies ``--cpu-devices count`` (:func:`request_cpu_devices`); what is wrong with it, or None.

    Returns:
      ``"--cpu-devices must be >= {minimum}{why}, got {count}"``, or ``"--cpu-devices has no effect: JAX
      already started"``, or None when the devices were set.
    """
    if count < minimum:
        return f"--cpu-devices must be >= {minimum}{why}, got {count}"
    if not request_cpu_devices(count):
        return "--cpu-devices has no effect: JAX already started"
    return None


def request_cpu_devices(count: int) -> bool:
    """Gives the CPU platform ``count`` devices (accelerator platforms are unaffected).

    Sets JAX's public ``jax_num_cpu_devices`` option, which JAX refuses once its backend has started,
    and ``XLA_FLAGS`` for child processes.

    Returns:
      False when the backend already started (the request cannot take effect in this process).
    """
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # "... should be updated before backends are initialized"
        return False
    os.environ["XLA_FLAGS"] = with_cpu_device_count(os.environ.get("XLA_FLAGS", ""), count)
    return True
