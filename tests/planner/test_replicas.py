"""Replicated placements in the planner (``"<name>+replicas"``, :mod:`jaxcnn.planner.replicas`): the
factors the bytes objective admits, MobileNetV2's depthwise layers at 0 bytes on 64 devices, and the
cap (pure Python, no compiles)."""

from __future__ import annotations

import pytest

import jaxcnn
from jaxcnn.bounds import PASSES, lower_bound
from jaxcnn.cost import predict
from jaxcnn.planner import plan_layer
from jaxcnn.planner.replicas import admitted_replicas, planned_replicas

# MobileNetV2 (batch 64, 224²) blocks.1.depthwise (3×3/2, 96 channels) and blocks.2.depthwise (144)
DEPTHWISE_96 = jaxcnn.conv_geometry((64, 112, 112, 96), (3, 3, 1, 96), 2, ((0, 1), (0, 1)), 1, 96)
DEPTHWISE_144 = jaxcnn.conv_geometry((64, 56, 56, 144), (3, 3, 1, 144), 1, "SAME", 1, 144)
DENSE = jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 16, 16))


def _bound(geom, devices):
    return sum(lower_bound(geom, devices, pass_=p).bytes for p in PASSES)


@pytest.mark.parametrize(
    ("geom", "k", "copies", "unreplicated"),
    [
        # 96 = 32 × 3: k=32 holds whole groups; else the kernel gradient is all-reduced over n=2
        (DEPTHWISE_96, 32, 2, 2 * (3 * 3 * 3 * 4) * (2 - 1) / 2),
        # 144 = 16 × 9: k=16, and 4 copies; else the all-reduce runs over n=4
        (DEPTHWISE_144, 16, 4, 2 * (3 * 3 * 9 * 4) * (4 - 1) / 4),
    ],
    ids=["C96", "C144"],
)
def test_depthwise_layers_run_replicated_at_zero_bytes(geom, k, copies, unreplicated):
    assert _bound(geom, 64) == 0  # every device may own 1.5 / 2.25 whole groups
    best = plan_layer(geom, 64).best
    assert (best.algorithm, best.bytes, best.layout.replication) == ("filter+replicas", 0.0, copies)
    assert {a: s for a, s in best.grid.items() if s > 1} == {"k": k, "c": copies}
    plain = plan_layer(geom, 64, max_replicas=1).best
    assert (plain.algorithm, plain.bytes) == ("filter", unreplicated)
    # each device holds the whole batch of its C/k channels: copies × the even share of x
    n, h, w, c = geom.x_shape
    assert best.memory.x_block == n * h * w * (c // k) * 4 == copies * (n * h * w * c // 64) * 4


def test_a_factor_is_admitted_only_where_it_cannot_beat_the_bound():
    """On 8 devices this dense layer's bound (13,243 B) is above that of 4 devices; replicated 4-fold,
    data parallelism over 2 devices moves 2·|w|·(2-1)/2 = 9,216 B, below it: such a factor buys bytes
    with compute and is not admitted. A depthwise layer's bound is 0 on any device count: every
    factor is admitted, and the cap limits the copies."""
    assert _bound(DENSE, 4) < _bound(DENSE, 8)
    assert predict(DENSE, "data+replicas", dict(n=2, c=4)).bytes == 2 * 3 * 3 * 16 * 16 * 4 / 2
    assert predict(DENSE, "data+replicas", dict(n=2, c=4)).bytes < _bound(DENSE, 8)
    assert admitted_replicas(DENSE, 8) == ()
    assert all(not c.layout.replicas for c in plan_layer(DENSE, 8).candidates)
    assert admitted_replicas(DEPTHWISE_96, 64) == (2, 4, 8, 16, 32, 64)
    assert planned_replicas(DEPTHWISE_96, 64, 4) == (2, 4)
    # every admitted candidate moves at least the 64-device bound, pass by pass
    for cost in plan_layer(DEPTHWISE_144, 64).candidates:
        assert cost.forward.max_bytes >= lower_bound(DEPTHWISE_144, 64).bytes
        assert cost.backward.max_bytes >= lower_bound(DEPTHWISE_144, 64, pass_="backward").bytes


@pytest.mark.parametrize("bad", [0, 1.5, True])
def test_max_replicas_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"max_replicas must be an int >= 1 .*got {bad!r}"):
        plan_layer(DENSE, 8, max_replicas=bad)


def test_replicated_candidates_report_their_copies():
    """The table's replicated candidates carry their copies (``layout.replication``): the compute and
    memory per device they multiply; without replicas none is proposed."""
    table = plan_layer(DEPTHWISE_96, 64).candidates
    replicated = [c for c in table if c.layout.replicas]
    assert replicated and {c.layout.replication for c in replicated} == {2, 4}
    for c in replicated:  # the replica axis: k for channel, c for the others
        assert c.layout.replication == c.grid["k" if c.algorithm.startswith("channel") else "c"]
    assert not [c for c in plan_layer(DEPTHWISE_96, 64, max_replicas=1).candidates if c.layout.replicas]
