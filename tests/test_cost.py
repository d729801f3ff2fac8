"""The cost model predicts exactly the bytes metered in the compiled HLO (forward and backward, max and
total over devices, per collective kind), and memory within the documented band."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import jaxcnn
from jaxcnn.cost import predict
from jaxcnn.dtypes import Dtypes
from jaxcnn.measure import measure_conv
from tests.algorithms.cases import GRIDS, fast_algorithm, mesh_kwargs
from tests.fake_devices import run_with_devices
from tests.utils import first_fast

# make test runs every fifth slow case of each sweep below; make test-sweep the rest (tests/conftest.py).
SWEEP_KEEP = 5

# (x shape, kernel shape, strides, padding, dilation): even splits on every grid of tests.algorithms.cases.
LAYERS = [
    ((8, 16, 16, 16), (3, 3, 16, 16), 1, "SAME", 1),
    ((8, 16, 16, 16), (1, 1, 16, 32), 2, "SAME", 1),
    ((8, 32, 32, 8), (7, 7, 8, 16), 2, "SAME", 1),
    ((8, 20, 20, 16), (3, 3, 16, 16), 1, "VALID", 2),
]

# Each grid of each algorithm on two of the four layers, rotating, so every layer meets every algorithm.
# `make test-fast` runs the first grid of each algorithm on the first layer.
PARAMS = [
    pytest.param(
        alg,
        grid,
        i,
        id=f"{alg}-{'x'.join(map(str, grid))}-L{i}",
        marks=() if j == i == 0 and fast_algorithm(alg) else pytest.mark.slow,
    )
    for alg, grids in GRIDS.items()
    for j, grid in enumerate(grids)
    for i in range(len(LAYERS))
    if (i - j) % 2 == 0
]


def _assert_same(metered, model, what):
    assert metered.max_bytes == model.max_bytes, f"{what}: max {metered.max_bytes} != {model.max_bytes}"
    assert metered.total_bytes == model.total_bytes, (
        f"{what}: total {metered.total_bytes} != {model.total_bytes}"
    )
    for kind, stats in metered.by_kind.items():
        count, max_b, total_b = model.per_kind.get(kind, (0, 0.0, 0.0))
        assert (stats.count, stats.max_bytes, stats.total_bytes) == (count, max_b, total_b), f"{what} {kind}"


@pytest.mark.parametrize(("algorithm", "grid", "layer"), PARAMS)
def test_model_equals_meter_on_8_devices(algorithm, grid, layer):
    geom = jaxcnn.conv_geometry(*LAYERS[layer])
    sizes = mesh_kwargs(grid)
    cost = predict(geom, algorithm, sizes)
    assert cost.layout.is_even(geom), "LAYERS must split evenly: the model covers even splits only"
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**sizes), algorithm=algorithm)
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")


# 1-D and 3-D layers (x shape, kernel shape, strides, padding, dilation), algorithm, grid: halos over d
# (edges and corners carried by the later h / w exchanges), over w alone, and the channel algorithms.
# Even splits. `make test-fast` runs the first.
LAYERS_ND = [
    (((2, 8, 8, 8, 8), (3, 3, 3, 8, 8), 1, "SAME", 1), "spatial", dict(d=2, h=2, w=2)),
    (((2, 8, 8, 8, 8), (3, 2, 3, 8, 8), 2, "SAME", (1, 2, 1)), "spatial", dict(d=4, w=2)),
    (((2, 8, 8, 4, 8), (3, 3, 3, 8, 16), 1, "SAME", 1), "2d", dict(d=2, h=2, k=2)),
    (((2, 8, 4, 4, 8), (3, 3, 3, 8, 8), 1, "SAME", 2), "3d", dict(d=2, k=2, c=2)),
    (((2, 10, 6, 6, 16), (3, 3, 3, 16, 16), 1, "VALID", 1), "2.5d", dict(d=2, k=2, c=2)),
    (((4, 32, 8), (3, 8, 8), 1, "SAME", 1), "spatial", dict(n=2, w=4)),
    (((4, 32, 8), (5, 8, 16), 2, "SAME", 1), "filter", dict(w=2, k=4)),
    (((4, 32, 16), (3, 16, 8), 1, "SAME", 3), "channel", dict(w=2, c=4)),
    (((4, 32, 8), (3, 8, 8), 1, "SAME", 1), "3d", dict(w=2, k=2, c=2)),
]


@pytest.mark.parametrize(("layer", "algorithm", "grid"), first_fast(LAYERS_ND))
def test_model_equals_meter_1d_3d(layer, algorithm, grid):
    geom = jaxcnn.conv_geometry(*layer)
    cost = predict(geom, algorithm, grid)
    assert cost.layout.is_even(geom), "LAYERS_ND must split evenly: the model covers even splits only"
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm)
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")


BF16_CASES = (
    ("2.5d", dict(h=2, k=2, c=2)),
    ("spatial", dict(n=2, h=2, w=2)),
    ("2d", dict(n=2, h=2, k=2)),
    ("3d", dict(n=2, k=2, c=2)),
    ("data", dict(n=8)),
)


@pytest.mark.slow
@pytest.mark.parametrize("reduce_dtype", [None, pytest.param("bfloat16", marks=pytest.mark.sweep)])
def test_model_equals_meter_bf16(reduce_dtype):
    """bf16 layers: halos and gathers move 2-byte words (as bit patterns, even on XLA:CPU), the sums
    travel in float32 by default; a bfloat16 reduce dtype, which XLA:CPU widens to float32 around the
    collective, is priced so by ``Dtypes.on("cpu")``."""
    geom = jaxcnn.conv_geometry((8, 16, 16, 32), (3, 3, 32, 32))
    dtypes = Dtypes("bfloat16", reduce_dtype)
    for alg, grid in BF16_CASES:
        cost = predict(geom, alg, grid, dtype=dtypes.on("cpu"))
        mesh = jaxcnn.make_mesh(**grid)
        fwd, bwd = measure_conv(geom, mesh=mesh, algorithm=alg, dtype=jnp.bfloat16, reduce_dtype=reduce_dtype)
        _assert_same(fwd, cost.forward, f"{alg} bf16 forward")
        _assert_same(bwd, cost.backward, f"{alg} bf16 backward")
        f32 = predict(geom, alg, grid)
        moved = sum(cost.forward.per_kind.get(k, (0, 0, 0))[2] for k in ("collective-permute", "all-gather"))
        moved_f32 = sum(
            f32.forward.per_kind.get(k, (0, 0, 0))[2] for k in ("collective-permute", "all-gather")
        )
        assert moved == moved_f32 / 2, (alg, moved, moved_f32)  # what only moves: half the bytes


SWEEP_64 = """
import json
import jaxcnn
from jaxcnn.cost import predict
from jaxcnn.measure import measure_conv
from jaxcnn.planner import plan_layer

