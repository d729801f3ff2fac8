"""Timing profiles from published figures, for hardware that cannot be measured here.

``jaxcnn calibrate`` fits a :class:`~jaxcnn.timing.profile.Profile` on the backend it runs on. For TPU
v4, v5e and v5p and for NVIDIA H100 / H200 SXM nodes this module builds one from vendor figures instead
(``docs/step_time.md``, "Presets (published figures)", lists each figure, its source and which are
estimates):

- **collectives** (every kind of :data:`~jaxcnn.timing.profile.COLLECTIVE_KINDS`) from the chip's
  fast links (TPU ICI within a slice, NVLink 4 within an 8-GPU node): ``β`` the bytes a device can
  *receive* per second over the links a collective uses, times ``link_efficiency``; ``α`` a per-step
  latency. :func:`preset_links` also gives the slow links' fit (TPU DCN between slices, InfiniBand NDR
  between nodes), which a profile keeps in ``notes["dcn"]``;
- **convolutions** (every pass of :data:`~jaxcnn.timing.profile.CONV_PASSES`): ``R`` = peak matmul
  FLOP/s / 2 (a MAC is two FLOPs) times ``efficiency``, ``B`` = HBM bandwidth times
  ``memory_efficiency``;
- **memory-bound work**: ``B`` as for convolutions.

Which links a collective uses: NVLink goes through NVSwitch, so every collective gets the GPU's whole
NVLink bandwidth. ICI is a torus of direct links (6 per chip on v4/v5p, 4 on v5e): a ring collective
along one mesh axis (one torus dimension with its wraparound) receives on 2 links, a permute (a shift
along one axis) on 1. ``ici_links`` overrides both (e.g. the chip's every link, for an axis spread over
several torus dimensions).

The fits keep no points (nothing was measured); ``ProfileKey.jax_version`` is ``"preset"``.
"""

from __future__ import annotations

import dataclasses

from jaxcnn.timing.profile import (
    COLLECTIVE_KINDS,
    CONV_PASSES,
    CollectiveFit,
    LinearFit,
    Profile,
    ProfileKey,
)

#: Achievable fraction of peak matmul FLOP/s for convolutions (estimate; ``docs/step_time.md``).
DEFAULT_EFFICIENCY = 0.5
#: Achievable fraction of peak HBM bandwidth (estimate).
DEFAULT_MEMORY_EFFICIENCY = 0.8
#: Achievable fraction of peak link bandwidth in a collective (estimate).
DEFAULT_LINK_EFFICIENCY = 0.8
#: The dtypes a preset has matmul rates for: float32 at JAX's default precision (TPU: one bf16 pass;
#: H100/H200: TF32), float32 at ``Precision.HIGHEST`` (TPU: six bf16 passes; GPU: FP32 CUDA cores).
DTYPES = ("float32", "bfloat16", "float32-highest")

_GB = 1e9
_GIB = 2**30
_T = 1e12


@dataclasses.dataclass(frozen=True)
class HardwarePreset:
    """One chip and its links, from published figures (per chip; bandwidths in bytes per second).

    Attributes:
      name: the preset's name (a key of :data:`PRESETS`).
      platform: ``"tpu"`` or ``"gpu"``, as ``jax.devices()[0].platform``.
      device_kind: ``jax.devices()[0].device_kind`` on this hardware.
      bf16_flops: peak dense bf16 matmul FLOP/s.
      f32_flops: peak matmul FLOP/s on float32 inputs at JAX's default precision (``f32_mode``).
      f32_mode: what the default precision runs float32 matmuls on.
      f32_highest_flops: peak FLOP/s for float32 at ``Precision.HIGHEST``.
      hbm_bytes: HBM capacity.
      hbm_bytes_per_s: peak HBM bandwidth.
      fast_link: the fast links' name; ``fast_topology`` ``"torus"`` (direct links) or ``"switch"``.
      fast_links: links per chip.
      fast_receive_bytes_per_s: what the chip can receive per second over all its fast links (one
        direction; a bidirectional figure halved).
      fast_alpha_s: seconds per latency step on the fast links.
      slow_link: the slow links' name (between slices / nodes).
      slow_receive_bytes_per_s: what one chip can receive per second over them (a host's NICs divided
        by its chips).
      slow_alpha_s: seconds per latency step on the slow links.
      chips_per_host: chips one host (JAX process) drives.
      estimates: the attributes that are estimates rather than published figures.
    """

    name: str
    platform: str
    device_kind: str
    bf16_flops: float
    f32_flops: float
    f32_mode: str
    f32_highest_flops: float
    hbm_bytes: float
    hbm_bytes_per_s: float
    fast_link: str
    fast_topology: str
    fast_links: int
    fast_receive_bytes_per_s: float
    fast_alpha_s: float
    slow_link: str
    slow_receive_bytes_per_s: float
    slow_alpha_s: float
    chips_per_host: int
    estimates: tuple[str, ...] = ()


