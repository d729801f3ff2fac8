"""Each algorithm issues exactly the collectives its docstring claims, read from the compiled HLO
(compile only), forward and backward; and 2d's streaming keeps memory below 3d's on the same grid.

Layer: ResNet-50 conv 56×56×64→64, 3×3, batch 32 (fp32, even splits on every grid below).
"""

from __future__ import annotations

import pytest

import jaxcnn
from jaxcnn.measure import measure_conv

GEOM = jaxcnn.conv_geometry((32, 56, 56, 64), (3, 3, 64, 64))
X_BYTES = 32 * 56 * 56 * 64 * 4
K_BYTES = 3 * 3 * 64 * 64 * 4


def _ops(report):
    """[(kind, group size, full buffer bytes, executions)] sorted, for exact comparison."""
    return sorted((op.kind, op.group_size, op.buffer_bytes, op.executions) for op in report.ops)


@pytest.fixture(scope="session")  # a cache: kept when xdist interleaves other modules' tests
def metered():
    cache = {}

    def get(algorithm, **grid):
        key = (algorithm, tuple(sorted(grid.items())))
        if key not in cache:
            cache[key] = measure_conv(GEOM, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm)
        return cache[key]

    return get


def test_data_forward_silent_backward_one_kernel_all_reduce(metered):
    fwd, bwd = metered("data", n=8)
    assert _ops(fwd) == []
    assert _ops(bwd) == [("all-reduce", 8, K_BYTES, 1)]


def test_spatial_only_halo_permutes_then_kernel_all_reduce(metered):
    fwd, bwd = metered("spatial", n=2, h=2, w=2)
    row_h = 16 * 28 * 64 * 4  # one halo row along h of the (16, 28, 28, 64) block
    row_w = 16 * 30 * 64 * 4  # one column along w of the h-extended (16, 30, 28, 64) block
    halos = sorted([("collective-permute", 2, row_h, 1)] * 2 + [("collective-permute", 2, row_w, 1)] * 2)
    assert _ops(fwd) == halos
    assert _ops(bwd) == sorted([*halos, ("all-reduce", 8, K_BYTES, 1)])


def test_filter_gathers_x_forward_and_reduce_scatters_dx(metered):
    fwd, bwd = metered("filter", k=8)
    assert _ops(fwd) == [("all-gather", 8, X_BYTES, 1)]
    assert _ops(bwd) == [("reduce-scatter", 8, X_BYTES, 1)]


def test_channel_reduce_scatters_not_all_reduces(metered):
    fwd, bwd = metered("channel", c=8)
    y_bytes = X_BYTES  # 32×56×56×64 output
    assert _ops(fwd) == [("reduce-scatter", 8, y_bytes, 1)]
    assert _ops(bwd) == [("all-gather", 8, y_bytes, 1)]


def test_3d_gathers_once_and_backward_is_dual(metered):
    fwd, bwd = metered("3d", n=2, k=2, c=2)
    x_gathered = X_BYTES // 2 // 2  # rows split over n, C/c channels
    k_gathered = K_BYTES // 2 // 2  # C/c × K/k
    partial = X_BYTES // 2 // 2  # (N/n)·56·56·(K/k)
    assert _ops(fwd) == sorted(
        [
            ("all-gather", 2, x_gathered, 1),
            ("all-gather", 2, k_gathered, 1),
            ("reduce-scatter", 2, partial, 1),
        ]
    )
    # dy gathered over c, dx reduce-scattered over k, dkernel over n; no all-reduce anywhere.
    assert _ops(bwd) == sorted(
        [
            ("all-gather", 2, partial, 1),
            ("reduce-scatter", 2, x_gathered, 1),
            ("reduce-scatter", 2, k_gathered, 1),
        ]
    )


def test_2d_streams_panels_never_gathers_a_whole_operand(metered):
    fwd, bwd = metered("2d", n=4, k=2)
    # Pk = 2, Pr = 4 → m = 4 panels of 16 channels: x panel (8, 56, 56, 16), kernel panel (3, 3, 16, 32).
    x_panel, k_panel = 8 * 56 * 56 * 16 * 4, 3 * 3 * 16 * 32 * 4
    counts = {}
    for kind, group, size, runs in _ops(fwd):
        counts[(kind, group, size)] = counts.get((kind, group, size), 0) + runs
    assert counts == {("all-gather", 2, x_panel): 4, ("all-gather", 4, k_panel): 4}
    whole_x, whole_k = X_BYTES // 4, K_BYTES // 2  # what a full gather would produce
    assert all(op.buffer_bytes <= whole_x // 4 for op in fwd.ops if op.group_size == 2)
    assert all(op.buffer_bytes <= whole_k // 4 for op in fwd.ops if op.group_size == 4)
    assert any(op.executions > 1 or op.computation != "main" for op in fwd.ops), "panels not in a loop"
    kinds = {op.kind for op in bwd.ops}
    assert kinds == {"all-gather", "reduce-scatter"}  # recomputed panel gathers + their duals


@pytest.mark.slow
def test_2_5d_reduce_scatters_over_depth(metered):
    fwd, bwd = metered("2.5d", h=2, k=2, c=2)
    assert {op.kind for op in fwd.ops} == {"collective-permute", "all-gather", "reduce-scatter"}
    scatters = [op for op in fwd.ops if op.kind == "reduce-scatter"]
    assert len(scatters) == 1 and scatters[0].group_size == 2
    assert scatters[0].buffer_bytes == 32 * 28 * 56 * 32 * 4  # (N, Ho/h, Wo, K/k) partial output
    assert "all-reduce" not in {op.kind for op in bwd.ops}


@pytest.mark.slow
@pytest.mark.parametrize("grid", [dict(n=4, k=2), dict(n=2, h=2, k=2)])
def test_2d_uses_less_memory_than_3d_on_the_same_grid(metered, grid):
    for pass_ in (0, 1):  # forward, backward
        two_d = metered("2d", **grid)[pass_].memory.temp_bytes
        three_d = metered("3d", **grid)[pass_].memory.temp_bytes
        assert two_d < three_d, (pass_, two_d, three_d)


def test_replicated_filter_reduces_nothing_over_its_copies(metered):
    """filter+replicas on k=2, c=2 (copies over c) with n=2: the forward pass gathers x over k within
    each copy; the backward pass reduce-scatters dx over k and all-reduces the kernel gradient over n
    alone (groups of 2 devices), never over the replica axis: the inputs are invariant over c inside
    shard_map, so autodiff adds no psum there (jaxcnn.algorithms.replicas)."""
    fwd, bwd = metered("filter+replicas", n=2, k=2, c=2)
    x_window = X_BYTES // 2  # the gathered x block: half the batch, every channel
    assert _ops(fwd) == [("all-gather", 2, x_window, 1)]
    assert _ops(bwd) == sorted([("reduce-scatter", 2, x_window, 1), ("all-reduce", 2, K_BYTES // 2, 1)])
    all_reduce = next(op for op in bwd.ops if op.kind == "all-reduce")
    assert sorted(map(tuple, all_reduce.groups)) == [(0, 4), (1, 5), (2, 6), (3, 7)]  # n: 4 devices apart
