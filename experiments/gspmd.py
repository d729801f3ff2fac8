"""GSPMD baselines for one convolution layer: ``jax.jit`` of plain ``lax.conv_general_dilated`` (NHWC /
HWIO) with ``in_shardings`` / ``out_shardings`` on a mesh of all P devices, one of four standard
shardings:

| family | mesh | x | kernel | y |
|---|---|---|---|---|
| ``batch`` | n = P | ``P('n')`` | replicated | ``P('n')`` |
| ``batch+spatial`` | n·h·w = P | ``P('n','h','w')`` | replicated | ``P('n','h','w')`` |
| ``batch+out-channel`` | n·k = P | ``P('n',.,.,'k')`` ¹ | ``P(.,.,.,'k')`` | ``P('n',.,.,'k')`` |
| ``in-channel`` | n·c = P | ``P('n',.,.,'c')`` | ``P(.,.,'c',.)`` | ``P('n',.,.,'c')`` |

¹ ``P('n')`` (x replicated over k) when k does not divide C.

Every array is fully distributed (no replicated activations) except where noted, like the layouts
``jaxcnn.measure.measure_conv`` gives jaxcnn's algorithms. Split sizes are divisors that split the
shape evenly (x, y and kernel dimensions); a family with no even split is infeasible and skipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn.geometry import ConvGeometry

FAMILIES = ("batch", "batch+spatial", "batch+out-channel", "in-channel")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One GSPMD sharding of one layer: mesh sizes and the specs of x, kernel and y."""

    family: str
    grid: dict[str, int]
    x: P
    kernel: P
    y: P

    @property
    def label(self) -> str:
        return "·".join(f"{a}{s}" for a, s in self.grid.items() if s > 1) or "1"


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


def _grid(**sizes: int) -> dict[str, int]:
    return {a: sizes.get(a, 1) for a in jaxcnn.AXES}


