"""One mesh per device order, so that results of layers placed on different meshes combine.

Each jaxcnn layer may run on its own mesh (``make_mesh(c=8)`` for one layer, ``make_mesh(n=2, c=4)``
for the next) over the same devices. JAX names the sharding of a result after a mesh of the program
(an argument's, else the first mesh a ``jit`` program constrains to). A layout of another mesh that
this mesh cannot express raises ``IndivisibleError``: a ``2 x 4`` tiling has no name on an
``n=1, c=8`` mesh. This happens for ``y1 + y2`` of two such layers' results, and for a ``jit`` chain
whose output is laid out as its last layer's.

The fix is a common mesh. Every jaxcnn collective program (:func:`shard_map`) constrains its inputs
and outputs to their layouts *named on the common mesh of its devices*:

- the devices in the same flat order;
- one axis per prime factor of the mesh's axis sizes, taken in axis order (``_u0, _u1, ...``, all
  of size 2 on 2^k devices).

A layout ``P("n", "c")`` of ``n=2, c=4`` becomes ``P("_u0", ("_u1", "_u2"))``: the same device
assignment, so the constraint moves nothing. Every layout of every mesh over 2^k devices in one
order has a name there. So JAX names results of any jaxcnn layer, and of sums of them, on the common
mesh, and they combine: moving a value between two layers' layouts is then GSPMD's resharding of one
array.

Meshes whose axis sizes factor in a different order (12 devices as ``3 x 4`` and as ``4 x 3``) get
different common meshes, and combining their results needs :func:`jaxcnn.nn.reshard` as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


@functools.lru_cache(maxsize=256)
def _common(devices: tuple[Any, ...], factors: tuple[int, ...]) -> Mesh:
    grid = np.empty(len(devices), dtype=object)
    grid[:] = devices
    names = tuple(f"_u{i}" for i in range(len(factors)))
    return Mesh(grid.reshape(factors), names, axis_types=(AxisType.Auto,) * len(factors))


@functools.lru_cache(maxsize=1024)
def _names(mesh: Mesh) -> tuple[Mesh, dict[str, tuple[str, ...]]] | None:
    """The common mesh of ``mesh`` and the common axes each of its axes spans (None on one device)."""
    factors = [_prime_factors(int(s)) for s in mesh.devices.shape]
    flat = tuple(f for fs in factors for f in fs)
    if not flat:
        return None
    common = _common(tuple(mesh.devices.flat), flat)
    names: dict[str, tuple[str, ...]] = {}
    i = 0
    for axis, fs in zip(mesh.axis_names, factors, strict=True):
        names[axis] = common.axis_names[i : i + len(fs)]
        i += len(fs)
    return common, names


def common_sharding(mesh: Mesh, spec: P) -> NamedSharding | None:
    """``NamedSharding(mesh, spec)`` named on the common mesh of ``mesh``'s devices (None on one device).

    Args:
      mesh: a mesh (any axis names).
      spec: a PartitionSpec of ``mesh``'s axes.
    """
    named = _names(mesh)
    if named is None:
        return None
    common, names = named
    entries = []
    for entry in spec:
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        spanned = tuple(u for a in axes for u in names[a])
        entries.append(spanned if spanned else None)
    return NamedSharding(common, P(*entries))


def on_common_mesh(x: Any, mesh: Mesh, spec: Any) -> Any:
    """``x`` (an array) constrained to ``common_sharding(mesh, spec)``; anything else as is."""
    if not isinstance(spec, P) or not hasattr(x, "shape"):
        return x
    sharding = common_sharding(mesh, spec)
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def shard_map(f: Callable[..., Any], *, mesh: Mesh, in_specs: Any, out_specs: Any, **kwargs: Any):
    """``jax.shard_map(f, mesh=mesh, in_specs=..., out_specs=..., **kwargs)`` whose array inputs and
    outputs are constrained to their layouts named on the common mesh (:func:`on_common_mesh`).

    The layouts are the ones ``jax.shard_map`` requires anyway, so the constraints move nothing;
    they name the results on the common mesh. Every jaxcnn collective program is built with this.
    """
    mapped = jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **kwargs)

    def wrapped(*args: Any) -> Any:
        specs = in_specs if isinstance(in_specs, tuple) else (in_specs,) * len(args)
        args = tuple(on_common_mesh(a, mesh, s) for a, s in zip(args, specs, strict=True))
        out = mapped(*args)
        if isinstance(out_specs, tuple) and isinstance(out, tuple):
            return tuple(on_common_mesh(o, mesh, s) for o, s in zip(out, out_specs, strict=True))
        return on_common_mesh(out, mesh, out_specs)

    return wrapped
