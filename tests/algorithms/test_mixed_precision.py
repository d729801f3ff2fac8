"""bfloat16 through every algorithm (docs/mixed_precision.md): results equal single-device lax in
bfloat16, what only moves travels as 2-byte words, what is summed in the reduce dtype, and the
:class:`jaxcnn.dtypes.Dtypes` rules."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.dtypes import Dtypes, as_bits, from_bits, reduction_dtype

#: One grid per algorithm that splits what the algorithm splits (halos, gathers over k and the rows,
#: reduce-scatters over c, replicated kernels), on 8 devices.
GRIDS = {
    "data": dict(n=8),
    "spatial": dict(n=2, h=2, w=2),
    "filter": dict(n=2, k=4),
    "channel": dict(n=4, c=2),
    "2d": dict(n=2, h=2, k=2),
    "2.5d": dict(n=2, k=2, c=2),
    "3d": dict(n=2, k=2, c=2),
    "2d+overlap": dict(h=2, k=4),  # 4 channel panels: the double-buffered loop
    "spatial+overlap": dict(n=2, h=2, w=2),
}
DN = ("NHWC", "HWIO", "NHWC")
MOVES = ("all-gather", "collective-permute", "all-to-all")
SUMS = ("reduce-scatter", "all-reduce")


def _loss(conv):
    def loss(x, kernel):
        y = conv(x.astype(jnp.bfloat16), kernel)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def _reference(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel.astype(jnp.bfloat16), (2, 1), "SAME", rhs_dilation=(1, 2), dimension_numbers=DN,
        preferred_element_type=jnp.float32,
    ).astype(jnp.bfloat16)  # fmt: skip


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


#: make test runs these (the pipelined panels, the reduce-scatter over c and the replicated kernel, the
#: overlapped halos, the channel split); make test-sweep every algorithm.
KEPT = ("2d+overlap", "3d", "spatial+overlap", "channel")


def _sweep_unless(kept: bool, *values):
    return pytest.param(*values) if kept else pytest.param(*values, marks=pytest.mark.sweep)


@pytest.mark.parametrize("algorithm", [_sweep_unless(a in KEPT, a) for a in GRIDS])
def test_bfloat16_equals_single_device_lax(algorithm):
    mesh = jaxcnn.make_mesh(**GRIDS[algorithm])
    x = jax.random.normal(jax.random.key(0), (4, 16, 12, 16))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) * 0.1  # float32: the parameters

    def ours(xb, k):  # the kernel reaches jaxcnn in float32 and is cast on the devices
        return jaxcnn.conv(
            xb, k, mesh=mesh, algorithm=algorithm, strides=(2, 1), dilation=(1, 2), dtype=jnp.bfloat16
        )

    (loss, (dx, dk)), (want, (dx0, dk0)) = _loss(ours)(x, kernel), _loss(_reference)(x, kernel)
    assert dk.dtype == jnp.float32 and dx.dtype == jnp.float32
    # bfloat16 has 8 significant bits (2^-8 = 3.9e-3): products are exact in float32 accumulation,
    # the results differ by the order of the sums and the last roundings, a few 1e-3 in norm.
    assert abs(float(loss) / float(want) - 1) < 1e-2, (float(loss), float(want))
    assert _relative(dx, dx0) < 1e-2 and _relative(dk, dk0) < 1e-2, (_relative(dx, dx0), _relative(dk, dk0))


def _collective_dtypes(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    pattern = r"= \(?([a-z0-9]+)\[[^=]* (" + "|".join(MOVES + SUMS) + r")(?:-start)?\("
    for m in re.finditer(pattern, text):
        out.setdefault(m.group(2), set()).add(m.group(1))
    return out


@pytest.mark.parametrize(
    "algorithm, reduce_dtype",
    [
        _sweep_unless(algorithm == "2d" or reduce_dtype is None, algorithm, reduce_dtype)
        for algorithm in ("2d", "3d", "spatial", "data")
        for reduce_dtype in (None, jnp.bfloat16)
    ],
)
def test_what_moves_is_two_bytes_and_what_sums_is_the_reduce_dtype(algorithm, reduce_dtype):
    mesh = jaxcnn.make_mesh(**GRIDS[algorithm])
    x = jax.ShapeDtypeStruct((4, 16, 16, 16), jnp.bfloat16)
    kernel = jax.ShapeDtypeStruct((3, 3, 16, 16), jnp.float32)

    def loss(a, k):
        y = jaxcnn.conv(a, k, mesh=mesh, algorithm=algorithm, dtype=jnp.bfloat16, reduce_dtype=reduce_dtype)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    dtypes = _collective_dtypes(text)
    assert any(k in dtypes for k in SUMS), dtypes  # every one of these grids sums something
    for kind in MOVES:
        assert dtypes.get(kind, {"u16"}) == {"u16"}, (kind, dtypes)
    for kind in SUMS:  # XLA:CPU sums 16-bit floats in float32 whatever the program asks
        assert dtypes.get(kind, {"f32"}) == {"f32"}, (kind, dtypes)


def test_dtypes_rules():
    assert reduction_dtype("bfloat16") == np.dtype("float32")
    assert reduction_dtype("float32") == np.dtype("float32")
    assert reduction_dtype("float64") == np.dtype("float64")
    assert reduction_dtype("bfloat16", "bfloat16") == np.dtype("bfloat16")
    bf16 = Dtypes("bfloat16")
    assert (bf16.itemsize, bf16.reduce_dtype, bf16.reduce_itemsize) == (2, "float32", 4)
    sums16 = Dtypes(jnp.bfloat16, jnp.bfloat16)
    assert (sums16.compute, sums16.reduce_dtype) == ("bfloat16", "bfloat16")
    assert sums16.on("cpu") == Dtypes("bfloat16", "float32") and sums16.on("gpu") is sums16
    assert Dtypes.of("float32") == Dtypes() and Dtypes.of(bf16) is bf16


def test_bits_round_trip():
    x = jnp.asarray([1.0, -2.5, jnp.inf, jnp.nan, 3e-38], jnp.bfloat16)
    bits = as_bits(x)
    assert bits.dtype == jnp.uint16
    np.testing.assert_array_equal(np.asarray(from_bits(bits, x.dtype)).view(np.uint16), np.asarray(bits))
    f32 = jnp.ones(3)
    assert as_bits(f32) is f32 and from_bits(f32, f32.dtype) is f32
