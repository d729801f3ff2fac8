"""layout_change_bytes against hand-computed volumes and against the bytes XLA moves for a reshard."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn.measure import measure
from jaxcnn.planner import layout_change_bytes

SHAPE = (8, 4, 4, 16)  # 2048 elements; one eighth = 256 elements = 1024 bytes in float32
LOCAL = 8 * 4 * 4 * 16 // 8 * 4


def _g(**sizes):
    return {a: sizes.get(a, 1) for a in jaxcnn.AXES}


def test_same_layout_moves_nothing():
    for grid, spec in ((_g(n=8), P("n")), (_g(n=2, k=4), P("n", None, None, "k")), (_g(n=8), P())):
        assert layout_change_bytes(SHAPE, (spec, grid), (spec, grid)) == (0.0, 0.0)


def test_batch_split_to_channel_split_is_seven_eighths_of_the_local_block():
    fwd, bwd = layout_change_bytes(SHAPE, (P("n"), _g(n=8)), (P(None, None, None, "k"), _g(k=8)))
    assert fwd == bwd == 7 / 8 * LOCAL == 896.0


def test_replicated_destination_is_the_all_gather_volume():
    fwd, bwd = layout_change_bytes(SHAPE, (P("n"), _g(n=8)), (P(), _g(n=8)))
    full = 8 * 4 * 4 * 16 * 4
    assert fwd == full * 7 / 8 == 7168.0  # S(p-1)/p
    assert bwd == 0.0  # the cotangent only has to be sliced


def test_regridding_the_same_spec():
    # (n=4, k=2) -> (n=2, k=4): device 1 holds batches 0-1 / channels 8-15 and needs batches 0-3 /
    # channels 4-7, nothing in common, so it receives its whole new block.
    src = (P("n", None, None, "k"), _g(n=4, k=2))
    dst = (P("n", None, None, "k"), _g(n=2, k=4))
    assert layout_change_bytes(SHAPE, src, dst) == (LOCAL, LOCAL)
    # same devices in the same order under another axis name: nothing moves
    assert layout_change_bytes(
        SHAPE, (P("n", None, None, "c"), _g(n=4, c=2)), (P("n", None, None, "k"), _g(n=4, k=2))
    ) == (0.0, 0.0)


def test_uneven_blocks_and_device_count_mismatch():
    # 6 rows over 4 devices: blocks of 2, 2, 2, 0 rows; gathering all 6 costs the last device 6 rows
    fwd, _ = layout_change_bytes((6, 10), (P("n"), _g(n=4)), (P(), _g(n=4)), itemsize=2)
    assert fwd == 6 * 10 * 2
    with pytest.raises(ValueError, match="different numbers of devices"):
        layout_change_bytes(SHAPE, (P("n"), _g(n=8)), (P("n"), _g(n=4)))


def _metered(src, dst):
    (spec_a, grid_a), (spec_b, grid_b) = src, dst
    target = NamedSharding(jaxcnn.make_mesh(**grid_b), spec_b)
    x = jax.ShapeDtypeStruct(SHAPE, "float32", sharding=NamedSharding(jaxcnn.make_mesh(**grid_a), spec_a))
    fn = jax.jit(lambda a: jax.lax.with_sharding_constraint(a, target), out_shardings=target)
    return measure(fn, x)


@pytest.mark.parametrize(
    ("src", "dst", "kind"),
    [
        ((P("n"), _g(n=8)), (P(None, None, None, "k"), _g(k=8)), "all-to-all"),
        ((P("n", None, None, "k"), _g(n=2, k=4)), (P("n"), _g(n=8)), "all-to-all"),
        ((P("n"), _g(n=8)), (P(), _g(n=8)), "all-gather"),
        ((P("n", None, None, "c"), _g(n=4, c=2)), (P("n", None, None, "k"), _g(n=4, k=2)), None),
    ],
)
def test_model_equals_xla_when_it_emits_one_collective(src, dst, kind):
    report = _metered(src, dst)
    assert report.max_bytes == layout_change_bytes(SHAPE, src, dst)[0]
    used = {k for k, s in report.by_kind.items() if s.count}
    assert used == ({kind} if kind else set())


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((P("n", "h", "w"), _g(n=2, h=2, w=2)), (P("n", None, None, "k"), _g(n=2, k=4))),
        ((P(None, None, None, "k"), _g(k=8)), (P("n", "h"), _g(n=2, h=4))),
    ],
)
def test_xla_rematerialises_when_several_axes_change(src, dst):
    """Documented discrepancy: for these reshards GSPMD reports an "involuntary full rematerialization"
    and all-gathers the whole array (then slices), moving more than the minimal volume the model counts."""
    report = _metered(src, dst)
    model = layout_change_bytes(SHAPE, src, dst)[0]
    full = 8 * 4 * 4 * 16 * 4
    assert report.by_kind["all-gather"].count >= 1
    assert model < report.max_bytes <= full
