"""``<algorithm>+overlap`` (halos overlapping the interior convolution, jaxcnn.algorithms.overlap):
exact against single-device lax forward and backward, the same collectives as without overlap (metered
= predicted), the core convolution independent of every halo permute in the compiled HLO, and where it
does not apply it runs as without."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

import jaxcnn
from jaxcnn import algorithms
from jaxcnn.algorithms.overlap import interior_range
from jaxcnn.cost import predict
from jaxcnn.geometry import DIMENSION_NUMBERS, halo_plan
from jaxcnn.measure import measure_conv
from jaxcnn.measure.hlo import parse_computations
from tests.algorithms.test_properties import layers
from tests.algorithms.test_transposed_cost import transposed_geometry
from tests.test_cost import _assert_same, assert_memory_band
from tests.utils import assert_same_loss_and_grads, first_fast, random_inputs

# (x shape, kernel shape, conv kwargs, algorithm, grid): corners (h and w split), stride 2 with
# asymmetric padding and dilation (the window moves per block: a dynamic core slice), an even kernel,
# 2d streaming channel panels with k = 1, 3d with its partial sums reduce-scattered over c, 1-D and 3-D.
CASES = [
    ((2, 16, 16, 3), (3, 3, 3, 4), dict(strides=1, padding="SAME"), "spatial", dict(h=4, w=2)),
    (
        (2, 17, 13, 3),
        (4, 3, 3, 4),
        dict(strides=2, padding=((2, 1), (0, 3)), dilation=(1, 2)),
        "spatial",
        dict(n=2, h=2, w=2),
    ),
    ((2, 32, 16, 4), (5, 5, 4, 4), dict(strides=(2, 1), padding="SAME"), "2d", dict(h=4, w=2)),
    ((2, 32, 16, 8), (3, 3, 8, 8), dict(strides=1, padding="SAME"), "3d", dict(h=2, w=2, c=2)),
    ((2, 40, 6), (5, 6, 4), dict(strides=1, padding="SAME", dilation=2), "spatial", dict(n=2, w=4)),
    ((1, 8, 8, 12, 3), (3, 3, 3, 3, 4), dict(strides=1, padding="SAME"), "spatial", dict(d=2, h=2, w=2)),
]


def _reference(x, kernel, strides=1, padding="SAME", dilation=1):
    rank = x.ndim - 2
    return lax.conv_general_dilated(
        x,
        kernel,
        (strides,) * rank if isinstance(strides, int) else strides,
        padding,
        rhs_dilation=(dilation,) * rank if isinstance(dilation, int) else dilation,
        dimension_numbers=DIMENSION_NUMBERS[rank],
        precision=lax.Precision.HIGHEST,
    )


def _assert_exact(x_shape, k_shape, kw, algorithm, grid):
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(0, x_shape, k_shape)
    assert_same_loss_and_grads(
        lambda a, b: jaxcnn.conv(a, b, mesh=mesh, algorithm=algorithm, **kw),
        lambda a, b: _reference(a, b, **kw),
        x,
        kernel,
    )


@pytest.mark.parametrize(("x_shape", "k_shape", "kw", "algorithm", "grid"), first_fast(CASES, keep=2))
def test_overlap_equals_lax_forward_and_backward(x_shape, k_shape, kw, algorithm, grid):
    geom = jaxcnn.conv_geometry(x_shape, k_shape, kw["strides"], kw["padding"], kw.get("dilation", 1))
    layout = jaxcnn.conv_layout(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm + "+overlap")
    assert layout.interior is not None, "each case must really overlap"
    _assert_exact(x_shape, k_shape, kw, algorithm + "+overlap", grid)


@st.composite
def _layers_and_grids(draw):
    x_shape, k_shape, kw = draw(layers(max_size=30, max_dilation=2))
    h, w = draw(st.sampled_from([(2, 1), (4, 1), (1, 4), (2, 2), (4, 2), (2, 4), (8, 1)]))
    algorithm = draw(st.sampled_from(["spatial", "2d", "2.5d", "3d", "channel"]))
    rest = 8 // (h * w)
    other = {"spatial": "n", "2d": "n", "2.5d": "n", "3d": "c", "channel": "c"}[algorithm]
    grid = {"h": h, "w": w, other: rest}
    try:
        geom = jaxcnn.conv_geometry(x_shape, k_shape, kw["strides"], kw["padding"], kw["dilation"])
        layout = jaxcnn.conv_layout(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm + "+overlap")
    except ValueError:
        assume(False)
    assume(layout.interior is not None)
    return x_shape, k_shape, kw, algorithm, grid


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(case=_layers_and_grids())
def test_random_overlapped_layers_equal_lax(case):
    x_shape, k_shape, kw, algorithm, grid = case
    _assert_exact(x_shape, k_shape, kw, algorithm + "+overlap", grid)


@pytest.mark.parametrize(
    ("algorithm", "grid"),
    first_fast([("spatial", dict(n=2, h=2, w=2)), ("2d", dict(h=4, w=2)), ("3d", dict(h=2, w=2, c=2))]),
)
def test_overlap_moves_the_same_bytes_metered_equals_predicted(algorithm, grid):
    geom = jaxcnn.conv_geometry((8, 32, 32, 16), (3, 3, 16, 16))
    cost = predict(geom, algorithm + "+overlap", grid)
    plain = predict(geom, algorithm, grid)
    assert cost.layout.interior is not None
    assert (cost.forward.per_kind, cost.backward.per_kind) == (
        plain.forward.per_kind,
        plain.backward.per_kind,
    )
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm + "+overlap")
    _assert_same(fwd, cost.forward, "forward")
    _assert_same(bwd, cost.backward, "backward")


def _graph(hlo: str, computation: str) -> tuple[dict[str, bool], dict[str, str], dict[str, set[str]]]:
    """Of one computation of a compiled module: ``({instruction: is a convolution}, {instruction:
    opcode}, {instruction: instructions it reads})``. A convolution is a ``convolution`` instruction or
    a fusion that calls one (XLA:CPU wraps them in custom fusions)."""
    comps, _ = parse_computations(hlo)
    with_conv = {name for name, instrs in comps.items() if any(i.opcode == "convolution" for i in instrs)}
    lines = hlo.splitlines()
    start = next(
        i for i, line in enumerate(lines) if re.match(rf"(ENTRY )?%?{re.escape(computation)} ", line)
    )
    is_conv, opcodes, reads = {}, {}, {}
    for line in itertools.takewhile(lambda text: text.strip() != "}", lines[start + 1 :]):
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) ([\w\-]+)\((.*)", line)
        if m:
            name, opcode, rest = m.groups()
            calls = set(re.findall(r"(?:calls|body|condition)=%([\w.\-]+)", rest))
            opcodes[name] = opcode
            reads[name] = set(re.findall(r"%([\w.\-]+)", rest.split("metadata=")[0])) - calls
            is_conv[name] = opcode == "convolution" or bool(calls & with_conv)
    assert set(opcodes) == {i.name for i in comps[computation]}
    return is_conv, opcodes, reads


def _upstream(opcodes: dict[str, str], reads: dict[str, set[str]], kind: str) -> Callable[[str], bool]:
    """``f(name)``: whether instruction ``name`` reads the result of a ``kind`` collective (directly or
    through other instructions of its computation)."""
    seen: dict[str, bool] = {}

    def f(name: str) -> bool:
        if name not in seen:
            seen[name] = any(opcodes[r].startswith(kind) or f(r) for r in reads[name] if r in opcodes)
        return seen[name]

    return f


def _compiled_forward(algorithm: str, grid: dict[str, int]) -> str:
    """The compiled forward program of the ResNet-50 layer 56×56×64 → 64, batch 32, on ``grid``."""
    geom = jaxcnn.conv_geometry((32, 56, 56, 64), (3, 3, 64, 64))
    mesh = jaxcnn.make_mesh(**grid)
    layout = jaxcnn.conv_layout(geom, mesh=mesh, algorithm=algorithm)
    x = jax.ShapeDtypeStruct(geom.x_shape, jnp.float32, sharding=jax.NamedSharding(mesh, layout.x_spec))
    k = jax.ShapeDtypeStruct(
        geom.kernel_shape, jnp.float32, sharding=jax.NamedSharding(mesh, layout.kernel_spec)
    )
    fn = jax.jit(lambda a, b: jaxcnn.conv(a, b, mesh=mesh, algorithm=algorithm))
    return fn.lower(x, k).compile().as_text()


def _convolutions_after_permutes(algorithm: str) -> tuple[int, int]:
    """(convolutions of the compiled forward program, those that read a collective-permute's result,
    directly or not) for the ResNet-50 layer on n=2, h=2, w=2."""
    hlo = _compiled_forward(algorithm, dict(n=2, h=2, w=2))
    is_conv, opcodes, reads = _graph(hlo, parse_computations(hlo)[1])
    after_permute = _upstream(opcodes, reads, "collective-permute")
    convs = [n for n, conv in is_conv.items() if conv]
    return len(convs), sum(after_permute(n) for n in convs)


def test_the_core_convolution_reads_no_halo_in_the_compiled_hlo():
    """Without overlap the one local convolution reads the halo'd window; with it, exactly one
    convolution (the core) depends on no collective-permute, so a scheduler with asynchronous
    collectives may run it while the halos are in flight; the boundary strips (2 along h, 2 along w)
    read them."""
    assert _convolutions_after_permutes("spatial") == (1, 1)
    assert _convolutions_after_permutes("spatial+overlap") == (5, 4)


def test_interior_range_is_the_rows_every_block_computes_from_its_own_rows():
    """Brute force over blocks: an output row is interior iff on every block all its taps read that
    block's own input rows."""
    for size, kernel, stride, dilation, pad, parts in [
        (56, 3, 1, 1, (1, 1), 2),
        (56, 3, 2, 1, (0, 1), 4),
        (17, 4, 2, 1, (2, 1), 2),
        (20, 3, 1, 3, (3, 3), 4),
        (12, 7, 2, 1, (3, 3), 4),  # the block is narrower than the reach: no interior
    ]:
        dim = jaxcnn.conv_geometry(
            (1, 1, size, 1), (1, kernel, 1, 1), (1, stride), ((0, 0), pad), (1, dilation)
        ).dims[1]
        plan = halo_plan(dim, parts)
        expected = []
        for i in range(plan.out_block):
            ok = True
            for b in range(parts):
                first = b * plan.out_block * stride - pad[0] + i * stride
                taps = [first + dilation * r for r in range(kernel)]
                ok &= all(b * plan.in_block <= t < (b + 1) * plan.in_block for t in taps)
            expected.append(ok)
        got = interior_range(plan, dim)
        rows = [i for i, ok in enumerate(expected) if ok]
        assert got == ((rows[0], rows[-1] + 1) if rows else None), (
            size,
            kernel,
            stride,
            dilation,
            pad,
            parts,
        )
        assert rows == list(range(*got)) if got else not rows


