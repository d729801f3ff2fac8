"""Flax Linen convolution backed by :func:`jaxcnn.conv2d`, for existing Linen models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxcnn.conv import conv2d
from jaxcnn.geometry import PaddingLike
from jaxcnn.nn.conv import _entries
from jaxcnn.nn.placement import Placement


def _pair(value: int | Sequence[int] | None) -> tuple[int, int]:
    if value is None:
        return (1, 1)
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class Conv(nn.Module):
    """``flax.linen.Conv`` (2-D, NHWC, shared weights) computed by a jaxcnn algorithm.

    Same fields, parameters (``kernel`` (R, S, C, K), ``bias`` (K,)) and result as ``linen.Conv``;
    the parameters are boxed with ``nn.with_partitioning`` using the algorithm's kernel / bias
    layouts (replicated where the layout pads channels), so ``nn.get_partition_spec`` yields them.

    Attributes:
      features: output channels K.
      kernel_size: (R, S) or an int.
      mesh: a mesh from :func:`jaxcnn.make_mesh`.
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      strides, padding, kernel_dilation: as in ``linen.Conv`` (padding: ``"SAME"``, ``"VALID"`` or
        ``((lo, hi), (lo, hi))``).
      use_bias, dtype, param_dtype, kernel_init, bias_init: as in ``linen.Conv``.
    """

    features: int
    kernel_size: int | Sequence[int]
    mesh: Mesh
    algorithm: str = "data"
    strides: int | Sequence[int] | None = 1
    padding: PaddingLike = "SAME"
    kernel_dilation: int | Sequence[int] | None = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Convolves ``(N, H, W, C)`` inputs; returns ``(N, Ho, Wo, features)``."""
        if inputs.ndim != 4:
            raise ValueError(f"jaxcnn.nn.linen.Conv takes NHWC inputs, got shape {inputs.shape}")
        channels = inputs.shape[-1]
        placement = Placement(self.algorithm, self.mesh)
        kernel_shape = (*_pair(self.kernel_size), channels, self.features)
        kernel_init = nn.with_partitioning(
            self.kernel_init, _entries(placement.kernel_spec(channels, self.features), 4)
        )
        kernel = self.param("kernel", kernel_init, kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = nn.with_partitioning(self.bias_init, _entries(placement.bias_spec(self.features), 1))
            bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = conv2d(
            inputs,
            kernel,
            mesh=self.mesh,
            algorithm=self.algorithm,
            strides=_pair(self.strides),
            padding=nn.linear.canonicalize_padding(self.padding, 2),
            dilation=_pair(self.kernel_dilation),
        )
        if bias is not None:
            y = y + bias.reshape(1, 1, 1, -1)
        return y
