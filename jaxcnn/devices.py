"""Virtual CPU devices for laptops, CI and compile-only sweeps: set before JAX's backend starts."""

from __future__ import annotations

import os

FLAG = "--xla_force_host_platform_device_count"


def backend_started() -> bool:
    """Whether JAX's backend is initialised (after that, XLA_FLAGS no longer changes the devices)."""
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", {}))


def with_cpu_device_count(flags: str, count: int) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the CPU device count set to ``count``."""
    kept = [f for f in flags.split() if not f.startswith(FLAG)]
    return " ".join([*kept, f"{FLAG}={count}"])


def request_cpu_devices(count: int) -> bool:
    """Gives the CPU platform ``count`` devices via ``XLA_FLAGS`` (accelerator platforms are unaffected).

    Returns:
      False when the backend already started (the request cannot take effect in this process).
    """
    if backend_started():
        return False
    os.environ["XLA_FLAGS"] = with_cpu_device_count(os.environ.get("XLA_FLAGS", ""), count)
    return True
