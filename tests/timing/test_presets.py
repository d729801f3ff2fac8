"""Hardware presets: profiles from published figures (no backend work)."""

from __future__ import annotations

import json

import pytest

from jaxcnn.timing import presets
from jaxcnn.timing.profile import COLLECTIVE_KINDS, CONV_PASSES, Profile


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_builds_a_full_profile(name: str) -> None:
    preset = presets.PRESETS[name]
    p = presets.preset_profile(name, preset.chips_per_host)
    assert set(p.collectives) == set(COLLECTIVE_KINDS)
    assert set(p.conv) == set(CONV_PASSES)
    assert p.memory is not None and p.memory.features == ("bytes",)
    assert all(fit.features == ("macs", "bytes") for fit in p.conv.values())
    assert p.key.platform == preset.platform and p.key.device_kind == preset.device_kind
    assert (p.key.device_count, p.key.process_count, p.key.jax_version) == (
        preset.chips_per_host,
        1,
        "preset",
    )
    for fit in p.collectives.values():
        assert fit.alpha_s > 0 and fit.beta_bytes_per_s > 0
    links = presets.preset_links(name)
    assert set(links) == {"ici", "dcn"}
    assert links["ici"].beta_bytes_per_s > links["dcn"].beta_bytes_per_s
    assert p.notes["dcn"]["beta_bytes_per_s"] == links["dcn"].beta_bytes_per_s


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_a_bigger_all_gather_takes_longer(name: str) -> None:
    fit = presets.preset_profile(name, 4)
    ag = fit.collectives["all-gather"]
    assert ag.seconds("all-gather", 4, 1 << 20) < ag.seconds("all-gather", 4, 1 << 24)
    assert ag.seconds("all-gather", 4, 1 << 20) < ag.seconds("all-gather", 8, 1 << 20)  # more steps


def test_nvlink_is_faster_than_infiniband() -> None:
    links = presets.preset_links("h100")
    assert links["ici"].beta_bytes_per_s > 5 * links["dcn"].beta_bytes_per_s
    # NVLink 4: 900 GB/s bidirectional = 450 GB/s received; NDR: 400 Gb/s = 50 GB/s; both derated alike.
    ratio = links["ici"].beta_bytes_per_s / links["dcn"].beta_bytes_per_s
    assert ratio == pytest.approx(9.0)


def test_v5p_out_computes_v5e_in_bf16() -> None:
    v5p = presets.preset_profile("tpu-v5p", 4, dtype="bfloat16").conv["forward"]
    v5e = presets.preset_profile("tpu-v5e", 4, dtype="bfloat16").conv["forward"]
    assert v5p.rates[0] > v5e.rates[0]
    # MACs/s = FLOP/s / 2, times the efficiency.
    assert v5p.rates[0] == pytest.approx(459e12 / 2 * presets.DEFAULT_EFFICIENCY)


def test_dtype_selects_the_matmul_rate() -> None:
    rate = {d: presets.preset_profile("h100", 8, dtype=d).conv["forward"].rates[0] for d in presets.DTYPES}
    assert rate["bfloat16"] > rate["float32"] > rate["float32-highest"]  # bf16 > TF32 > FP32
    tpu = {d: presets.preset_profile("tpu-v4", 4, dtype=d).conv["forward"].rates[0] for d in presets.DTYPES}
    assert tpu["float32"] == tpu["bfloat16"] > tpu["float32-highest"]  # default precision: one bf16 pass


def test_torus_collectives_use_the_links_of_one_axis() -> None:
    p = presets.preset_profile("tpu-v5p", 4)
    ring, permute = (
        p.collectives["all-gather"].beta_bytes_per_s,
        p.collectives["collective-permute"].beta_bytes_per_s,
    )
    assert ring == pytest.approx(2 * permute)
    every = presets.preset_profile("tpu-v5p", 4, ici_links=6).collectives["all-gather"].beta_bytes_per_s
    assert every == pytest.approx(3 * ring)
    with pytest.raises(ValueError, match="switched"):
        presets.preset_profile("h100", 8, ici_links=2)
    with pytest.raises(ValueError, match="ici_links"):
        presets.preset_profile("tpu-v5e", 4, ici_links=5)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown hardware preset") as e:
        presets.preset_profile("tpu-v9", 4)
    for name in presets.PRESETS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="tpu-v4"):
        presets.preset_links("a100")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        presets.preset_profile("h100", 8, dtype="float16")
    with pytest.raises(ValueError, match="efficiency"):
        presets.preset_profile("h100", 8, efficiency=1.5)
    with pytest.raises(ValueError, match="at most 8"):
        presets.preset_profile("h100", 16)  # 16 GPUs on one node
    with pytest.raises(ValueError, match="evenly"):
        presets.preset_profile("h200", 12, hosts=5)
    assert presets.preset_profile("h200", 16, hosts=2).key.process_count == 2


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_json_round_trip(name: str) -> None:
    p = presets.preset_profile(name, presets.PRESETS[name].chips_per_host, dtype="bfloat16")
    again = Profile.from_json(json.loads(json.dumps(p.to_json())))
    assert again == p
    assert again.key.file_name().endswith("-jaxpreset.json")
