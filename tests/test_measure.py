"""Tests of the communication meter: hand-written HLO, shard_map programs on 8 devices, 64/512 devices."""

import math
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn.measure import KINDS, HloParseError, measure, measure_conv, measure_hlo_text, shape_bytes
from jaxcnn.measure.compile import meter_compiled
from jaxcnn.runner.config import load_config
from jaxcnn.runner.prepare import assemble
from jaxcnn.runner.state import abstract
from jaxcnn.runner.step import jit_train_step
from tests.fake_devices import run_with_devices


def hlo(entry: str, *others: str) -> str:
    """A module with an ``add`` reducer, the given extra computations and an ENTRY body."""
    comps = "\n".join(textwrap.dedent(c).strip() + "\n" for c in others)
    entry_body = textwrap.indent(textwrap.dedent(entry).strip(), "  ")
    return (
        "HloModule test, num_partitions=8\n\n"
        "%add (a: f32[], b: f32[]) -> f32[] {\n  %a = f32[] parameter(0)\n  %b = f32[] parameter(1)\n"
        "  ROOT %s = f32[] add(%a, %b)\n}\n\n" + comps + "\nENTRY %main (p: f32[8]) -> f32[8] {\n"
        "  %p = f32[8]{0} parameter(0)\n" + entry_body + "\n}\n"
    )


# ----------------------------------------------------------------------------- parser, by hand


def test_shape_bytes_dtypes_tuples_layouts():
    assert shape_bytes("f32[2,3]{1,0}") == 24
    assert shape_bytes("bf16[4,128]{1,0:T(8,128)(2,1)}") == 1024
    assert shape_bytes("(f16[8], (s32[2], pred[3]), u8[])") == 16 + 8 + 3 + 1
    assert shape_bytes("s4[3]") == 2  # 12 bits, rounded up
    assert shape_bytes("f64[]") == 8


def test_all_gather_explicit_groups():
    text = hlo("ROOT %ag = f32[8,4]{1,0} all-gather(%p), channel_id=1, replica_groups={{0,1},{2,3}}, "
               "dimensions={0}, use_global_device_ids=true")  # fmt: skip
    r = measure_hlo_text(text, num_devices=4)
    # S = 128 bytes, p = 2: 64 bytes to each of the 4 devices.
    assert list(r.per_device) == [64.0] * 4
    assert (r.max_bytes, r.total_bytes, r.count("all-gather")) == (64.0, 256.0, 1)


def test_reduce_scatter_iota_groups():
    text = hlo("ROOT %rs = f32[4]{0} reduce-scatter(%p), channel_id=1, replica_groups=[2,4]<=[8], "
               "dimensions={0}, to_apply=%add")  # fmt: skip
    r = measure_hlo_text(text)
    (op,) = r.ops
    assert op.groups == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert op.buffer_bytes == 64  # operand = p * result
    assert r.max_bytes == 48.0 and r.total_bytes == 384.0  # 64 * 3/4 per device


def test_all_reduce_transposed_iota_and_tuple():
    text = hlo("ROOT %ar = (bf16[100], f32[4]) all-reduce(%p, %p), channel_id=1, "
               "replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add")  # fmt: skip
    (op,) = measure_hlo_text(text).ops
    assert op.groups == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert op.buffer_bytes == 216
    assert op.max_bytes == 216.0  # 2 * 216 * 1/2


