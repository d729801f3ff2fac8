"""Distributed batch normalisation: statistics reduced over every mesh axis that splits n or space.

Rank-generic: channels-last activations ``(N, *spatial, C)`` with 1 to 3 spatial dimensions (the layer's
``spatial_dims``, 2 by default); "rows" below are all dimensions but the channels.

The activation arrives in a known layout (its ``PartitionSpec``, e.g. the previous convolution's
``y_spec`` ``P("n", "h", "w", ("k", "c"))``). Each device sums its block over (N, H, W); one
``lax.psum`` over the p devices splitting N, H and W (the sums of x and x² stacked into one buffer of
2·K_local words: an all-reduce, 2·(2·K_local)·(p−1)/p words received per device) gives the global
sums, and every device normalises its own block. The two-pass variance (``use_fast_variance=False``)
adds a second psum of the same size. Channel axes need no communication: a device holds all rows
of its channels' statistics after the psum. Uneven splits are zero-padded; zeros add nothing to the
sums, whose divisor is the real count, so the statistics are exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn import common_mesh
from jaxcnn.nn import specs
from jaxcnn.padding import pad_to
from jaxcnn.redistribute import spec_entries


def _sums(x: jax.Array, spec: P, mesh: Mesh, shift: jax.Array | None) -> jax.Array:
    """``(2, C)`` global sums of ``x - shift`` and its square over all but the channels (x zero-padded)."""
    entries = spec_entries(spec, x.ndim)
    if entries[-1] and any(a in entries[-1] for e in entries[:-1] for a in e):
        raise ValueError(f"spec {spec} splits channels and rows over the same mesh axis")
    row_axes = tuple(a for e in entries[:-1] for a in e)
    channel = entries[-1] or None
    xp = pad_to(x, specs.padded_shape(x.shape, spec, mesh))
    extra = xp.size // xp.shape[-1] - x.size // x.shape[-1]  # padded positions per channel
    rows = tuple(range(x.ndim - 1))

    def body(xb: jax.Array, sb: jax.Array | None) -> jax.Array:
        d = xb if sb is None else xb - sb
        s = jnp.stack([d.sum(rows), (d * d).sum(rows)])
        return lax.psum(s, row_axes) if row_axes else s

    if shift is None:
        fn = common_mesh.shard_map(
            lambda xb: body(xb, None),
            mesh=mesh,
            in_specs=(specs.as_spec(entries),),
            out_specs=P(None, channel),
        )
        sums = fn(xp)
    else:
        sp = pad_to(shift, (xp.shape[-1],))
        fn = common_mesh.shard_map(
            body, mesh=mesh, in_specs=(specs.as_spec(entries), P(channel)), out_specs=P(None, channel)
        )
        sums = fn(xp, sp)
        # Padded zeros contributed (0 - shift) and (0 - shift)^2 each: remove them.
        sums = sums - extra * jnp.stack([-sp, sp * sp])
    return sums[:, : x.shape[-1]]


def batch_stats(
    x: jax.Array, spec: P, mesh: Mesh, *, dtype: Any = None, use_fast_variance: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance of channels-last ``x`` (NHWC, or ``(N, *spatial, C)``) laid
    out as ``spec`` on ``mesh``.

    Statistics are computed in at least float32, like ``flax.nnx.BatchNorm``. The fast variance is
    ``E[x²] − E[x]²`` (clipped at 0, one psum); otherwise ``E[(x − E[x])²]`` (two psums).
    """
    dtype = jnp.promote_types(dtype or x.dtype, jnp.float32)
    x = x.astype(dtype)
    count = x.size // x.shape[-1]
    first = _sums(x, spec, mesh, None) / count
    mean = first[0]
    if use_fast_variance:
        return mean, jnp.maximum(0.0, first[1] - mean * mean)
    return mean, _sums(x, spec, mesh, mean)[1] / count


