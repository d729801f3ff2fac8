"""A timing profile: what ``jaxcnn calibrate`` measured on one backend, as JSON in a cache directory.

A profile is keyed by what makes timings comparable: the platform (``cpu``, ``gpu``, ``tpu``), the
device kind (``jax.devices()[0].device_kind``), the device and process counts and the jax version.
It holds three fitted models (``docs/step_time.md``, "Calibration"):

- **collectives**, per kind (``all-gather``, ``reduce-scatter``, ``all-reduce``, ``all-to-all``,
  ``collective-permute``, the kinds of :mod:`jaxcnn.cost`): ``t = α·steps(g) + bytes / β`` for one
  collective over a group of ``g`` devices, ``bytes`` what each device receives as the cost model
  counts it (``docs/conventions.md``: ``S(g-1)/g`` for an all-gather of ``S``, ``2S(g-1)/g`` for an
  all-reduce, ``S`` for a permute), ``steps(g)`` the latency terms of the bandwidth-optimal algorithm
  (``g-1`` for the ring kinds, ``2(g-1)`` for an all-reduce, ``1`` for a permute);
- **convolutions**, per pass (``forward``, ``input_grad``, ``kernel_grad``): the local time on the
  per-device shapes of placements, ``t = a + MACs / R + bytes / B`` (bytes: what the pass reads and
  writes of x, kernel and y in its dtype);
- **memory-bound** work (BatchNorm, pooling, elementwise, the optimizer update): ``t = a + bytes / B``.

Each fit keeps the points it was fitted to, so a profile can be refitted or plotted later.

The directory is ``$JAXCNN_PROFILE_DIR``, else ``$XDG_CACHE_HOME/jaxcnn/profiles``, else
``~/.cache/jaxcnn/profiles``; a file per key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

# A profile fits the collective kinds of jaxcnn.cost, with the latency terms of their algorithms.
from jaxcnn.cost import COLLECTIVE_KINDS as COLLECTIVE_KINDS
from jaxcnn.cost import latency_steps

#: The passes of a convolution a profile fits.
CONV_PASSES = ("forward", "input_grad", "kernel_grad")
#: The profile file format; a file of another version is not read.
VERSION = 1
ENV_DIR = "JAXCNN_PROFILE_DIR"


def check_conv_pass(name: str) -> None:
    """Raises ValueError unless ``name`` is one of :data:`CONV_PASSES`."""
    if name not in CONV_PASSES:
        raise ValueError(f"unknown convolution pass {name!r}; valid: {', '.join(CONV_PASSES)}")


@dataclasses.dataclass(frozen=True)
class ProfileKey:
    """What makes two profiles' timings comparable."""

    platform: str
    device_kind: str
    device_count: int
    process_count: int
    jax_version: str

    def file_name(self) -> str:
        """``<platform>-<device kind>-<devices>x<processes>-jax<version>.json`` (safe characters only)."""
        kind = re.sub(r"[^A-Za-z0-9.]+", "_", self.device_kind).strip("_") or "unknown"
        return f"{self.platform}-{kind}-{self.device_count}x{self.process_count}-jax{self.jax_version}.json"


def current_key() -> ProfileKey:
    """The key of the backend JAX runs on now (starts JAX's backend)."""
    import jax

    device = jax.devices()[0]
    return ProfileKey(
        platform=device.platform,
        device_kind=str(device.device_kind),
        device_count=jax.device_count(),
        process_count=jax.process_count(),
        jax_version=jax.__version__,
    )


@dataclasses.dataclass(frozen=True)
class CollectiveFit:
    """``t = alpha_s · latency_steps(kind, g) + bytes / beta_bytes_per_s`` for one collective.

    Attributes:
      alpha_s: seconds per latency step.
      beta_bytes_per_s: bytes received per device per second.
      points: the measurements ``(group, bytes received per device, seconds)`` it was fitted to.
    """

    alpha_s: float
    beta_bytes_per_s: float
    points: tuple[tuple[int, float, float], ...] = ()

    def seconds(self, kind: str, group: int, received_bytes: float) -> float:
        """Predicted seconds of one ``kind`` collective over ``group`` devices moving ``received_bytes``
        to each; 0 for a group of one device."""
        if group <= 1:
            return 0.0
        return self.alpha_s * latency_steps(kind, group) + received_bytes / self.beta_bytes_per_s


@dataclasses.dataclass(frozen=True)
class LinearFit:
    """``t = intercept_s + Σ_i features[i] / rates[i]`` (a rate of ``inf`` drops its feature).

    Attributes:
      intercept_s: fixed seconds per call.
      rates: per feature, units per second (``MACs/s``, ``bytes/s``).
      features: the features' names, in ``rates`` order.
      points: the measurements ``(feature values..., seconds)`` it was fitted to.
    """

    intercept_s: float
    rates: tuple[float, ...]
    features: tuple[str, ...]
    points: tuple[tuple[float, ...], ...] = ()

    def seconds(self, *values: float) -> float:
        """Predicted seconds for the feature ``values`` (in ``features`` order)."""
        if len(values) != len(self.rates):
            raise ValueError(
                f"expected {len(self.rates)} values ({', '.join(self.features)}), got {len(values)}"
            )
        return self.intercept_s + sum(v / r for v, r in zip(values, self.rates, strict=True) if r > 0)


