"""Transposed convolutions (``jaxcnn.conv_transpose``, input dilation) in the cost model: the predicted
bytes equal the bytes metered in the compiled HLO on every algorithm × 8-device grid (forward and
backward, max and total, per collective kind), the memory model brackets ``memory_analysis()``, and
``ConvGeometry.flops`` counts exactly the multiply-adds that hit real input rows (checked against XLA's
own cost analysis and a transposed convolution of ones)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxcnn
from jaxcnn.bounds import real_macs
from jaxcnn.cost import predict
from jaxcnn.geometry import conv_geometry, transpose_padding
from jaxcnn.measure import measure_conv
from tests.algorithms.cases import GRIDS, mesh_kwargs
from tests.test_cost import _assert_same, assert_memory_band
from tests.utils import DIMENSION_NUMBERS, first_fast

# make test runs every fifth slow case of each sweep below; make test-sweep the rest (tests/conftest.py).
SWEEP_KEEP = 5


def transposed_geometry(x_shape, kernel_shape, strides, padding, dilation=1):
    """The geometry ``jaxcnn.conv_transpose`` computes (stride-1 convolution of x dilated by ``strides``)."""
    if isinstance(padding, str):
        padding = tuple(transpose_padding(r, strides, dilation, padding) for r in kernel_shape[:2])
    return conv_geometry(x_shape, kernel_shape, 1, padding, dilation, input_dilation=strides)


# Stride 2 on 8×8 inputs: 16×16 outputs, so every grid of tests.algorithms.cases splits them evenly
# (output blocks a multiple of σ = 2, which the halo plan needs for one program on all devices).
LAYERS = [
    transposed_geometry((8, 8, 8, 16), (3, 3, 16, 16), 2, "SAME"),
    transposed_geometry((8, 8, 8, 16), (3, 3, 16, 16), 2, ((3, 2), (2, 3)), 2),  # dilation, explicit pads
]


def _cases() -> list:
    """Every (algorithm, grid), on the two layers in turn; grids splitting h or w take both. The first
    spatial case (halos in h and w) and the first 3d case splitting k and c run in ``make test-fast``."""
    cases, i = [], 0
    for alg, grids in GRIDS.items():
        for grid in grids:
            cases += [(alg, grid, layer) for layer in ((0, 1) if grid[1] * grid[2] > 1 else (i % 2,))]
            i += 1
    fast = [
        next(c for c in cases if c[0] == "spatial"),
        next(c for c in cases if c[0] == "3d" and c[1][3] * c[1][4] > 1),
    ]
    return first_fast(fast + [c for c in cases if c not in fast], keep=len(fast))


def _id(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(("algorithm", "grid", "layer"), _cases(), ids=_id)
def test_transposed_model_equals_meter(algorithm, grid, layer):
    geom = LAYERS[layer]
    sizes = mesh_kwargs(grid)
    cost = predict(geom, algorithm, sizes)
    assert cost.layout.is_even(geom), "LAYERS must split evenly: the model covers even splits only"
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**sizes), algorithm=algorithm)
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")
    if sizes["h"] > 1:  # halos of undilated rows: fewer rows than the dilated window has
        assert cost.layout.h_plan.window < geom.h.window(cost.layout.h_plan.out_block)


# 3-D and 1-D transposed layers (halos of undilated rows along d, h and w; stride 2 everywhere).
LAYERS_ND = [
    (
        conv_geometry((2, 4, 4, 4, 8), (3, 3, 3, 8, 8), 1, ((1, 2),) * 3, 1, input_dilation=2),
        "spatial",
        dict(d=2, h=2, w=2),
    ),
    (
        conv_geometry((2, 4, 4, 4, 8), (2, 2, 2, 8, 8), 1, ((1, 1),) * 3, 1, input_dilation=2),
        "3d",
        dict(d=2, k=2, c=2),
    ),
    (conv_geometry((4, 8, 8), (3, 8, 8), 1, ((1, 2),), 1, input_dilation=2), "2d", dict(n=2, w=2, k=2)),
]


@pytest.mark.parametrize(
    ("geom", "algorithm", "sizes"), first_fast(LAYERS_ND), ids=["3d-spatial", "3d-3d", "1d-2d"]
)
def test_transposed_nd_model_equals_meter(geom, algorithm, sizes):
    cost = predict(geom, algorithm, sizes)
    assert cost.layout.is_even(geom)
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**sizes), algorithm=algorithm)
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")


@pytest.mark.parametrize(
    ("algorithm", "grid"),
    first_fast(
        [
            ("spatial", dict(n=2, h=2, w=2)),
            ("3d", dict(n=2, k=2, c=2)),
            ("2d", dict(n=4, k=2)),
            ("filter", dict(k=8)),
            ("channel", dict(c=8)),
            ("2d", dict(n=2, h=2, k=2)),
            ("2.5d", dict(n=2, k=2, c=2)),
            ("3d", dict(n=4, k=2)),
        ]
    ),
)
def test_transposed_memory_model_band(algorithm, grid):
    """As tests/test_cost.py::test_memory_model_band, for a 28×28×64 → 56×56×64 stride-2 transposed
    layer: arguments and outputs exact, temp memory in [forward_temp, forward_temp + layout_copy] ±10%
    (with spatial splits XLA:CPU keeps the received halo pieces next to the window: layout_copy)."""
    assert_memory_band(transposed_geometry((32, 28, 28, 64), (3, 3, 64, 64), 2, "SAME"), algorithm, grid)


FLOP_CASES = [
    ((2, 5, 6, 3), (3, 3, 3, 4), 2, "SAME", 1),
    ((2, 5, 6, 3), (3, 2, 3, 4), 2, "VALID", 2),
    ((1, 4, 4, 2), (4, 4, 2, 2), 3, ((1, 2), (0, 3)), 1),
]


@pytest.mark.parametrize(("x_shape", "kernel_shape", "strides", "padding", "dilation"), FLOP_CASES)
def test_transposed_flops_count_real_multiply_adds(x_shape, kernel_shape, strides, padding, dilation):
    """``flops`` of a transposed layer = 2 × multiply-adds on real input rows: equal to XLA's cost
    analysis of ``lax.conv_transpose``, to N·K·C × a transposed convolution of ones, and to the whole
    2·N·H·W·C·K·R·S when nothing is cropped ("VALID")."""
    geom = transposed_geometry(x_shape, kernel_shape, strides, padding, dilation)
    (n, h, w, c), (r, s, _, k) = x_shape, kernel_shape

    def conv(a, b):
        return lax.conv_transpose(
            a, b, (strides, strides), padding, rhs_dilation=(dilation, dilation),
            dimension_numbers=DIMENSION_NUMBERS,
        )  # fmt: skip

    abstract = (jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(kernel_shape, jnp.float32))
    analysis = jax.jit(conv).lower(*abstract).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    taps = int(conv(jnp.ones((1, h, w, 1)), jnp.ones((r, s, 1, 1))).sum())
    assert geom.flops == int(analysis["flops"]) == 2 * n * k * c * taps == 2 * real_macs(geom)
    if padding == "VALID":
        assert geom.flops == 2 * n * h * w * c * k * r * s
    assert geom.flops < 2 * n * k * c * r * s * geom.h.out * geom.w.out  # the dilated holes are not counted


def test_dense_flops_keep_counting_padding_taps():
    """Without input dilation ``flops`` is the usual count (padding taps included), unchanged."""
    geom = jaxcnn.conv_geometry((2, 8, 8, 3), (3, 3, 3, 5))
    assert geom.flops == 2 * 2 * 8 * 8 * 5 * 3 * 9
    assert 2 * real_macs(geom) < geom.flops