# TPU: Google Cloud TPU system-architecture pages (v4, v5e, v5p); v4's ICI (45 GB/s per link one way) and
# DCN (6.25e9 B/s per chip) from "How to Scale Your Model" (jax-ml/scaling-book), as is the illustrative
# 1 µs ICI hop latency. v5p DCN: 50 Gbps per chip; v5e: 2 x 100 Gbps NICs per 8-chip host. f32 at
# DEFAULT precision runs one bf16 MXU pass, at HIGHEST six (jax.lax.Precision).
# GPU: NVIDIA H100 / H200 SXM datasheets (sparsity figures halved for dense); DGX H100/H200: one 400 Gb/s
# ConnectX-7 (NDR) port per GPU. Latencies: NCCL's tuning model (src/graph/tuning.cc, ring, Simple
# protocol: NVLink 3.4 µs, network 14 µs per step); TPU DCN has no published figure and reuses 14 µs.


def _tpu(
    name: str,
    kind: str,
    bf16_t: float,
    hbm: float,
    hbm_gb_s: float,
    links: int,
    ici_rx: float,
    dcn_rx: float,
    chips: int,
) -> HardwarePreset:
    return HardwarePreset(
        name=name,
        platform="tpu",
        device_kind=kind,
        bf16_flops=bf16_t * _T,
        f32_flops=bf16_t * _T,
        f32_mode="bf16 MXU, one pass",
        f32_highest_flops=bf16_t * _T / 6,
        hbm_bytes=hbm,
        hbm_bytes_per_s=hbm_gb_s * _GB,
        fast_link="ICI",
        fast_topology="torus",
        fast_links=links,
        fast_receive_bytes_per_s=ici_rx,
        fast_alpha_s=1e-6,
        slow_link="DCN",
        slow_receive_bytes_per_s=dcn_rx,
        slow_alpha_s=14e-6,
        chips_per_host=chips,
        estimates=("fast_alpha_s", "slow_alpha_s", "f32_highest_flops"),
    )


def _gpu(name: str, kind: str, hbm: float, hbm_b_s: float) -> HardwarePreset:
    return HardwarePreset(
        name=name,
        platform="gpu",
        device_kind=kind,
        bf16_flops=1979 * _T / 2,
        f32_flops=989 * _T / 2,
        f32_mode="TF32 tensor cores",
        f32_highest_flops=67 * _T,
        hbm_bytes=hbm,
        hbm_bytes_per_s=hbm_b_s,
        fast_link="NVLink 4",
        fast_topology="switch",
        fast_links=18,
        fast_receive_bytes_per_s=900 * _GB / 2,
        fast_alpha_s=3.4e-6,
        slow_link="InfiniBand NDR",
        slow_receive_bytes_per_s=400e9 / 8,
        slow_alpha_s=14e-6,
        chips_per_host=8,
        estimates=("fast_alpha_s", "slow_alpha_s"),  # NCCL's model constants, not measured latencies
    )


PRESETS: dict[str, HardwarePreset] = {
    p.name: p
    for p in (
        _tpu("tpu-v4", "TPU v4", 275, 32 * _GIB, 1200, 6, 6 * 45 * _GB, 6.25 * _GB, 4),
        _tpu("tpu-v5e", "TPU v5 lite", 197, 16 * _GB, 819, 4, 400 * _GB / 2, 2 * 100e9 / 8 / 8, 8),
        _tpu("tpu-v5p", "TPU v5", 459, 95 * _GIB, 2765, 6, 1200 * _GB / 2, 50e9 / 8, 4),
        _gpu("h100", "NVIDIA H100 80GB HBM3", 80 * _GB, 3.35e12),
        _gpu("h200", "NVIDIA H200", 141 * _GB, 4.8e12),
    )
}