@dataclasses.dataclass(frozen=True)
class Profile:
    """A backend's fitted timing models (module docstring).

    Attributes:
      key: the backend.
      collectives: ``{kind: CollectiveFit}`` for the kinds measured.
      conv: ``{pass: LinearFit}`` over ``("macs", "bytes")`` for the passes measured.
      memory: memory-bound work over ``("bytes",)``, or None.
      launch_s: seconds to launch one program on every device and wait for it (dispatch, launch and
        the devices' synchronisation: what a step pays beyond its operations).
      barrier: what a collective costs beyond its own fit when the devices arrive at it from
        computation, over ``("compute_s",)`` (:mod:`jaxcnn.timing.barrier`: seconds per collective,
        and the share of the work before it that is added); None where not measured.
      created: ISO 8601 time of the calibration.
      calibration_s: how long it took.
      notes: free-form facts of the measurement (repeats, sizes, dtype).
    """

    key: ProfileKey
    collectives: Mapping[str, CollectiveFit]
    conv: Mapping[str, LinearFit]
    memory: LinearFit | None = None
    launch_s: float = 0.0
    barrier: LinearFit | None = None
    created: str = ""
    calibration_s: float = 0.0
    notes: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_json`` reads it back)."""
        return {
            "version": VERSION,
            "key": dataclasses.asdict(self.key),
            "created": self.created,
            "calibration_s": self.calibration_s,
            "notes": dict(self.notes),
            "collectives": {kind: dataclasses.asdict(fit) for kind, fit in self.collectives.items()},
            "conv": {name: dataclasses.asdict(fit) for name, fit in self.conv.items()},
            "memory": None if self.memory is None else dataclasses.asdict(self.memory),
            "launch_s": self.launch_s,
            "barrier": None if self.barrier is None else dataclasses.asdict(self.barrier),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        """The profile ``to_json`` wrote.

        Raises:
          ValueError: another format version, or a field missing or of the wrong kind.
        """
        if data.get("version") != VERSION:
            raise ValueError(f"profile format version {data.get('version')!r}, this jaxcnn reads {VERSION}")
        try:

            def linear(d: Mapping[str, Any]) -> LinearFit:
                return LinearFit(
                    float(d["intercept_s"]),
                    tuple(float(r) for r in d["rates"]),
                    tuple(str(f) for f in d["features"]),
                    tuple(tuple(float(v) for v in p) for p in d.get("points", ())),
                )

            collectives = {}
            for kind, d in data["collectives"].items():
                latency_steps(kind, 1)  # a known kind
                points = tuple((int(g), float(b), float(t)) for g, b, t in d.get("points", ()))
                collectives[kind] = CollectiveFit(float(d["alpha_s"]), float(d["beta_bytes_per_s"]), points)
            conv = {}
            for name, d in data["conv"].items():
                check_conv_pass(name)
                conv[name] = linear(d)
            memory = None if data.get("memory") is None else linear(data["memory"])
            return cls(
                key=ProfileKey(**data["key"]),
                collectives=collectives,
                conv=conv,
                memory=memory,
                launch_s=float(data.get("launch_s", 0.0)),
                barrier=None if data.get("barrier") is None else linear(data["barrier"]),
                created=str(data.get("created", "")),
                calibration_s=float(data.get("calibration_s", 0.0)),
                notes=dict(data.get("notes", {})),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a jaxcnn timing profile: {type(e).__name__}: {e}") from None


def profile_dir(override: str | None = None) -> str:
    """Where profiles live: ``override``, else ``$JAXCNN_PROFILE_DIR``, else the user's cache directory."""
    if override:
        return override
    if os.environ.get(ENV_DIR):
        return os.environ[ENV_DIR]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "jaxcnn", "profiles")


def profile_path(key: ProfileKey, directory: str | None = None) -> str:
    """The file of ``key``'s profile."""
    return os.path.join(profile_dir(directory), key.file_name())


def save_profile(profile: Profile, directory: str | None = None) -> str:
    """Writes ``profile`` (atomically: a temporary file renamed over the old one); returns its path."""
    path = profile_path(profile.key, directory)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(profile.to_json(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_profile(key: ProfileKey, directory: str | None = None) -> Profile | None:
    """``key``'s profile, or None when there is none.

    Raises:
      ValueError: the file exists but is not a profile this jaxcnn reads (names the file).
    """
    path = profile_path(key, directory)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return Profile.from_json(json.load(f))
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {e}; run jaxcnn calibrate again") from None


def fit_linear(
    features: Sequence[Sequence[float]],
    seconds: Sequence[float],
    names: Sequence[str],
    *,
    intercept: bool = True,
) -> LinearFit:
    """Least squares ``t = a + Σ f_i·c_i`` with every coefficient ``a, c_i ≥ 0`` (relative errors weighted
    alike: each row is divided by its ``t``), as a :class:`LinearFit` (rate ``1/c_i``; ``inf`` when
    ``c_i = 0``). Without ``intercept``, ``a = 0``.

    Raises:
      ValueError: fewer points than coefficients, or a non-positive time.
    """
    import numpy as np
    from scipy.optimize import nnls

    t = np.asarray(seconds, dtype=float)
    x = np.asarray(features, dtype=float).reshape(len(t), len(names))
    columns = len(names) + intercept
    if len(t) < columns:
        raise ValueError(f"{len(t)} points cannot fit {columns} coefficients")
    if not np.all(t > 0):
        raise ValueError(f"times must be positive, got {t.min()}")
    design = (np.hstack([np.ones((len(t), 1)), x]) if intercept else x) / t[:, None]
    coef, _ = nnls(design, np.ones(len(t)))
    a, c = (float(coef[0]), coef[1:]) if intercept else (0.0, coef)
    rates = tuple(float(1 / v) if v > 0 else float("inf") for v in c)
    points = tuple((*map(float, row), float(s)) for row, s in zip(x, t, strict=True))
    return LinearFit(a, rates, tuple(names), points)