@pytest.mark.parametrize(
    "groups,expected",
    [
        ("mesh['a'=2,'b'=4] {'b'}", ((0, 1, 2, 3), (4, 5, 6, 7))),
        ("mesh['a'=2,'b'=4] {'a'}", ((0, 4), (1, 5), (2, 6), (3, 7))),
        ("mesh['a'=2,'b'=4] {'a','b'}", (tuple(range(8)),)),
        ("mesh['x'=8] {'x':(2)2}", ((0, 2), (1, 3), (4, 6), (5, 7))),
        ("mesh['a'=2,'b'=4], device_ids=([2,4]<=[4,2]T(1,0)) {'b'}", ((0, 2, 4, 6), (1, 3, 5, 7))),
        # iota without "<=": arange(8).reshape(2,2,2).transpose(0,2,1) = [0,2,1,3,4,6,5,7] (seen in a
        # training step's all-to-all)
        ("mesh['a'=2,'b'=2,'c'=2], device_ids=([2,2,2]T(0,2,1)) {'c'}", ((0, 2), (1, 3), (4, 6), (5, 7))),
    ],
)
def test_mesh_axes_replica_groups(groups, expected):
    text = hlo(f"ROOT %ar = f32[8]{{0}} all-reduce(%p), replica_groups={groups}, to_apply=%add")
    (op,) = measure_hlo_text(text).ops
    assert op.groups == expected
    assert op.max_bytes == 2 * 32 * (len(expected[0]) - 1) / len(expected[0])


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data())
def test_iota_groups_partition_the_devices(dims, data):
    n = math.prod(dims)
    perm = data.draw(st.permutations(range(len(dims))))
    size = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    spec = f"[{n // size},{size}]<=[{','.join(map(str, dims))}]T({','.join(map(str, perm))})"
    text = hlo(f"ROOT %ag = f32[{4 * size}]{{0}} all-gather(%p), replica_groups={spec}, dimensions={{0}}")
    (op,) = measure_hlo_text(text, num_devices=n).ops
    assert sorted(v for g in op.groups for v in g) == list(range(n))  # every device exactly once
    assert all(len(g) == size for g in op.groups)
    assert op.total_bytes == n * 16 * size * (size - 1) / size  # S = 16·size bytes, (p-1)/p each


def test_all_to_all_empty_groups_mean_all_devices():
    r = measure_hlo_text(hlo("ROOT %a2a = f32[8,2]{1,0} all-to-all(%p), replica_groups={}, dimensions={0}"))
    assert list(r.per_device) == [56.0] * 8  # 64 * 7/8


def test_permute_targets_and_max_is_max_of_sums():
    text = hlo(
        """
        %cp1 = s32[10]{0} collective-permute(%p), channel_id=1, source_target_pairs={{0,1},{1,2}}
        ROOT %cp2 = s32[10]{0} collective-permute(%cp1), channel_id=2, source_target_pairs={{2,3},{3,3}}
        """
    )
    r = measure_hlo_text(text, num_devices=4)
    assert list(r.per_device) == [0.0, 40.0, 40.0, 40.0]  # the self pair (3, 3) moves nothing
    assert r.max_bytes == 40.0  # the sum of per-op maxima would be 80
    assert r.by_kind["collective-permute"].total_bytes == 120.0


def test_async_pairs_are_counted_once():
    wrapped = """
        %wrapped (w: f32[8]) -> f32[8] {
          %w = f32[8]{0} parameter(0)
          ROOT %a2a = f32[8]{0} all-to-all(%w), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
        }
    """
    text = hlo(
        """
        %ags = (f32[2]{0}, f32[8]{0}) all-gather-start(%p), replica_groups=[2,4]<=[8], dimensions={0}
        %agd = f32[8]{0} all-gather-done(%ags)
        %ars = f32[16]{0} all-reduce-start(%p), replica_groups={{0,1}}, to_apply=%add
        %ard = f32[16]{0} all-reduce-done(%ars)
        %cps = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(%p), source_target_pairs={{0,1}}
        %cpd = f32[4]{0} collective-permute-done(%cps)
        %rss = ((f32[16]), f32[8]) reduce-scatter-start(%p), replica_groups={{2,3}}, to_apply=%add
        %rsd = f32[8]{0} reduce-scatter-done(%rss)
        %as = ((f32[8]{0}), f32[8]{0}, s32[]) async-start(%p), calls=%wrapped
        ROOT %ad = f32[8]{0} async-done(%as), calls=%wrapped
        """,
        wrapped,
    )
    r = measure_hlo_text(text)
    counts = {k: s.count for k, s in r.by_kind.items()}
    assert counts == dict.fromkeys(KINDS, 1)
    ag, rs, ar, a2a, cp = (r.by_kind[k] for k in KINDS)
    assert ag.total_bytes == 8 * 32 * 3 / 4
    assert ar.total_bytes == 2 * 64.0  # two devices, 2 * 64 * 1/2 each
    assert cp.total_bytes == 16.0
    assert rs.total_bytes == 2 * 32.0  # operand 2 * 32 bytes, half received, on devices 2 and 3
    assert a2a.total_bytes == 8 * 32 * 7 / 8


