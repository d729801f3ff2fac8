"""Metering compiled programs: lower + compile with abstract inputs (never run), then parse."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.conv import conv, conv_layout, conv_transpose
from jaxcnn.geometry import ConvGeometry
from jaxcnn.measure.hlo import measure_hlo_text
from jaxcnn.measure.report import CommReport, MemoryStats

# ----------------------------------------------------------------------------- compiled programs


def _memory(compiled: jax.stages.Compiled) -> MemoryStats | None:
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # backends without memory analysis
        return None
    if stats is None:
        return None
    return MemoryStats(
        temp_bytes=int(stats.temp_size_in_bytes),
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        generated_code_bytes=int(stats.generated_code_size_in_bytes),
    )


def meter_compiled(compiled: jax.stages.Compiled) -> CommReport:
    """Meters an already compiled program (collectives and memory)."""
    report = measure_hlo_text(compiled.as_text())
    return dataclasses.replace(report, memory=_memory(compiled))


def _lower(fn: Callable[..., Any], args: Sequence[Any], static: dict[str, Any]) -> jax.stages.Lowered:
    if hasattr(fn, "lower"):
        return fn.lower(*args, **static)
    return jax.jit(functools.partial(fn, **static) if static else fn).lower(*args)


def measure(fn: Callable[..., Any], *args: Any, **static: Any) -> CommReport:
    """Compiles ``fn(*args, **static)`` (never runs it) and meters its collectives.

    Args:
      fn: any function; jitted here unless it already is (then ``static`` go to ``fn.lower``).
      *args: ``jax.ShapeDtypeStruct`` s with ``sharding=NamedSharding(...)``, or concrete arrays.
      **static: keyword arguments bound before jitting (static configuration).

    Returns:
      The :class:`CommReport` of the compiled program.
    """
    return meter_compiled(_lower(fn, args, static).compile())


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def measure_fwd_bwd(f: Callable[..., Any], *args: Any) -> tuple[CommReport, CommReport]:
    """Meters the forward program of ``f`` and, separately, the program applying its VJP.

    The backward program takes the residuals ``jax.vjp`` saves (with the shardings the compiled
    forward-with-residuals gives them) and an abstract cotangent shaped and sharded like ``f``'s
    output, and returns the input cotangents. It is not "grad minus forward": XLA would remove
    forward collectives whose results a gradient program does not need.

    Returns:
      ``(forward, backward)`` reports.
    """
    fwd = measure(f, *args)
    with_res = jax.jit(lambda *a: jax.vjp(f, *a))
    compiled = with_res.lower(*args).compile()
    y_abs, vjp_abs = _abstract(jax.eval_shape(with_res, *args), compiled.output_shardings)
    bwd = measure(lambda vjp_fn, dy: vjp_fn(dy), vjp_abs, y_abs)
    return fwd, bwd


def _spec_for(shape: tuple[int, ...], padded: tuple[int, ...], spec: P) -> P:
    """``spec`` where a dimension equals its padded size (so divides evenly), else unsplit."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    return P(*(e if s == p else None for e, s, p in zip(entries, shape, padded, strict=True)))


def measure_conv(
    layer: ConvGeometry | Any,
    *,
    mesh: Mesh,
    algorithm: str,
    dtype: jnp.dtype = jnp.float32,
    backward: bool = True,
    reduce_dtype: jnp.dtype | None = None,
) -> tuple[CommReport, CommReport | None]:
    """Meters ``jaxcnn.conv`` for one 1-, 2- or 3-D layer, forward and backward (``jaxcnn.conv_transpose``
    for an input-dilated, i.e. transposed, layer: strides = its input dilation, its explicit padding).

    x ``(N, *spatial, C)`` and the kernel ``(*window, C/G, K)`` are abstract arrays laid out as the algorithm
    wants (``jaxcnn.conv_layout``); a dimension the layout zero-pads is left unsplit (replicated) so
    that padding it inside ``conv`` is local.

    Args:
      layer: a :class:`jaxcnn.ConvGeometry`, or anything with a ``geom`` attribute
        (:class:`jaxcnn.networks.ConvLayer`).
      mesh: a mesh from :func:`jaxcnn.make_mesh`.
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      dtype: element type of x and the kernel (the computation dtype).
      backward: also meter the VJP program.
      reduce_dtype: the dtype the sums travel in (``jaxcnn.conv``'s; default float32 for 16-bit).

    Returns:
      ``(forward, backward)``; ``backward`` is None when not requested.
    """
    geom = getattr(layer, "geom", layer)
    layout = conv_layout(geom, mesh=mesh, algorithm=algorithm)
    x_spec = _spec_for(geom.x_shape, layout.padded[:-1], layout.x_spec)
    k_spec = _spec_for(geom.kernel_shape, (*geom.window, *layout.kernel_padded), layout.kernel_spec)
    x = jax.ShapeDtypeStruct(geom.x_shape, dtype, sharding=NamedSharding(mesh, x_spec))
    kernel = jax.ShapeDtypeStruct(geom.kernel_shape, dtype, sharding=NamedSharding(mesh, k_spec))

    if any(s != 1 for s in geom.input_dilation):
        if geom.groups != 1:
            raise ValueError(
                f"measure_conv meters input-dilated (transposed) layers through jaxcnn.conv_transpose, "
                f"which has no feature groups; got feature_group_count={geom.groups}"
            )

        def f(a: jax.Array, b: jax.Array) -> jax.Array:
            return conv_transpose(
                a,
                b,
                mesh=mesh,
                algorithm=algorithm,
                strides=geom.input_dilation,
                padding=geom.padding,
                dilation=geom.dilation,
                reduce_dtype=reduce_dtype,
            )

    else:

        def f(a: jax.Array, b: jax.Array) -> jax.Array:
            return conv(
                a,
                b,
                mesh=mesh,
                algorithm=algorithm,
                strides=geom.strides,
                padding=geom.padding,
                dilation=geom.dilation,
                feature_group_count=geom.groups,
                reduce_dtype=reduce_dtype,
            )

    if not backward:
        return measure(f, x, kernel), None
    return measure_fwd_bwd(f, x, kernel)
