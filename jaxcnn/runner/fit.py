"""Does the train step fit the devices' memory? Checked before anything is allocated, and after compiling.

A model too big for its devices used to be killed by the OS (or the accelerator allocator) with no
message. Two checks stop it first, each with one line giving the figures and what to change:

1. :func:`check_state`, **before the parameters exist**: from the abstract train state
   (:func:`jaxcnn.runner.state.abstract_state`: ``jax.ShapeDtypeStruct`` leaves carrying their
   shardings, built under ``nnx.eval_shape``, so nothing is allocated), the bytes each device holds:
   for every leaf, the bytes of *its shard* (its shape divided by the mesh axes its ``PartitionSpec``
   names, rounded up; a replicated leaf counts whole on every device) -- parameters, the other model
   state (BatchNorm statistics), the optimizer state, one gradient per parameter (sharded like it),
   and the input batch's shard. Activations are **not** counted (they depend on what XLA keeps for the
   backward pass), so the figure is a lower bound of the step's peak: the check never stops a model
   that fits; the second check covers the rest.
2. :func:`check_compiled`, **after compiling**: XLA's per-device memory analysis of the step,
   arguments + outputs - aliased (donated) buffers + temporaries (activations, workspace). Donated
   state is counted once, not twice (``temp + argument + output`` would count the donated state twice
   and stop models that fit); the generated code is not counted (one copy per process, not per device).

What a device has (:func:`device_memory`): on an accelerator, the smallest
``device.memory_stats()["bytes_limit"]`` of the devices (the allocator's limit); on CPU, the host's
memory (physical RAM, or the cgroup limit when lower) divided by this process's CPU devices, which
share it (other processes on the same host are not subtracted). When neither is known the checks pass.

``jaxcnn train --compile-only`` (:mod:`jaxcnn.runner.aot`) reports the same figures and never stops:
it is used to check pod-sized configs on a host whose RAM split over hundreds of fake CPU devices is
meaningless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxcnn.runner.config.typed import ConfigError, to_plain

if TYPE_CHECKING:
    from jaxcnn.runner.config import Config

_PARTS = {"params": "parameters", "rest": "model statistics", "opt_state": "optimizer state"}


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """What one device can hold.

    Attributes:
      bytes: usable bytes per device; None when unknown.
      source: where the figure comes from, in words (``"host RAM 23.4 GiB shared by 8 CPU devices"``).
    """

    bytes: int | None
    source: str


@dataclasses.dataclass(frozen=True)
class StateFootprint:
    """Bytes of the train state (and batch) on its fullest device, by part.

    Attributes:
      parts: ``{"parameters": bytes, "model statistics": ..., "optimizer state": ..., "gradients": ...,
        "input batch": ...}`` on the device that holds the most (all devices hold the same for the
        usual case of one mesh).
      replicated_fraction: share of ``total`` in leaves replicated whole on every device (kernels under
        ``data``), which placements that split the kernels would divide.
      num_params: parameter count of the model.
    """

    parts: dict[str, int]
    replicated_fraction: float
    num_params: int

    @property
    def total(self) -> int:
        """Bytes per device, all parts."""
        return sum(self.parts.values())


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def host_memory_bytes() -> int | None:
    """This host's memory: physical RAM (``SC_PHYS_PAGES * SC_PAGE_SIZE``), or the cgroup's memory
    limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) when that is lower; None if unknown."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and (ram is None or int(text) < ram):
            ram = int(text)
    return ram if ram and ram > 0 else None


def device_memory(devices: Sequence[Any] | None = None) -> DeviceMemory:
    """What each of ``devices`` can hold (default: this process's devices); see the module docstring.

    Only this process's devices are asked (another process's devices cannot be queried); on CPU the
    host memory is shared by this process's CPU devices.
    """
    local = [d for d in (devices if devices is not None else jax.local_devices()) if _is_local(d)]
    if not local:
        return DeviceMemory(None, "no local devices")
    limits = []
    for d in local:
        try:
            stats = d.memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    if limits and len(limits) == len(local):
        return DeviceMemory(min(limits), f"{local[0].platform} memory limit {format_bytes(min(limits))}")
    if all(d.platform == "cpu" for d in local):
        host = host_memory_bytes()
        cpus = len(jax.local_devices(backend="cpu"))
        if host is not None:
            return DeviceMemory(
                host // cpus, f"host RAM {format_bytes(host)} shared by {cpus} CPU device{'s' * (cpus > 1)}"
            )
    return DeviceMemory(None, f"{local[0].platform} devices report no memory limit")