WHILE_COMPS = (
    """
    %bi (ib: (s32[], f32[8])) -> (s32[], f32[8]) {
      %ib = (s32[], f32[8]{0}) parameter(0)
      %iv = f32[8]{0} get-tuple-element(%ib), index=1
      %ag = f32[8]{0} all-gather(%iv), replica_groups={{0,1}}, dimensions={0}
      %ii = s32[] get-tuple-element(%ib), index=0
      ROOT %it = (s32[], f32[8]{0}) tuple(%ii, %ag)
    }
    """,
    """
    %cd (c: (s32[], f32[8])) -> pred[] {
      %c = (s32[], f32[8]{0}) parameter(0)
      ROOT %lt = pred[] constant(true)
    }
    """,
    """
    %bo (ob: (s32[], f32[8])) -> (s32[], f32[8]) {
      %ob = (s32[], f32[8]{0}) parameter(0)
      %wi = (s32[], f32[8]) while(%ob), condition=%cd, body=%bi, backend_config={"known_trip_count":{"n":"3"}}
      %ov = f32[8]{0} get-tuple-element(%wi), index=1
      %ar = f32[8]{0} all-reduce(%ov), replica_groups={{0,1,2,3}}, to_apply=%add
      %oi = s32[] get-tuple-element(%wi), index=0
      ROOT %ot = (s32[], f32[8]{0}) tuple(%oi, %ar)
    }
    """,
)  # fmt: skip


def test_nested_while_trip_counts_multiply():
    text = hlo(
        """
        %z = s32[] constant(0)
        %t = (s32[], f32[8]{0}) tuple(%z, %p)
        %w = (s32[], f32[8]) while(%t), condition=%cd, body=%bo, backend_config={"known_trip_count":{"n":"5"}}
        ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
        """,
        *WHILE_COMPS,
    )  # fmt: skip
    r = measure_hlo_text(text)
    assert r.count("all-gather") == 15 and r.count("all-reduce") == 5
    assert r.per_device[0] == 15 * 16.0 + 5 * 2 * 32 * 3 / 4
    assert r.per_device[4] == 0.0  # in no group of size > 1


def test_while_without_trip_count_is_an_error():
    text = hlo(
        """
        %z = s32[] constant(0)
        %t = (s32[], f32[8]{0}) tuple(%z, %p)
        %w = (s32[], f32[8]{0}) while(%t), condition=%cd, body=%bi
        ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
        """,
        *WHILE_COMPS,
    )
    with pytest.raises(HloParseError, match="known_trip_count"):
        measure_hlo_text(text)


def test_unsupported_and_bad_ids_raise():
    with pytest.raises(HloParseError, match="send"):
        measure_hlo_text(hlo("%tok = token[] after-all()\nROOT %s = (f32[8], u32[], token[]) send(%p, %tok)"))
    with pytest.raises(HloParseError, match="beyond num_devices"):
        measure_hlo_text(hlo("ROOT %ag = f32[8]{0} all-gather(%p), replica_groups={{0,9}}, dimensions={0}"))


# ----------------------------------------------------------------------------- 8 devices, end to end


