"""Double-buffered channel panels (``2d+overlap`` / ``2.5d+overlap`` with x gathered over k,
jaxcnn.algorithms.pipeline): exact against lax forward and backward, metered = predicted (the plain
loop's collectives), and in the compiled loop the convolution reads no all-gather of its own
iteration."""

from __future__ import annotations

import pytest

import jaxcnn
from jaxcnn.cost import predict
from jaxcnn.measure import measure_conv
from jaxcnn.measure.hlo import parse_computations
from tests.algorithms.test_overlap import _assert_exact, _compiled_forward, _graph, _upstream
from tests.test_cost import _assert_same
from tests.utils import assert_same_loss_and_grads, first_fast, random_inputs

CASES = [
    ((2, 16, 16, 16), (3, 3, 16, 8), dict(strides=1, padding="SAME"), "2d", dict(n=2, h=2, k=2)),
    ((4, 12, 12, 16), (3, 3, 16, 16), dict(strides=2, padding="SAME"), "2d", dict(n=4, k=2)),
    ((2, 12, 12, 32), (3, 3, 32, 16), dict(strides=1, padding="VALID"), "2.5d", dict(k=4, c=2)),
]


@pytest.mark.parametrize(("x_shape", "k_shape", "kw", "algorithm", "grid"), first_fast(CASES))
def test_pipelined_panels_equal_lax_forward_and_backward(x_shape, k_shape, kw, algorithm, grid):
    geom = jaxcnn.conv_geometry(x_shape, k_shape, kw["strides"], kw["padding"])
    layout = jaxcnn.conv_layout(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm + "+overlap")
    assert layout.pipelined and layout.panels >= 3 and layout.interior is None
    _assert_exact(x_shape, k_shape, kw, algorithm + "+overlap", grid)


@pytest.mark.parametrize(
    ("algorithm", "grid"), first_fast([("2d", dict(n=2, h=2, k=2)), ("2.5d", dict(k=4, c=2))])
)
def test_pipelined_panels_meter_as_predicted(algorithm, grid):
    geom = jaxcnn.conv_geometry((32, 56, 56, 64), (3, 3, 64, 64))
    cost, plain = predict(geom, algorithm + "+overlap", grid), predict(geom, algorithm, grid)
    assert cost.layout.pipelined and cost.layout.panels >= 3
    assert (cost.forward.per_kind, cost.backward.per_kind) == (
        plain.forward.per_kind,
        plain.backward.per_kind,
    )
    assert cost.memory.saved == plain.memory.saved  # the window and panel 0's gathered x and kernel
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm + "+overlap")
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")


def _loop_body(algorithm: str) -> tuple[int, int, int]:
    """In the compiled forward loop over panels (2d on n=2, h=2, k=2): (convolutions, convolutions that
    read an all-gather of the same iteration, all-gathers that read a convolution)."""
    hlo = _compiled_forward(algorithm, dict(n=2, h=2, k=2))
    comps, entry = parse_computations(hlo)
    (body,) = [
        name
        for name, instrs in comps.items()
        if name != entry and {"all-gather", "fusion"} <= {i.opcode for i in instrs}
    ]
    is_conv, opcodes, reads = _graph(hlo, body)
    after_gather = _upstream(opcodes, reads, "all-gather")
    convs = [n for n, conv in is_conv.items() if conv]
    gathers = [n for n, op in opcodes.items() if op.startswith("all-gather")]
    reads_conv = {n for n in opcodes if any(r in convs for r in reads[n])}
    return len(convs), sum(after_gather(n) for n in convs), sum(bool(reads[g] & reads_conv) for g in gathers)


def test_two_panels_are_not_pipelined():
    """With 2 panels XLA removes the one-trip loops and merges the backward gather with the forward's
    in a train step (jaxcnn.algorithms.pipeline.pipelined): such a layer runs the plain loop."""
    geom = jaxcnn.conv_geometry((16, 16, 16, 8), (3, 3, 8, 8))
    layout = jaxcnn.conv_layout(geom, mesh=jaxcnn.make_mesh(n=2, h=2, k=2), algorithm="2d+overlap")
    assert layout.panels == 2 and not layout.pipelined and not layout.overlaps


def test_the_loop_convolves_the_panel_gathered_one_iteration_before():
    """The plain loop gathers panel t and convolves it in the same iteration; the double-buffered one
    convolves the panel its previous iteration gathered, and its gathers (of panel t+1) read nothing
    the convolution produces."""
    assert _loop_body("2d") == (1, 1, 0)
    assert _loop_body("2d+overlap") == (1, 0, 0)


def test_a_pipelined_transposed_convolution_equals_the_plain_loop():
    """A stride-2 transposed convolution (input dilation) with its panels double-buffered gives the
    plain loop's output and gradients (the plain loop equals lax: tests/algorithms/test_conv_transpose.py)."""
    grid = dict(n=2, h=2, k=2)
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(3, (2, 8, 8, 16), (3, 3, 16, 8))
    kw = dict(mesh=mesh, strides=2, padding="SAME")
    geom = jaxcnn.conv_geometry((2, 8, 8, 16), (3, 3, 16, 8))
    assert jaxcnn.conv_layout(geom, mesh=mesh, algorithm="2d+overlap").pipelined
    assert_same_loss_and_grads(
        lambda a, b: jaxcnn.conv_transpose(a, b, algorithm="2d+overlap", **kw),
        lambda a, b: jaxcnn.conv_transpose(a, b, algorithm="2d", **kw),
        x,
        kernel,
        rtol=1e-5,
    )
