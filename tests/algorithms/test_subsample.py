"""1×1 strided layers whose x is gathered over k keep only the rows their taps read before the gather
(``Layout.subsample``): exact against lax, the bytes of the stride-1 layer on the subsampled input,
and metered = predicted."""

from __future__ import annotations

import functools

import pytest

import jaxcnn
from jaxcnn.algorithms import get
from jaxcnn.measure import measure_conv
from tests.utils import assert_same_loss_and_grads, first_fast, random_inputs, reference_conv

# (x shape, kernel, strides, padding, algorithm, grid)
CASES = [
    ((8, 8, 8, 16), (1, 1, 16, 16), 2, "VALID", "3d", dict(n=2, k=2, c=2)),
    ((8, 7, 9, 16), (1, 1, 16, 8), (2, 3), "SAME", "2d", dict(n=2, k=4)),
    ((4, 8, 8, 16), (1, 1, 16, 16), 2, ((0, 1), (0, 2)), "3d", dict(h=2, k=2, c=2)),
    ((8, 8, 8, 16), (1, 1, 16, 16), 2, "VALID", "2.5d", dict(n=2, k=2, c=2)),
    ((8, 8, 8, 16), (1, 1, 16, 32), 2, "VALID", "filter", dict(n=2, k=4)),
    ((8, 8, 8, 16), (1, 1, 16, 16), 2, "VALID", "3d+overlap", dict(n=2, k=2, c=2)),
    ((8, 8, 8, 16), (1, 1, 16, 16), 2, "VALID", "2.5d+overlap", dict(k=4, c=2)),
]
IDS = [f"{c[4]}-{'x'.join(map(str, c[5].values()))}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "strides", "padding", "algorithm", "grid"), first_fast(CASES, 2), ids=IDS
)
def test_subsampled_layers_match_lax(x_shape, kernel_shape, strides, padding, algorithm, grid):
    geom = jaxcnn.conv_geometry(x_shape, kernel_shape, strides, padding)
    layout = jaxcnn.cost.predict(geom, algorithm, grid).layout
    assert layout.subsample == tuple(
        d.stride if grid.get(a, 1) == 1 and d.pad[0] == 0 else 1 for a, d in zip("hw", geom.dims, strict=True)
    )
    assert max(layout.subsample) > 1
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(0, x_shape, kernel_shape)
    conv = functools.partial(jaxcnn.conv2d, mesh=mesh, algorithm=algorithm, strides=strides, padding=padding)
    reference = functools.partial(reference_conv, strides=strides, padding=padding)
    assert_same_loss_and_grads(conv, reference, x, kernel)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["3d", "2.5d", "2d", "filter"])
def test_unsplit_pointwise_strided_layer_moves_what_the_subsampled_layer_moves(rank, algorithm):
    # On a grid that splits no spatial dimension, the 1×1 stride-σ layer moves exactly what the 1×1
    # stride-1 layer on x[:, ::σ, ::σ] moves, pass by pass (its x gather no longer carries unread rows).
    x_shape = (8, *(9, 8, 7)[:rank], 16)
    strides = (2, 3, 2)[:rank]
    strided = jaxcnn.conv_geometry(x_shape, (*[1] * rank, 16, 32), strides, "VALID")
    sub = tuple(-(-size // s) for size, s in zip(x_shape[1:-1], strides, strict=True))
    plain = jaxcnn.conv_geometry((8, *sub, 16), (*[1] * rank, 16, 32), 1, "VALID")
    grid = dict(n=2, k=2, c=2) if get(algorithm).axes.count("c") else dict(n=2, k=4)
    a, b = (jaxcnn.cost.predict(g, algorithm, grid) for g in (strided, plain))
    assert (a.forward.max_bytes, a.backward.max_bytes) == (b.forward.max_bytes, b.backward.max_bytes)
    assert a.forward.max_bytes > 0
    # the stored block is the whole of x's block, not the subsampled one
    assert a.memory.x_block > b.memory.x_block


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "strides", "padding", "algorithm", "grid"),
    first_fast([c for c in CASES if "overlap" not in c[4] and c[5].get("h", 1) == 1]),
)
def test_subsampled_layers_meter_what_they_predict(x_shape, kernel_shape, strides, padding, algorithm, grid):
    geom = jaxcnn.conv_geometry(x_shape, kernel_shape, strides, padding)
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm)
    cost = jaxcnn.cost.predict(geom, algorithm, grid)
    assert cost.layout.is_even(geom)
    assert (fwd.max_bytes, bwd.max_bytes) == (cost.forward.max_bytes, cost.backward.max_bytes)


@pytest.mark.parametrize(
    "grid", first_fast([dict(k=8), dict(n=2, k=4)], one_argument=True), ids=["k8", "n2k4"]
)
def test_grouped_subsampled_layer_selects_its_groups_exactly(grid):
    # filter with k not dividing G gathers x whole over k and keeps its groups' channels: subsampled first
    geom = jaxcnn.conv_geometry((8, 8, 8, 16), (1, 1, 8, 16), 2, "VALID", 1, 2)
    cost = jaxcnn.cost.predict(geom, "filter", grid)
    assert cost.layout.subsample == (2, 2) and cost.layout.select
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(0, geom.x_shape, geom.kernel_shape)
    kw = dict(strides=2, padding="VALID", feature_group_count=2)
    conv = functools.partial(jaxcnn.conv2d, mesh=mesh, algorithm="filter", **kw)
    assert_same_loss_and_grads(conv, functools.partial(reference_conv, **kw), x, kernel)
    fwd, bwd = measure_conv(geom, mesh=mesh, algorithm="filter")
    assert (fwd.max_bytes, bwd.max_bytes) == (cost.forward.max_bytes, cost.backward.max_bytes)