def test_where_nothing_overlaps_it_runs_as_without():
    """No split dimension, a 1x1 kernel (no halo), a transposed layer, x gathered over k without
    streaming (3d): nothing overlaps and the program is the plain one. Streaming with x gathered over
    k (2d with k > 1) pipelines its panels instead (tests/algorithms/test_pipeline.py). An unknown
    variant is a clear error."""

    def layout(geom, algorithm, **grid):
        return jaxcnn.conv_layout(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm)

    geom = jaxcnn.conv_geometry((8, 32, 32, 16), (3, 3, 16, 16))
    one_by_one = jaxcnn.conv_geometry((8, 32, 32, 16), (1, 1, 16, 16))
    transposed = transposed_geometry((8, 16, 16, 16), (3, 3, 16, 16), 2, "SAME")
    for plain in (
        layout(geom, "spatial+overlap", n=8),
        layout(one_by_one, "spatial+overlap", h=8),
        layout(transposed, "spatial+overlap", h=4),
        layout(geom, "3d+overlap", h=2, k=2, c=2),
    ):
        assert not plain.overlaps and plain.interior is None and not plain.pipelined
    pipelined = layout(geom, "2d+overlap", h=2, k=4)
    assert pipelined.interior is None and pipelined.pipelined
    assert tuple(a for a in jaxcnn.ALGORITHMS if a != "data") == algorithms.OVERLAPPING
    for name in ("data+overlap", "+overlap", "spatial+overlap+overlap"):
        with pytest.raises(ValueError, match=re.escape(f"unknown algorithm {name!r}; valid algorithms are")):
            algorithms.get(name)
    _assert_exact(
        (2, 12, 12, 4), (3, 3, 4, 8), dict(strides=1, padding="SAME"), "3d+overlap", dict(h=2, k=2, c=2)
    )


@pytest.mark.parametrize(
    ("algorithm", "grid"),
    first_fast(
        [
            ("spatial+overlap", dict(n=2, h=2, w=2)),  # pieces concatenated along w: copied
            ("spatial+overlap", dict(h=8)),  # along h alone: written in place
            ("2d+overlap", dict(n=4, k=2)),  # double-buffered panels
        ]
    ),
)
def test_overlap_memory_band(algorithm, grid):
    """The compiled forward pass's arguments and outputs equal the model's, its temp memory lies in
    [forward_temp, forward_temp + layout_copy] (±10%), as for every plain algorithm."""
    assert_memory_band(jaxcnn.conv_geometry((32, 56, 56, 64), (3, 3, 64, 64)), algorithm, grid)