class BatchNorm(nnx.BatchNorm):
    """``flax.nnx.BatchNorm`` over NHWC activations whose statistics span the whole mesh.

    Same constructor, parameters (``scale``, ``bias``), batch statistics (``mean``, ``var``),
    ``momentum`` / ``epsilon`` semantics and ``train()`` / ``eval()`` behaviour as ``nnx.BatchNorm``
    with ``axis=-1``, plus:

    Args:
      num_features: channels.
      mesh: the mesh the activation lives on (``None``: single-device statistics, plain ``nnx.BatchNorm``).
      spec: the activation's PartitionSpec, e.g. the previous ``jaxcnn.nn.Conv``'s ``output_spec``.
        Statistics are psum-reduced over every mesh axis in its N and spatial entries.
      spatial_dims: spatial dimensions of the activations (2: NHWC; 3: ``(N, D, H, W, C)``; 1).
      **kwargs: ``nnx.BatchNorm`` arguments (``use_running_average``, ``momentum``, ``epsilon``,
        ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, inits, ``use_fast_variance``, ``rngs``).
    """

    def __init__(
        self,
        num_features: int,
        *,
        mesh: Mesh | None = None,
        spec: P = specs.REPLICATED,
        spatial_dims: int = 2,
        **kwargs: Any,
    ):
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        if kwargs.get("axis", -1) not in (-1, spatial_dims + 1):
            raise ValueError(
                "jaxcnn.nn.BatchNorm normalises channels-last activations over the last axis only"
            )
        if kwargs.get("axis_name") is not None:
            raise ValueError(
                "jaxcnn.nn.BatchNorm reduces over the mesh axes in `spec`; do not pass axis_name"
            )
        metadata: dict[str, Any] = {}
        if mesh is not None:
            channel = spec_entries(spec, spatial_dims + 2)[-1]
            even = num_features % specs.parts(channel, mesh) == 0
            metadata = {"out_sharding": (specs.as_spec([channel])[0] if even else None,), "mesh": mesh}
        super().__init__(num_features, scale_metadata=metadata, bias_metadata=metadata, **kwargs)
        if mesh is not None:  # running statistics live where the channels they describe live
            self.mean = nnx.BatchStat(self.mean[...], **metadata)
            self.var = nnx.BatchStat(self.var[...], **metadata)
        self.mesh = mesh
        self.spec = spec
        self.spatial_dims = spatial_dims

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalises ``x`` (N, H, W, C) (``(N, *spatial, C)``) with batch statistics (training) or
        running averages.

        Raises:
          NotImplementedError: ``mask`` is given.
        """
        if mask is not None:
            raise NotImplementedError("jaxcnn.nn.BatchNorm does not support masks")
        if self.mesh is None:
            return super().__call__(x, use_running_average)
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"jaxcnn.nn.BatchNorm(spatial_dims={self.spatial_dims}) takes rank-{self.spatial_dims + 2} "
                f"channels-last activations, got shape {x.shape}"
            )
        use_running_average = self.use_running_average if use_running_average is None else use_running_average
        if use_running_average is None:
            raise ValueError("pass use_running_average to BatchNorm, or call model.train() / model.eval()")
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype
        )
        if not use_running_average:
            mean, var = batch_stats(
                x, self.spec, self.mesh, dtype=self.dtype, use_fast_variance=self.use_fast_variance
            )
            stop = lax.stop_gradient if (self.mean._can_update or self.var._can_update) else (lambda v: v)
            # set_value, not `[...] =`: flax's item assignment asks the tracer for its sharding, and JAX
            # builds an expensive error message each time (13-15% of a ResNet-50 step's trace and compile)
            self.mean.set_value(stop(self.momentum * self.mean[...] + (1 - self.momentum) * mean))
            self.var.set_value(stop(self.momentum * self.var[...] + (1 - self.momentum) * var))
        y = x - mean
        mul = lax.rsqrt(var + self.epsilon)
        args = [x]
        if scale is not None:
            mul = mul * scale
            args.append(scale)
        y = y * mul
        if bias is not None:
            y = y + bias
            args.append(bias)
        return jnp.asarray(y, nnx_dtypes.canonicalize_dtype(*args, dtype=self.dtype))