out = []
for shape, kernel, stride in [((32, 56, 56, 64), (3, 3, 64, 64), 1), ((32, 28, 28, 128), (1, 1, 128, 256), 2),
                              ((32, 7, 7, 512), (3, 3, 512, 512), 1)]:
    geom = jaxcnn.conv_geometry(shape, kernel, stride)
    for alg in jaxcnn.ALGORITHMS:
        try:
            best = plan_layer(geom, 64, allowed=(alg,)).best
        except ValueError:
            continue
        # the best of alg and its +replicas variant (data over the batch of 32, copied twice)
        fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**best.grid), algorithm=best.algorithm)
        f, b = best.forward, best.backward
        out.append([best.algorithm, best.grid, fwd.max_bytes, f.max_bytes, bwd.max_bytes, b.max_bytes,
                    fwd.total_bytes, f.total_bytes, bwd.total_bytes, b.total_bytes])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_model_equals_meter_on_64_devices_compile_only():
    """ResNet-50-like layers on 64 fake devices, each algorithm on its best grid (compile only), its
    replicated variant where that is better."""
    rows = run_with_devices(64, SWEEP_64)
    assert len(rows) >= 15
    for alg, grid, *pairs in rows:
        for metered, modelled in zip(pairs[::2], pairs[1::2], strict=True):
            assert metered == modelled, (alg, grid, pairs)


@pytest.mark.parametrize(
    ("algorithm", "grid"),
    first_fast(
        [
            ("3d", dict(n=2, k=2, c=2)),
            ("2d", dict(n=4, k=2)),
            ("data", dict(n=8)),
            ("spatial", dict(n=2, h=2, w=2)),
            ("filter", dict(k=8)),
            ("channel", dict(c=8)),
            ("2d", dict(n=2, h=2, k=2)),
            ("2.5d", dict(n=2, k=2, c=2)),
            ("3d", dict(n=4, k=2)),
            ("filter+replicas", dict(n=2, k=2, c=2)),  # blocks of the 4-device sub-grid, copied
            ("data+replicas", dict(n=2, c=4)),
        ],
        keep=2,
    ),
)
def test_memory_model_band(algorithm, grid):
    """Compiled temp memory lies in [forward_temp, forward_temp + layout_copy] (±10%); arguments and
    outputs are exact. ResNet-50 layer 56×56×64→64, batch 32."""
    assert_memory_band(jaxcnn.conv_geometry((32, 56, 56, 64), (3, 3, 64, 64)), algorithm, grid)


def assert_memory_band(geom, algorithm, grid):
    """The forward pass's compiled arguments and outputs equal the model's; its temp memory lies in
    [forward_temp, forward_temp + layout_copy] (±10%)."""
    cost = predict(geom, algorithm, grid)
    fwd, _ = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm, backward=False)
    mem = fwd.memory
    assert mem.argument_bytes == cost.memory.inputs
    assert mem.output_bytes == cost.memory.output
    low, high = cost.memory.forward_temp, cost.memory.forward_temp + cost.memory.layout_copy
    assert 0.9 * low <= mem.temp_bytes <= 1.1 * high, (mem.temp_bytes, low, high)
