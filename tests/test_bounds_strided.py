"""The stride-aware lower bound (docs/lower_bound.md §2): the phase-weighted Lemma 1, its solver, the
identities it must keep, and never above what a jaxcnn algorithm moves on strided layers."""

import functools
import itertools
import math
import random

import pytest

import jaxcnn
from jaxcnn import bounds
from jaxcnn.bounds import lower_bound, real_macs
from tests.test_bounds import CUBE, GENERIC, GROUPED, TRANSPOSED, assert_no_grid_beats_the_bound


@pytest.mark.parametrize(
    "x_shape,stride",
    [((8, 15, 12), 2), ((4, 9, 12, 16), 3), ((2, 6, 9, 8, 16), (2, 3, 2)), ((8, 14, 14, 32), (2, 1))],
    ids=["1-D", "2-D", "3-D", "2-D-one-dim"],
)
def test_pointwise_strided_layer_is_the_stride_1_layer_on_its_subsampled_input(x_shape, stride):
    # A 1x1 stride-s layer reads exactly x[:, ::s, ::s]: the same computation, bit for bit the same bound.
    rank = len(x_shape) - 2
    strides = (stride,) * rank if isinstance(stride, int) else stride
    strided = jaxcnn.conv_geometry(x_shape, (*[1] * rank, x_shape[-1], 24), strides, "VALID")
    sub = tuple(-(-size // s) for size, s in zip(x_shape[1:-1], strides, strict=True))
    plain = jaxcnn.conv_geometry((x_shape[0], *sub, x_shape[-1]), (*[1] * rank, x_shape[-1], 24), 1, "VALID")
    assert strided.y_shape == plain.y_shape and real_macs(strided) == real_macs(plain)
    for p in (2, 8, 64):
        for pass_ in ("forward", "backward"):
            assert lower_bound(strided, p, 4e6, pass_=pass_) == lower_bound(plain, p, 4e6, pass_=pass_)
            assert lower_bound(strided, p, pass_=pass_).independent > 0


@pytest.mark.parametrize(
    "geom",
    [
        GENERIC,
        CUBE,
        GROUPED,
        TRANSPOSED,
        jaxcnn.conv_geometry((4, 13, 11, 8), (5, 3, 8, 16), 1, ((2, 1), (0, 3))),
        jaxcnn.conv_geometry((2, 6, 9, 10, 8), (3, 2, 3, 8, 4), 1, "SAME"),
    ],
    ids=["3x3", "cube", "grouped", "transposed", "uneven-pads", "3-D"],
)
def test_stride_1_bound_is_the_stride_blind_one(geom):
    # At stride 1 every row is one phase read by all R taps: the bound is bit for bit the stride-blind
    # bound (R·S in the product, all of x), also for grouped and transposed layers (input dilation at
    # stride 1).
    assert all(d.phases() == [(d.kernel, d.size)] for d in geom.dims)
    for pass_ in ("forward", "backward"):
        got = lower_bound(geom, 8, 4e6, pass_=pass_)
        assert got == _stride_blind_bound(geom, 8, 4e6, pass_)


def _stride_blind_bound(geom, p, memory, pass_, taps=None, size_x=None):
    """The bound with one product weight ``taps`` (default R·S: the bound before it knew strides) and
    ``size_x`` elements of x (default all of them)."""
    f, fi = real_macs(geom), real_macs(geom) / p
    n, c, k, g = geom.batch, geom.channels_in, geom.channels_out, geom.groups
    per_out, per_tap, per_in = zip(*(d.real_taps()[1:] for d in geom.dims), strict=True)
    caps = (k // g * math.prod(per_in), n * math.prod(per_tap), c // g * math.prod(per_out))
    sizes = [
        float(size_x or math.prod(geom.x_shape)),
        *(float(math.prod(s)) for s in (geom.kernel_shape, geom.y_shape)),
    ]
    taps = taps or math.prod(geom.window)
    words, footprint = bounds._water_fill(
        fi * fi / taps,
        [min(fi / cap, s) for cap, s in zip(caps, sizes, strict=True)],
        sizes,
        [s / p for s in sizes],
    )
    m = memory / 4
    dependent = max(0.0, (1 if pass_ == "forward" else 2) * f / (p * math.sqrt(taps * m)) - m) * 4
    return bounds.Bound(pass_, p, f, words * 4, dependent, tuple(footprint))


STEM = jaxcnn.conv_geometry((32, 224, 224, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3)))  # ResNet-50's stem
DOWN = jaxcnn.conv_geometry((32, 56, 56, 128), (3, 3, 128, 128), 2, ((0, 1), (0, 1)))  # layer2.0.conv2


def test_phases_count_taps_and_read_rows_per_residue():
    # 7 taps of stride 2, lo = 3: taps 1, 3, 5 read the even rows, taps 0, 2, 4, 6 the odd ones.
    assert STEM.dims[0].phases() == [(3, 112), (4, 112)]
    # 3 taps of stride 2, lo = 0: taps 0 and 2 read the even rows, tap 1 the odd ones.
    assert DOWN.dims[0].phases() == [(2, 28), (1, 28)]
    # 2 taps of stride 3, VALID on 12 rows: rows 0, 1, 3, 4, ... are read, residue 2 never.
    gappy = jaxcnn.conv_geometry((4, 12, 12, 8), (2, 2, 8, 8), 3, "VALID")
    assert gappy.dims[0].phases() == [(1, 4), (1, 4)] and gappy.dims[0].touched_rows() == 8
    # dilation 2 at stride 2: every tap reads the same residue, the other is never read
    assert jaxcnn.conv_geometry((1, 9, 9, 1), (3, 3, 1, 1), 2, "VALID", 2).dims[0].phases() == [(3, 5)]
    quarter = 32 * 28 * 28 * 128  # each of the four phases of x: a quarter of it, all read
    assert bounds._x_phases(DOWN) == [(4, quarter), (2, quarter), (2, quarter), (1, quarter)]


@pytest.mark.parametrize("geom", [STEM, DOWN], ids=["stem", "3x3-stride-2"])
def test_phase_weights_sharpen_the_tap_class_bound(geom):
    # The previous stride-aware form put τ = Π #{⌊d·r/σ⌋} (16 for the stem, 4 here) in front of all of x;
    # the phase weights average Σ n_φ |x_φ| / |x| = 12.25 and 2.25 over x, which raises the bound.
    classes = math.prod(len({d.dilation * r // d.stride for r in range(d.kernel)}) for d in geom.dims)
    for pass_ in ("forward", "backward"):
        got = lower_bound(geom, 64, pass_=pass_).independent
        assert got > 1.15 * _stride_blind_bound(geom, 64, 1e9, pass_, taps=classes).independent


def _lemma_sides(geom, subset):
    """(|U|², A_y·A_w·Σ_φ n_φ·|φ_x(U) ∩ x_φ|) for a set of iterations (n, *out, k, c, *taps) of a
    small layer."""
    weights = [{(d.dilation * r - d.pad[0]) % d.stride: 0 for r in range(d.kernel)} for d in geom.dims]
    for w, d in zip(weights, geom.dims, strict=True):
        for r in range(d.kernel):
            w[(d.dilation * r - d.pad[0]) % d.stride] += 1
    rank = geom.rank
    xs, ws, ys = set(), set(), set()
    for n, *rest in subset:
        out, (k, c), taps = rest[:rank], rest[rank : rank + 2], rest[rank + 2 :]
        rows = tuple(
            d.stride * o - d.pad[0] + d.dilation * r for d, o, r in zip(geom.dims, out, taps, strict=True)
        )
        xs.add((n, *rows, c))
        ws.add((*taps, c, k))
        ys.add((n, *out, k))
    weighted = sum(
        math.prod(w[row % d.stride] for w, d, row in zip(weights, geom.dims, x[1:-1], strict=True))
        for x in xs
    )
    return len(subset) ** 2, len(ys) * len(ws) * weighted


@pytest.mark.parametrize(
    "geom",
    [
        jaxcnn.conv_geometry((2, 9, 3), (5, 3, 2), 2, ((2, 2),)),
        jaxcnn.conv_geometry((1, 7, 6, 2), (3, 3, 2, 2), 2, ((1, 1), (0, 1))),
        jaxcnn.conv_geometry((1, 11, 2), (4, 2, 2), 3, ((1, 2),), 2),
    ],
    ids=["1-D-5x2", "2-D-3x3x2", "1-D-dilated-stride-3"],
)
def test_phase_weighted_lemma_on_every_kind_of_iteration_set(geom):
    # |U|² ≤ A_y·A_w·Σ_φ n_φ·|φ_x(U) ∩ x_φ| for whole phase slices, boxes and random subsets of the
    # real iterations; the full phase slices come close to equality, so a smaller weight would fail.
    ranges = [
        range(geom.batch),
        *(range(d.out) for d in geom.dims),
        range(geom.channels_out),
        range(geom.channels_in),
    ]
    space = []
    for it in itertools.product(*ranges, *(range(d.kernel) for d in geom.dims)):
        out, taps = it[1 : 1 + geom.rank], it[3 + geom.rank :]
        rows = [
            d.stride * o - d.pad[0] + d.dilation * r for d, o, r in zip(geom.dims, out, taps, strict=True)
        ]
        if all(0 <= row < d.size for row, d in zip(rows, geom.dims, strict=True)):
            space.append(it)
    rng = random.Random(0)
    phase_of = [lambda r, d=d: (d.dilation * r - d.pad[0]) % d.stride for d in geom.dims]
    phase_slices = {}
    for it in space:
        phase_slices.setdefault(
            tuple(f(r) for f, r in zip(phase_of, it[3 + geom.rank :], strict=True)), []
        ).append(it)
    subsets = [space, *phase_slices.values()]
    for _ in range(200):
        box = [set(rng.sample(list(r), rng.randint(1, len(r)))) for r in ranges]
        subsets.append([it for it in space if all(v in b for v, b in zip(it, box, strict=False))])
        subsets.append(rng.sample(space, rng.randint(1, len(space))))
    tightest = 0.0
    for subset in filter(None, subsets):
        lhs, rhs = _lemma_sides(geom, subset)
        assert lhs <= rhs
        tightest = max(tightest, lhs / rhs)
    assert tightest > 0.5


def _phased_cost(xs, q, pieces, low, high, share):
    """The least cost with the x footprint ``xs`` per phase (A_w, A_y from the plain water fill)."""
    big_x = sum(n * x for (n, _, _), x in zip(pieces, xs, strict=True))
    if min(xs) < 0 or any(x > full for (_, _, full), x in zip(pieces, xs, strict=True)):
        return math.inf
    if big_x * high[0] * high[1] < q:
        return math.inf
    rest = bounds._water_fill(q / big_x, [*low, 1.0], [*high, 1.0], [*share, 1.0])[0]
    return rest + sum(max(0.0, x - s) for (_, s, _), x in zip(pieces, xs, strict=True))


def test_phased_solver_is_the_minimum():
    # min Σ_φ (x_φ - s_φ)⁺ + (A_w - s_w)⁺ + (A_y - s_y)⁺ s.t. (Σ n_φ x_φ)·A_w·A_y ≥ q, by brute force over a
    # grid of (x_1, x_2) (the best A_w, A_y for each from the plain water fill): the solver is below it,
    # and close.
    rng = random.Random(1)
    for _ in range(20):
        pieces = [(rng.randint(1, 6), rng.uniform(1, 5), rng.uniform(5, 40)) for _ in range(2)]
        share, high, low = (
            [rng.uniform(1, 5), rng.uniform(1, 5)],
            [rng.uniform(5, 40), rng.uniform(5, 40)],
            [0.5, 0.5],
        )
        q = rng.uniform(0.1, 0.9) * sum(n * full for n, _, full in pieces) * high[0] * high[1]
        got, (a_x, a_w, a_y) = bounds._water_fill_phased(q, pieces, 0.0, low, high, share)

        total = functools.partial(_phased_cost, q=q, pieces=pieces, low=low, high=high, share=share)

        steps = 12  # a coarse grid, then a pattern search around its best point
        best_xs = min(
            (
                (pieces[0][2] * i / steps, pieces[1][2] * j / steps)
                for i in range(steps + 1)
                for j in range(steps + 1)
            ),
            key=total,
        )
        step = max(pieces[0][2], pieces[1][2]) / steps
        while step > 1e-4:
            moves = [(best_xs[0] + a * step, best_xs[1] + b * step) for a in (-1, 0, 1) for b in (-1, 0, 1)]
            nxt = min(moves, key=total)
            best_xs, step = (nxt, step) if total(nxt) < total(best_xs) else (best_xs, step / 2)
        best = total(best_xs)
        assert best - 1e-3 * (1 + best) <= got <= best * (1 + 1e-9)
        assert (
            a_x <= sum(full for _, _, full in pieces)
            and low[0] <= a_w <= high[0]
            and low[1] <= a_y <= high[1]
        )


def test_one_phase_solver_is_the_water_fill():
    # One phase of weight n is the product n·A_x·A_w·A_y: the same minimum as the plain water fill of q/n.
    for n, s, full in ((1, 3.0, 30.0), (4, 2.0, 50.0), (9, 0.5, 8.0)):
        low, high, share = [0.1, 0.1], [25.0, 60.0], [2.0, 3.0]
        got = bounds._water_fill_phased(1e4, [(n, s, full)], 0.0, low, high, share)[0]
        want = bounds._water_fill(1e4 / n, [0.0, *low], [full, *high], [s, *share])[0]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


STRIDED = [
    jaxcnn.conv_geometry((8, 16, 16, 3), (7, 7, 3, 8), 2, ((3, 3), (3, 3))),  # a stem
    jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16), 2, ((0, 1), (0, 1))),
    jaxcnn.conv_geometry((8, 8, 8, 16), (1, 1, 16, 32), 2, "VALID"),
    jaxcnn.conv_geometry((4, 9, 9, 8), (3, 3, 8, 8), 2, "SAME", 2),
    jaxcnn.conv_geometry((4, 12, 12, 8), (2, 2, 8, 8), 3, "VALID"),
    jaxcnn.conv_geometry((4, 6, 8, 8, 8), (3, 3, 3, 8, 8), 2, "SAME"),
]


@pytest.mark.parametrize("geom", STRIDED, ids=["stem", "3x3", "1x1", "dilated", "gappy", "3-D"])
def test_no_grid_beats_the_strided_bound(geom):
    # Every algorithm x grid on 8 devices, each pass on its own (the kernel replicated where it starts so).
    assert_no_grid_beats_the_bound(geom)
