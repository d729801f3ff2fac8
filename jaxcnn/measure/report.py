"""What the meter returns: collectives, per-kind totals, memory figures (see :mod:`jaxcnn.measure`)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

KINDS: tuple[str, ...] = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


class HloParseError(ValueError):
    """The HLO text has a form the meter cannot charge without guessing."""


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
    """One collective instruction of the compiled program.

    Attributes:
      name: instruction name.
      kind: one of :data:`KINDS` (``-start`` suffix removed).
      computation: the HLO computation holding it.
      executions: how many times it runs (product of trip counts on its call path).
      buffer_bytes: S, the full (gathered / unreduced / permuted) buffer in bytes.
      groups: replica groups (for collective-permute: the (source, target) pairs).
      per_device: bytes each device receives over all executions.
    """

    name: str
    kind: str
    computation: str
    executions: int
    buffer_bytes: int
    groups: tuple[tuple[int, ...], ...]
    per_device: tuple[float, ...]

    @property
    def group_size(self) -> int:
        """Largest group size (2 for a permute)."""
        return max((len(g) for g in self.groups), default=1)

    @property
    def max_bytes(self) -> float:
        return max(self.per_device, default=0.0)

    @property
    def total_bytes(self) -> float:
        return float(sum(self.per_device))


@dataclasses.dataclass(frozen=True)
class KindStats:
    """Totals of one collective kind: executions and bytes received (max over devices, total)."""

    count: int
    max_bytes: float
    total_bytes: float


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """``compiled.memory_analysis()`` figures per device, in bytes."""

    temp_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    generated_code_bytes: int

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries - aliased (an upper estimate of the live peak)."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


@dataclasses.dataclass(frozen=True)
class CommReport:
    """Bytes received per device by one compiled program.

    Attributes:
      num_devices: devices of the program (partitions x replicas).
      ops: every collective, with its execution count and per-device bytes.
      memory: per-device memory figures of the compiled program (None for parsed text).
      notes: anything counted conservatively (e.g. conditionals).
    """

    num_devices: int
    ops: tuple[CollectiveOp, ...]
    memory: MemoryStats | None = None
    notes: tuple[str, ...] = ()

    @functools.cached_property
    def per_device(self) -> np.ndarray:
        """Bytes received by each device, all collectives together."""
        total = np.zeros(self.num_devices)
        for op in self.ops:
            total += np.asarray(op.per_device)
        return total

    @property
    def max_bytes(self) -> float:
        """Max over devices of the bytes a device receives (not the sum of per-kind maxima)."""
        return float(self.per_device.max(initial=0.0))

    @property
    def total_bytes(self) -> float:
        """Sum over devices of the bytes received."""
        return float(self.per_device.sum())

    @functools.cached_property
    def by_kind(self) -> dict[str, KindStats]:
        """Per collective kind (all of :data:`KINDS`, zero when absent)."""
        out = {}
        for kind in KINDS:
            ops = [op for op in self.ops if op.kind == kind]
            vec = sum((np.asarray(op.per_device) for op in ops), np.zeros(self.num_devices))
            out[kind] = KindStats(sum(op.executions for op in ops), float(vec.max()), float(vec.sum()))
        return out

    def count(self, kind: str) -> int:
        """Executions of collectives of ``kind``."""
        return self.by_kind[kind].count

    def __str__(self) -> str:
        lines = [f"{'collective':<20}{'count':>7}{'max B/device':>16}{'total B':>16}"]
        for kind, st in self.by_kind.items():
            if st.count:
                lines.append(f"{kind:<20}{st.count:>7}{st.max_bytes:>16,.0f}{st.total_bytes:>16,.0f}")
        runs = sum(op.executions for op in self.ops)
        lines.append(f"{'all':<20}{runs:>7}{self.max_bytes:>16,.0f}{self.total_bytes:>16,.0f}")
        lines.append(f"devices: {self.num_devices}")
        if self.memory is not None:
            m = self.memory
            lines.append(
                f"memory/device: args {m.argument_bytes:,} out {m.output_bytes:,} temp {m.temp_bytes:,} "
                f"alias {m.alias_bytes:,} code {m.generated_code_bytes:,} B"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)