def get_preset(name: str) -> HardwarePreset:
    """The preset called ``name``.

    Raises:
      ValueError: no such preset (names the valid ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown hardware preset {name!r}; valid: {', '.join(PRESETS)}") from None


def _fast_links_used(preset: HardwarePreset, kind: str, ici_links: int | None) -> int:
    if preset.fast_topology == "switch":
        if ici_links is not None:
            raise ValueError(f"{preset.name}: {preset.fast_link} is switched; ici_links does not apply")
        return preset.fast_links
    if ici_links is None:
        return 1 if kind == "collective-permute" else 2
    if not 1 <= ici_links <= preset.fast_links:
        raise ValueError(f"{preset.name}: ici_links must be in 1..{preset.fast_links}, got {ici_links}")
    return ici_links


def _fast_fit(
    preset: HardwarePreset, kind: str, ici_links: int | None, link_efficiency: float
) -> CollectiveFit:
    links = _fast_links_used(preset, kind, ici_links)
    beta = preset.fast_receive_bytes_per_s * links / preset.fast_links * link_efficiency
    return CollectiveFit(preset.fast_alpha_s, beta)


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def preset_links(
    name: str, *, ici_links: int | None = None, link_efficiency: float = DEFAULT_LINK_EFFICIENCY
) -> dict[str, CollectiveFit]:
    """``{"ici": fit, "dcn": fit}``: the fast links' fit (TPU ICI, NVLink) for a ring collective
    (all-gather, reduce-scatter, all-reduce, all-to-all; module docstring for ``ici_links``) and the slow
    links' (TPU DCN, InfiniBand NDR), both derated by ``link_efficiency``.

    Raises:
      ValueError: an unknown preset, ``ici_links`` out of range or given for NVLink, or an efficiency
        outside (0, 1].
    """
    preset = get_preset(name)
    _check_fraction("link_efficiency", link_efficiency)
    return {
        "ici": _fast_fit(preset, "all-gather", ici_links, link_efficiency),
        "dcn": CollectiveFit(preset.slow_alpha_s, preset.slow_receive_bytes_per_s * link_efficiency),
    }


def preset_profile(
    name: str,
    device_count: int,
    *,
    hosts: int = 1,
    efficiency: float = DEFAULT_EFFICIENCY,
    memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY,
    link_efficiency: float = DEFAULT_LINK_EFFICIENCY,
    dtype: str = "float32",
    ici_links: int | None = None,
    op_overhead_s: float = 0.0,
) -> Profile:
    """A :class:`Profile` for ``device_count`` chips of preset ``name`` driven by ``hosts`` processes.

    Args:
      name: a key of :data:`PRESETS`.
      device_count: the chips (JAX devices).
      hosts: the JAX processes (the key's ``process_count``); each drives at most ``chips_per_host``.
      efficiency: the fraction of peak matmul FLOP/s convolutions achieve.
      memory_efficiency: the fraction of peak HBM bandwidth reads and writes achieve.
      link_efficiency: the fraction of peak link bandwidth collectives achieve.
      dtype: which matmul rate (:data:`DTYPES`); ``"float32"`` is what ``jaxcnn calibrate`` measures.
      ici_links: the ICI links a collective receives on (module docstring); TPU only.
      op_overhead_s: the fits' intercept, seconds per convolution or memory-bound op (no published
        figure: 0 unless given).

    Raises:
      ValueError: an unknown preset or dtype, counts that do not fit the hardware, or an efficiency
        outside (0, 1].
    """
    preset = get_preset(name)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    for label, value in (
        ("efficiency", efficiency),
        ("memory_efficiency", memory_efficiency),
        ("link_efficiency", link_efficiency),
    ):
        _check_fraction(label, value)
    if device_count < 1 or hosts < 1 or device_count % hosts:
        raise ValueError(f"{device_count} devices cannot be split evenly over {hosts} hosts")
    if device_count // hosts > preset.chips_per_host:
        raise ValueError(
            f"{name}: a host drives at most {preset.chips_per_host} chips, got {device_count // hosts}"
        )
    if op_overhead_s < 0:
        raise ValueError(f"op_overhead_s must be >= 0, got {op_overhead_s}")
    flops = {"float32": preset.f32_flops, "bfloat16": preset.bf16_flops}.get(dtype, preset.f32_highest_flops)
    macs_per_s = flops / 2 * efficiency
    bytes_per_s = preset.hbm_bytes_per_s * memory_efficiency
    conv = {p: LinearFit(op_overhead_s, (macs_per_s, bytes_per_s), ("macs", "bytes")) for p in CONV_PASSES}
    collectives = {k: _fast_fit(preset, k, ici_links, link_efficiency) for k in COLLECTIVE_KINDS}
    dcn = preset_links(name, ici_links=ici_links, link_efficiency=link_efficiency)["dcn"]
    return Profile(
        key=ProfileKey(preset.platform, preset.device_kind, device_count, hosts, "preset"),
        collectives=collectives,
        conv=conv,
        memory=LinearFit(op_overhead_s, (bytes_per_s,), ("bytes",)),
        notes={
            "preset": name,
            "source": "published figures, docs/step_time.md (Presets)",
            "dtype": dtype,
            "f32_mode": preset.f32_mode,
            "efficiency": efficiency,
            "memory_efficiency": memory_efficiency,
            "link_efficiency": link_efficiency,
            "ici_links": ici_links,
            "fast_link": preset.fast_link,
            "slow_link": preset.slow_link,
            "dcn": {"alpha_s": dcn.alpha_s, "beta_bytes_per_s": dcn.beta_bytes_per_s},
            "hbm_bytes": preset.hbm_bytes,
            "estimates": list(preset.estimates),
        },
    )