def _is_local(device: Any) -> bool:
    return device.process_index == jax.process_index()


def shard_bytes(leaf: Any) -> int:
    """Bytes of one device's shard of ``leaf`` (an array or ``ShapeDtypeStruct`` with a sharding)."""
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
        sizes = dict(sharding.mesh.shape)
        spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
        shape = tuple(
            -(-dim // math.prod(sizes[a] for a in (axes if isinstance(axes, tuple) else (axes,))))
            if axes is not None
            else dim
            for dim, axes in zip(shape, spec, strict=False)
        )
    elif sharding is not None:
        with contextlib.suppress(Exception):  # e.g. an uneven split: count the whole leaf
            shape = tuple(sharding.shard_shape(shape))
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def _devices_of(leaf: Any) -> frozenset[Any]:
    sharding = getattr(leaf, "sharding", None)
    return frozenset(sharding.device_set) if sharding is not None else frozenset()


def state_footprint(state: dict[str, Any], batch: Iterable[Any] = ()) -> StateFootprint:
    """Per-device bytes of a (usually abstract) train state plus its gradients and the input batch.

    Args:
      state: a :data:`jaxcnn.runner.state.TrainState` whose leaves carry shardings (``abstract_state``).
      batch: the input batch's leaves with their shardings (``step.abstract_batch``).

    Returns:
      The footprint on the fullest device (see :class:`StateFootprint`).
    """
    groups = [(_PARTS[k], jax.tree.leaves(state[k])) for k in _PARTS if k in state]
    groups.append(("gradients", jax.tree.leaves(state.get("params", {}))))
    groups.append(("input batch", list(batch)))
    # {device set: {part: bytes}} first (leaves share a few device sets), then per device.
    by_set: dict[frozenset[Any], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total = replicated = 0
    for part, leaves in groups:
        for leaf in leaves:
            devices, nbytes = _devices_of(leaf), shard_bytes(leaf)
            by_set[devices][part] += nbytes
            total += nbytes
            full = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
            if len(devices) > 1 and nbytes == full:
                replicated += nbytes
    per_device: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for devices, parts in by_set.items():
        for d in devices or (None,):
            for part, nbytes in parts.items():
                per_device[d][part] += nbytes
    fullest = max(per_device.values(), key=lambda p: sum(p.values()), default={})
    names = [name for name, _ in groups]
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.get("params", {})))
    return StateFootprint(
        {name: fullest.get(name, 0) for name in names}, replicated / total if total else 0.0, num_params
    )


def compiled_bytes(compiled: Any) -> tuple[int | None, str]:
    """Per-device bytes of a compiled step from ``compiled.memory_analysis()``: arguments + outputs -
    aliased (donated) + temporaries, and the sum in words; ``(None, why)`` when XLA gives none."""
    try:
        memory = compiled.memory_analysis()
    except Exception as e:  # not every backend implements it
        return None, f"no memory analysis ({type(e).__name__})"
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")
    values = [getattr(memory, f, None) for f in fields]
    if memory is None or any(v is None for v in values):
        return None, "no memory analysis"
    arguments, outputs, aliased, temps = (int(v) for v in values)
    total = arguments + outputs - aliased + temps
    words = (
        f"arguments {format_bytes(arguments)} + outputs {format_bytes(outputs)} - donated "
        f"{format_bytes(aliased)} + temporaries {format_bytes(temps)}"
    )
    return total, words