def _sharded(mesh, shape, spec, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def test_shard_map_collectives_exact_bytes():
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    ids = np.arange(8).reshape(2, 4)

    def body(x):  # local x: (4, 8) f32 = 128 bytes
        g = lax.all_gather(x, "b", tiled=True)  # result 512 B over p=4: 384 each
        s = lax.psum_scatter(g, "b", scatter_dimension=0, tiled=True)  # operand 512 B: 384 each
        s = lax.psum(s, "a")  # 128 B over p=2: 128 each
        s = lax.ppermute(s, "b", [(0, 1), (1, 2), (2, 3)])  # 128 B to 3 of every 4 devices
        return lax.all_to_all(s, "a", 0, 0, tiled=True)  # 128 B over p=2: 64 each

    f = jax.shard_map(body, mesh=mesh, in_specs=P("a", "b"), out_specs=P("a", "b"))
    r = measure(f, _sharded(mesh, (8, 32), P("a", "b")))
    kinds = {k: s.total_bytes for k, s in r.by_kind.items()}
    assert kinds == {
        "all-gather": 8 * 384.0,
        "reduce-scatter": 8 * 384.0,
        "all-reduce": 8 * 128.0,
        "all-to-all": 8 * 64.0,
        "collective-permute": 6 * 128.0,
    }
    expected = np.full(8, 384.0 + 384 + 128 + 64) + np.where(ids % 4 > 0, 128.0, 0).reshape(-1)
    np.testing.assert_array_equal(r.per_device, expected)
    assert r.max_bytes == 1088.0 and r.memory is not None and r.memory.argument_bytes == 128


def test_fori_loop_of_three_all_gathers_is_charged_three_times():
    mesh = jax.make_mesh((8,), ("i",))

    def body(x):
        def step(t, acc):
            return acc + lax.all_gather(acc, "i", tiled=True).sum(0, keepdims=True) * t

        return lax.fori_loop(0, 3, step, x)

    f = jax.shard_map(body, mesh=mesh, in_specs=P("i"), out_specs=P("i"))
    r = measure(f, _sharded(mesh, (8, 16), P("i")))
    assert [op.executions for op in r.ops] == [3]  # still a while loop, not unrolled
    assert r.max_bytes == 3 * 512 * 7 / 8 and r.total_bytes == 8 * 3 * 448.0
    row = next(line for line in str(r).splitlines() if line.startswith("all-gather"))
    assert row.split() == ["all-gather", "3", "1,344", "10,752"]


def test_conv_fwd_bwd_3d_and_data():
    geom = jaxcnn.conv_geometry((4, 8, 8, 16), (3, 3, 16, 16))
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    fwd, bwd = measure_conv(geom, mesh=mesh, algorithm="3d")
    ids = np.arange(8).reshape(mesh.devices.shape)
    c_groups = {frozenset(g) for g in ids.reshape(-1, 2).tolist()}
    (dy_gather,) = [op for op in bwd.ops if op.kind == "all-gather"]
    assert {frozenset(g) for g in dy_gather.groups} == c_groups
    assert dy_gather.buffer_bytes == 2 * 8 * 8 * 8 * 4  # dy (N/n, Ho, Wo, K/k) gathered over c
    assert bwd.count("all-reduce") == 0 and bwd.count("reduce-scatter") == 2
    # dy: 4096*1/2; dx over k: (2,8,8,8)*4*1/2; dkernel over n: (3,3,8,8)*4*1/2.
    assert bwd.max_bytes == 2048 + 2048 + 1152
    # forward: x over k, kernel over n, partial output over c (the duals).
    assert fwd.max_bytes == 2048 + 1152 + 2048 and fwd.count("all-reduce") == 0

    geom = jaxcnn.conv_geometry((8, 8, 8, 16), (3, 3, 16, 16))  # batch divisible by n: no resharding
    fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(n=8), algorithm="data")
    assert fwd.max_bytes == 0.0
    (ar,) = bwd.ops
    assert (ar.kind, ar.buffer_bytes, bwd.max_bytes) == ("all-reduce", 9216, 2 * 9216 * 7 / 8)


# ----------------------------------------------------------------------------- 64 and 512 devices

SCRIPT = """
import json, sys
import jaxcnn
from jaxcnn.measure import measure_conv
n, k, c, batch, hw, ch = (int(v) for v in sys.argv[1:])
geom = jaxcnn.conv_geometry((batch, hw, hw, ch), (3, 3, ch, ch))
fwd, _ = measure_conv(geom, mesh=jaxcnn.make_mesh(n=n, k=k, c=c), algorithm="3d", backward=False)
print(json.dumps({"devices": fwd.num_devices, "max": fwd.max_bytes, "total": fwd.total_bytes}))
"""