def _spatial_splits(geom: ConvGeometry, parts: int) -> Iterator[tuple[int, int]]:
    """(h, w) with h·w = parts splitting H, Ho, W, Wo evenly, most square first."""
    opts = [
        (h, parts // h)
        for h in _divisors(parts)
        if geom.h.size % h == 0
        and geom.h.out % h == 0
        and geom.w.size % (parts // h) == 0
        and geom.w.out % (parts // h) == 0
    ]
    yield from sorted(opts, key=lambda hw: (abs(math.log(hw[0] / hw[1])), -hw[0]))


def variants(geom: ConvGeometry, num_devices: int, per_family: int = 3) -> tuple[list[Variant], list[str]]:
    """The GSPMD shardings tried for ``geom`` on ``num_devices`` devices, and notes on infeasible families.

    Per family at most ``per_family`` splits: the largest batch split first (batch+spatial: the most
    square spatial split of the rest; batch+out-channel / in-channel: the smallest channel split whose
    batch split divides N, then 2x and 4x that).
    """
    n_, c_, k_ = geom.batch, geom.channels_in, geom.channels_out
    p = num_devices
    out: list[Variant] = []
    notes: list[str] = []
    if n_ % p == 0:
        out.append(Variant("batch", _grid(n=p), P("n"), P(), P("n")))
    else:
        notes.append(f"batch: infeasible (N={n_} not divisible by P={p})")
    found = 0
    for n in sorted((d for d in _divisors(p) if n_ % d == 0 and d < p), reverse=True):
        for h, w in _spatial_splits(geom, p // n):
            out.append(
                Variant("batch+spatial", _grid(n=n, h=h, w=w), P("n", "h", "w"), P(), P("n", "h", "w"))
            )
            found += 1
            break
        if found >= per_family:
            break
    if not found:
        notes.append(f"batch+spatial: infeasible (no n·h·w={p} splitting N, H, W, Ho, Wo evenly)")
    for family, axis in (("batch+out-channel", "k"), ("in-channel", "c")):
        found = 0
        for split in _divisors(p):
            n = p // split
            if split == 1 or n_ % n:
                continue
            if family == "batch+out-channel":
                if k_ % split:
                    continue
                x = P("n", None, None, "k") if c_ % split == 0 else P("n")
                var = Variant(
                    family, _grid(n=n, k=split), x, P(None, None, None, "k"), P("n", None, None, "k")
                )
            else:
                if c_ % split or k_ % split:
                    continue
                var = Variant(
                    family,
                    _grid(n=n, c=split),
                    P("n", None, None, "c"),
                    P(None, None, "c", None),
                    P("n", None, None, "c"),
                )
            out.append(var)
            found += 1
            if found >= per_family:
                break
        if not found:
            dims = "K" if axis == "k" else "C and K"
            notes.append(f"{family}: infeasible (no split of P={p} dividing N and {dims})")
    return out, notes


def conv_fn(geom: ConvGeometry):
    """Plain single-program convolution of the layer (NHWC / HWIO)."""

    def f(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            geom.strides,
            geom.padding,
            rhs_dilation=geom.dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    return f


def jitted(geom: ConvGeometry, var: Variant, x_spec: P | None = None, k_spec: P | None = None):
    """``(jitted fn, mesh, x sharding, kernel sharding)`` of one GSPMD variant."""
    mesh = jaxcnn.make_mesh(**var.grid)
    xs = NamedSharding(mesh, var.x if x_spec is None else x_spec)
    ks = NamedSharding(mesh, var.kernel if k_spec is None else k_spec)
    fn = jax.jit(conv_fn(geom), in_shardings=(xs, ks), out_shardings=NamedSharding(mesh, var.y))
    return fn, mesh, xs, ks


def measure_variant(geom: ConvGeometry, var: Variant, dtype=jnp.float32):
    """Metered ``(forward, backward)`` reports of one GSPMD variant (compile only)."""
    from jaxcnn.measure import measure_fwd_bwd

    fn, _, xs, ks = jitted(geom, var)
    x = jax.ShapeDtypeStruct(geom.x_shape, dtype, sharding=xs)
    kernel = jax.ShapeDtypeStruct(geom.kernel_shape, dtype, sharding=ks)
    return measure_fwd_bwd(fn, x, kernel)


def check_numerics(geom: ConvGeometry, specs: list[tuple[str, dict[str, int], P, P, P]]) -> list[dict]:
    """Runs GSPMD convolutions (forward and the gradients) on real devices and compares them with
    the single-device result.

    Args:
      geom: a small layer.
      specs: ``(label, grid, x spec, kernel spec, y spec)`` to try.

    Returns:
      One dict per spec: label, specs, max relative error of y, dx and dkernel.
    """
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(geom.x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(geom.kernel_shape), jnp.float32)
    f = conv_fn(geom)
    dy = jnp.asarray(rng.standard_normal(geom.y_shape), jnp.float32)

    def grads(fn):
        y, vjp = jax.vjp(fn, x, kernel)
        return (y, *vjp(dy))

    with jax.default_device(jax.devices()[0]):
        ref = [np.asarray(a) for a in jax.jit(lambda a, b: grads(lambda u, v: f(u, v)))(x, kernel)]
    results = []
    for label, grid, xs, ks, ys in specs:
        var = Variant(label, grid, xs, ks, ys)
        fn, _, xsh, ksh = jitted(geom, var)
        xa, ka = jax.device_put(x, xsh), jax.device_put(kernel, ksh)
        out = jax.jit(lambda a, b, fn=fn: grads(fn))(xa, ka)
        errs = [
            float(np.abs(np.asarray(o) - r).max() / np.abs(r).max()) for o, r in zip(out, ref, strict=True)
        ]
        results.append(
            {"label": label, "grid": var.label, "x": str(xs), "kernel": str(ks), "y": str(ys)}
            | dict(zip(("err_y", "err_dx", "err_dkernel"), errs, strict=True))
        )
    return results
