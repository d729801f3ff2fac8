"""Flax NNX transposed convolution backed by :func:`jaxcnn.conv_transpose`.

:class:`ConvTranspose` is a drop-in for ``flax.nnx.ConvTranspose``: the same constructor arguments,
the same ``kernel`` / ``bias`` parameters (shapes, initialisers, random streams) and the same call,
plus ``mesh`` and ``algorithm``. Its parameters carry the algorithm's sharding (created distributed
with Flax's eager sharding), as :class:`jaxcnn.nn.Conv`'s do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.conv import transpose_as_conv
from jaxcnn.geometry import DIMENSION_NUMBERS
from jaxcnn.nn.conv import conv_general_dilated
from jaxcnn.nn.placement import Placement

_UNSUPPORTED_PADDING = ("CIRCULAR", "CAUSAL")


def _channel_entries(spec: P, rank: int) -> tuple[Any, Any]:
    """The (input channels, output channels) entries of a rank-``rank`` ``(*window, C, K)`` kernel's
    PartitionSpec."""
    entries = tuple(spec) + (None,) * (rank + 2 - len(spec))
    return entries[-2], entries[-1]


class ConvTranspose(nnx.ConvTranspose):
    """``flax.nnx.ConvTranspose`` (channels-last) computed by a jaxcnn algorithm, with sharded parameters.

    Same constructor arguments, parameters (``kernel`` ``(*kernel_size, C, K)``, or ``(*kernel_size, K,
    C)`` with ``transpose_kernel``; ``bias`` ``(K,)``) and call as ``nnx.ConvTranspose`` (any number of
    leading batch dimensions, flattened for the convolution), plus:

    Args:
      mesh: a mesh from :func:`jaxcnn.make_mesh`.
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      reduce_dtype: the dtype the sums travel in (as :class:`jaxcnn.nn.Conv`'s).

    The output equals ``nnx.ConvTranspose``'s: ``jaxcnn.conv_transpose(x, kernel, strides=...,
    padding=..., dilation=kernel_dilation, transpose_kernel=...)`` plus the bias (called as the
    convolution of x dilated by the strides through the ``conv_general_dilated`` hook, where
    :mod:`jaxcnn.models.trace` records it), computed with the
    algorithm's collectives (the layer's geometry is the convolution of x dilated by the strides). The
    spatial rank is whatever :func:`jaxcnn.conv_transpose` computes. The kernel is annotated with the
    algorithm's kernel layout (its channel axes swapped with ``transpose_kernel``), the bias with y's
    channel layout; both are replicated when the layout zero-pads their channels.

    Raises:
      ValueError: at construction, for what ``jaxcnn.conv_transpose`` does not compute: ``padding``
        ``"CIRCULAR"`` / ``"CAUSAL"``, a ``precision`` other than the default, or
        ``kernel_metadata`` / ``bias_metadata`` (set here); also a mesh axis the algorithm does not use.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        mesh: Mesh,
        algorithm: str = "data",
        reduce_dtype: Any = None,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ):
        for banned in ("kernel_metadata", "bias_metadata"):
            if banned in kwargs:
                raise ValueError(f"jaxcnn.nn.ConvTranspose sets {banned!r} itself (the parameters' sharding)")
        padding = kwargs.get("padding", "SAME")
        if isinstance(padding, str) and padding.upper() in _UNSUPPORTED_PADDING:
            raise ValueError(
                f"jaxcnn.nn.ConvTranspose does not support padding={padding!r}; use 'SAME', 'VALID', an "
                "int or (lo, hi) pairs"
            )
        precision = kwargs.get("precision")
        if precision not in (None, lax.Precision.DEFAULT, "default"):
            raise ValueError(
                f"jaxcnn.nn.ConvTranspose computes at the default precision; got precision={precision!r} "
                "(leave it None)"
            )
        rank = 1 if isinstance(kernel_size, int) else len(tuple(kernel_size))
        placement = Placement(algorithm, mesh, rank=rank)
        c_spec, k_spec = _channel_entries(placement.kernel_spec(in_features, out_features), rank)
        stored = (k_spec, c_spec) if kwargs.get("transpose_kernel", False) else (c_spec, k_spec)
        bias_spec = tuple(placement.bias_spec(out_features)) or (None,)
        super().__init__(
            in_features,
            out_features,
            kernel_size,
            strides,
            kernel_metadata={"out_sharding": (None,) * rank + stored, "mesh": mesh},
            bias_metadata={"out_sharding": bias_spec, "mesh": mesh},
            rngs=rngs,
            **kwargs,
        )
        self.mesh = mesh
        self.algorithm = algorithm
        self.rank = rank
        # the stride-1 convolution of the stride-dilated input (jaxcnn.conv_transpose's), through a
        # ``conv_general_dilated`` hook as jaxcnn.nn.Conv's: jaxcnn.models.trace records it there.
        self.conv_general_dilated = conv_general_dilated(mesh, algorithm, reduce_dtype)

    @property
    def input_spec(self) -> P:
        """PartitionSpec of the ``(N, *spatial, C)`` input the algorithm computes on (no movement)."""
        return Placement(self.algorithm, self.mesh, rank=self.rank).x_spec

    @property
    def output_spec(self) -> P:
        """PartitionSpec of the ``(N, *spatial, K)`` output (the next layer's input layout)."""
        return Placement(self.algorithm, self.mesh, rank=self.rank).y_spec

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``nnx.ConvTranspose.__call__``, the convolution computed by :func:`jaxcnn.conv_transpose`.

        Args:
          inputs: ``(*batch, *spatial, C)``; several batch dimensions are flattened into one and
            restored, none gets one added and removed.

        Returns:
          ``(*batch, *spatial_out, K)``.
        """
        rank = len(self.kernel_size)
        batch_dims = inputs.ndim - (rank + 1)
        batch_shape = inputs.shape[:batch_dims]
        if batch_dims != 1:
            inputs = jnp.reshape(inputs, (-1, *inputs.shape[batch_dims:]))
        kernel = self.kernel[...]
        if self.mask is not None:
            if self.mask.shape != self.kernel_shape:
                raise ValueError(f"mask needs the kernel's shape {self.kernel_shape}, got {self.mask.shape}")
            kernel = kernel * self.mask
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        padding = canonicalize_padding(self.padding, rank)
        kernel, strides, pads, dilation = transpose_as_conv(
            rank,
            kernel,
            _broadcast(self.strides, rank),
            padding if isinstance(padding, str) else tuple(tuple(p) for p in padding),
            _broadcast(self.kernel_dilation, rank),
            self.transpose_kernel,
        )
        y = self.conv_general_dilated(
            inputs,
            kernel,
            (1,) * rank,
            pads,
            lhs_dilation=strides,
            rhs_dilation=dilation,
            dimension_numbers=DIMENSION_NUMBERS.get(rank),
            preferred_element_type=self.preferred_element_type,
        )
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        if batch_dims != 1:
            y = jnp.reshape(y, batch_shape + y.shape[1:])
        return y


def _broadcast(value: int | Sequence[int] | None, rank: int) -> tuple[int, ...]:
    """``nnx``'s strides / dilation convention: None is 1, an int applies to every spatial dimension."""
    if value is None:
        value = 1
    return (value,) * rank if isinstance(value, int) else tuple(value)