@pytest.mark.parametrize(
    "n,k,c,batch,hw,ch",
    [(4, 4, 4, 8, 14, 64), pytest.param(8, 8, 8, 16, 14, 256, marks=pytest.mark.slow)],
)
def test_3d_conv_on_many_fake_devices(n, k, c, batch, hw, ch):
    got = run_with_devices(n * k * c, SCRIPT, n, k, c, batch, hw, ch, timeout=300)
    window = (batch // n) * hw * hw * 4  # bytes of one channel of the local batch/rows
    x_gather = window * ch // c * (k - 1) / k  # x over k, result C/c channels
    kernel_gather = 9 * (ch // c) * (ch // k) * 4 * (n - 1) / n  # kernel over n
    out_scatter = window * ch // k * (c - 1) / c  # partial output over c, operand K/k channels
    expected = x_gather + kernel_gather + out_scatter
    assert got["devices"] == n * k * c
    assert got["max"] == expected and got["total"] == expected * n * k * c


# ----------------------------------------------------------------------------- compiler settings

#: XLA's own defaults, and what tests/conftest.py compiles with (JAX_DISABLE_MOST_OPTIMIZATIONS and
#: XLA_FLAGS=--xla_cpu_use_fusion_emitters=false). Every option is set: a compile option left out takes
#: its value from XLA_FLAGS, which here are the fast ones.
FULL = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
    "xla_cpu_use_fusion_emitters": True,
}
FAST = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
#: The legacy emitters wrap no single instruction in a fusion of its own, so XLA assigns temporaries a
#: little differently: measured +/-3% (1,152 of 45,864 bytes for the 2d layer below).
TEMP_RTOL = 0.05


def _same_meter_reading(lowered) -> None:
    """What the meter reads (every collective: kind, replica groups, buffer, executions, bytes per
    device, in program order) is the same under both settings; so are the argument, output and alias
    bytes; temporaries agree within TEMP_RTOL."""
    fast, full = (lowered.compile(compiler_options=options) for options in (FAST, FULL))
    assert fast.as_text() != full.as_text()  # the two settings were both applied
    ops = [
        [(o.kind, o.groups, o.buffer_bytes, o.executions, o.per_device) for o in meter_compiled(c).ops]
        for c in (fast, full)
    ]
    assert ops[0] == ops[1] and ops[0]
    memory = [c.memory_analysis() for c in (fast, full)]
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes"):
        assert getattr(memory[0], field) == getattr(memory[1], field), field
    temps = [m.temp_size_in_bytes for m in memory]
    assert abs(temps[0] - temps[1]) <= TEMP_RTOL * temps[1], temps


@pytest.mark.parametrize(
    ("algorithm", "grid"),
    [("2d", dict(n=4, k=2)), pytest.param("spatial", dict(n=2, h=2, w=2), marks=pytest.mark.slow)],
)
def test_fast_compilation_leaves_what_the_meter_reads_unchanged(algorithm, grid):
    """tests/conftest.py compiles for speed: XLA's backend optimisations off and its older CPU emitters
    (the second takes a third off the suite's CPU time). They change the machine code and how single
    instructions are wrapped, never the collectives that the meter reads."""
    mesh = jaxcnn.make_mesh(**grid)
    geom = jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 16, 16))
    layout = jaxcnn.conv_layout(geom, mesh=mesh, algorithm=algorithm)
    x = _sharded(mesh, geom.x_shape, layout.x_spec)
    kernel = _sharded(mesh, geom.kernel_shape, layout.kernel_spec)
    step = jax.jit(jax.grad(lambda a, b: jnp.sum(jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm) ** 2)))
    _same_meter_reading(step.lower(x, kernel))


def test_fast_compilation_leaves_a_train_steps_meter_reading_unchanged():
    """The same for configs/default.yaml's whole train step (four placements, BatchNorm, pooling, the
    head, the optimizer): fusions of many instructions, and every kind of collective the runner meters."""
    cfg = load_config(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
    )
    parts = assemble(cfg, compile_only=True)
    step = jit_train_step(parts.graphs, parts.tx, parts.state, parts.mesh)
    _same_meter_reading(step.lower(abstract(parts.state), *parts.batch))