def _remedy(fp: StateFootprint | None) -> str:
    """What to change; placements that split the kernels when most of the state is replicated."""
    if fp is not None and fp.replicated_fraction > 0.5:
        return (
            "fewer parameters (a smaller model.name or model.options width), more devices, or placements "
            "that split the kernels over k or c instead of replicating them (e.g. 3d@n=2,k=2,c=2 or filter "
            "instead of data)"
        )
    return "fewer parameters (a smaller model.name or model.options width) or more devices"


def check_state(
    state: dict[str, Any], batch: Iterable[Any] = (), *, subject: str = "the model", devices: Any = None
) -> StateFootprint:
    """Stops a train state that cannot fit its devices, before it is allocated.

    Args:
      state: the abstract train state (:func:`jaxcnn.runner.state.abstract_state`).
      batch: the abstract input batch (:func:`jaxcnn.runner.step.abstract_batch`).
      subject: the config keys that chose the model, for the message (``"model.name=resnet18 ..."``).
      devices: the devices to compare with (default: this process's).

    Returns:
      The footprint (see :func:`state_footprint`).

    Raises:
      ConfigError: the footprint exceeds what a device has (one line: both figures, what to change).
    """
    fp = state_footprint(state, batch)
    memory = device_memory(devices)
    if memory.bytes is not None and fp.total > memory.bytes:
        parts = ", ".join(f"{name} {format_bytes(b)}" for name, b in fp.parts.items() if b)
        replicated = (
            f"; {fp.replicated_fraction:.0%} of it is replicated on every device"
            if fp.replicated_fraction > 0.5
            else ""
        )
        raise ConfigError(
            f"{subject} ({fp.num_params:,} parameters) does not fit: its train state needs "
            f"{format_bytes(fp.total)} per device ({parts}; activations not counted) but a device has "
            f"{format_bytes(memory.bytes)} ({memory.source}){replicated}; use {_remedy(fp)}"
        )
    return fp


def model_subject(cfg: Config) -> str:
    """The config keys that chose the model, for messages: ``model.name=resnet18 with
    model.options={'width': 32} and model.algorithms=data``."""
    return (
        f"model.name={cfg.model.name} with model.options={to_plain(cfg.model.options)} and "
        f"model.algorithms={to_plain(cfg.model.algorithms)}"
    )


def check_compiled(
    compiled: Any, *, subject: str = "the model", devices: Any = None, footprint: StateFootprint | None = None
) -> int | None:
    """Stops a compiled step whose per-device memory (:func:`compiled_bytes`) exceeds a device's.

    Args:
      compiled: the compiled train step (``jit(...).lower(...).compile()``).
      subject: the config keys that chose the model, for the message.
      devices: the devices to compare with (default: this process's).
      footprint: :func:`check_state`'s result (for the advice).

    Returns:
      The compiled step's bytes per device, or None when XLA gives no memory analysis.

    Raises:
      ConfigError: the step needs more than a device has (one line: both figures, what to change).
    """
    needed, words = compiled_bytes(compiled)
    memory = device_memory(devices)
    if needed is not None and memory.bytes is not None and needed > memory.bytes:
        raise ConfigError(
            f"{subject}: the compiled train step needs {format_bytes(needed)} per device ({words}, XLA's "
            f"memory analysis) but a device has {format_bytes(memory.bytes)} ({memory.source}); use a "
            f"smaller train.batch_size or data.image_size (activations), or {_remedy(footprint)}"
        )
    return needed


def report(state_fp: StateFootprint, compiled: Any, devices: Any = None) -> dict[str, Any]:
    """The figures of both checks without stopping (``--compile-only``).

    Returns:
      ``{"memory_state_bytes_per_device", "memory_compiled_bytes_per_device", "device_memory_bytes",
      "device_memory_source", "memory_fits"}``; ``memory_fits`` is None when a figure is unknown.
    """
    needed, _ = compiled_bytes(compiled)
    memory = device_memory(devices)
    biggest = max(state_fp.total, needed or 0)
    return {
        "memory_state_bytes_per_device": state_fp.total,
        "memory_compiled_bytes_per_device": needed,
        "device_memory_bytes": memory.bytes,
        "device_memory_source": memory.source,
        "memory_fits": None if memory.bytes is None else biggest <= memory.bytes,
    }
