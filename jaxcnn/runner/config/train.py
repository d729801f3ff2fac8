"""The training sections of the run config: the loop, the optimizer and checkpoints, and bounded floats.

Re-exported by :mod:`jaxcnn.runner.config` (the one place to import config models from). Every float
key is finite and bounded (:func:`bounded_float`): ``optimizer.learning_rate=.inf`` or ``.nan`` is a
one-line config error at load time, never a run that trains on NaN.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, Strict, field_validator, model_validator

from jaxcnn.runner.config.typed import Bool, Int, NonNegativeInt, PositiveInt, Section, fail


def bounded_float(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Any:
    """A strict float type that must be finite and within ``[low, high]`` (``(`` / ``)`` if open).

    The error reads ``<key>: must be finite and > 0, got inf`` (or ``... in [0, 1), got 1.5``); the
    bounds also appear in the JSON schema.

    Args:
      low: smallest valid value (None: no lower bound).
      high: largest valid value (None: no upper bound).
      low_open: ``low`` itself is invalid.
      high_open: ``high`` itself is invalid.
    """
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        bounds = f"{'<' if high_open else '<='} {high:g}"
    else:
        bounds = ""
    wanted = f"finite and {bounds}" if bounds else "finite"

    def check(value: float) -> float:
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            fail(f"must be {wanted}, got {value!r}")
        return value

    schema: dict[str, float] = {}
    if low is not None:
        schema["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if high_open else "maximum"] = high
    return Annotated[float, Strict(), AfterValidator(check), Field(json_schema_extra=schema or None)]


PositiveFloat = bounded_float(0, low_open=True)
"""Finite and > 0."""
NonNegativeFloat = bounded_float(0)
"""Finite and >= 0."""
UnitFloat = bounded_float(0, 1)
"""Finite and in [0, 1]."""
Beta = bounded_float(0, 1, high_open=True)
"""Finite and in [0, 1): a decay rate (momentum, Adam betas)."""
Fraction = bounded_float(0, 1, low_open=True, high_open=True)
"""Finite and in (0, 1): a proper fraction (a held-out split)."""
FiniteFloat = bounded_float()
"""Any finite float."""


class TrainConfig(Section):
    """The training loop."""

    key_path: ClassVar[str] = "train"

    steps: PositiveInt = Field(
        500, description="optimizer steps in total (a resumed run continues up to this many)"
    )
    batch_size: PositiveInt = Field(
        64,
        description="global batch size (all devices, all hosts); a multiple of mesh.n, checked when the "
        "config loads if mesh.n is set, else when the mesh is resolved (with mesh.n=-1 and "
        "model.algorithms: auto any size works: see MeshConfig.resolve). It may be smaller than the "
        "device count: devices that share a batch shard hold the same rows (replicas), and each process "
        "loads the rows its devices hold",
    )
    eval_every: NonNegativeInt = Field(
        100,
        description="evaluate on the test split every this many steps (and at the end); 0 = only at the end",
    )
    eval_batch_size: PositiveInt = Field(
        128,
        description="global batch size for evaluation (the last batch is padded and masked); a multiple "
        "of mesh.n like batch_size",
    )
    log_every: PositiveInt = Field(
        10,
        description="fetch metrics, append to metrics.jsonl and check the loss (NaN/inf, divergence) every "
        "this many steps",
    )
    divergence_factor: NonNegativeFloat = Field(
        100.0,
        description="stop the run (exit 1) when a step's training loss exceeds this many times its early "
        "value: the lowest loss of the run's first train.log_every steps, which is at most the loss of "
        "the initial parameters (about ln(classes) for a classifier); 0 = off, else > 1. See "
        "jaxcnn.runner.divergence",
    )
    tensorboard: Bool = Field(
        True,
        description="write TensorBoard event files to <run dir>/tensorboard (process 0; every metrics.jsonl "
        "record as scalars, with the communication bytes per step): see jaxcnn.runner.tensorboard",
    )
    profile_steps: tuple[Int, ...] | None = Field(
        None,
        description="[a, b]: record a JAX profiler trace of optimizer steps a..b (1 <= a <= b <= steps) "
        "under <run dir>/profile (TensorBoard's profile plugin or Perfetto); null = none. See "
        "jaxcnn.runner.profiling",
    )

    @field_validator("divergence_factor")
    @classmethod
    def _off_or_above_one(cls, factor: float) -> float:
        if 0 < factor <= 1:
            fail(f"must be 0 (off) or > 1 (a multiple of the early loss), got {factor!r}")
        return factor

    @model_validator(mode="after")
    def _profile_window(self) -> TrainConfig:
        window = self.profile_steps
        if window is not None and not (len(window) == 2 and 1 <= window[0] <= window[1] <= self.steps):
            fail(
                f"must be [a, b] with 1 <= a <= b <= train.steps ({self.steps}), or null; got {list(window)}",
                ".profile_steps",
            )
        return self


class OptimizerConfig(Section):
    """Optax optimizer and learning-rate schedule. Every float is finite (see :func:`bounded_float`)."""

    key_path: ClassVar[str] = "optimizer"

    name: Literal["sgd", "momentum", "adam", "adamw"] = Field(
        "adam", description="sgd, momentum (SGD with Nesterov-free momentum), adam or adamw"
    )
    learning_rate: PositiveFloat = Field(1e-3, description="peak learning rate (finite, > 0)")
    schedule: Literal["constant", "cosine", "warmup_cosine"] = Field(
        "constant",
        description="constant, cosine (decay to final_lr_fraction over train.steps) or warmup_cosine "
        "(linear warmup over warmup_steps then cosine)",
    )
    warmup_steps: NonNegativeInt = Field(0, description="warmup length for warmup_cosine")
    final_lr_fraction: UnitFloat = Field(
        0.0, description="final learning rate as a fraction of the peak (cosine schedules), in [0, 1]"
    )
    momentum: Beta = Field(0.9, description="momentum coefficient (momentum), in [0, 1)")
    b1: Beta = Field(0.9, description="Adam beta1 (adam, adamw), in [0, 1)")
    b2: Beta = Field(0.999, description="Adam beta2 (adam, adamw), in [0, 1)")
    weight_decay: NonNegativeFloat = Field(
        0.0,
        description="decoupled weight decay (adamw) or L2 added to the gradient (others); finite, >= 0; "
        "0 = off",
    )
    grad_clip_norm: NonNegativeFloat = Field(
        0.0, description="clip the global gradient norm to this value (finite, >= 0); 0 = off"
    )


class CheckpointConfig(Section):
    """Orbax checkpoints under ``<run dir>/checkpoints``."""

    key_path: ClassVar[str] = "checkpoint"

    enabled: Bool = Field(True, description="write checkpoints at all (every host writes its shards)")
    every: NonNegativeInt = Field(
        100, description="save every this many steps (and always at the end); 0 = only at the end"
    )
    max_to_keep: PositiveInt = Field(3, description="keep this many most recent checkpoints")


__all__ = [
    "Beta",
    "CheckpointConfig",
    "FiniteFloat",
    "Fraction",
    "NonNegativeFloat",
    "OptimizerConfig",
    "PositiveFloat",
    "TrainConfig",
    "UnitFloat",
    "bounded_float",
]
