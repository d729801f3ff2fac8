"""Flax NNX convolution (1-, 2- or 3-D, channels-last) backed by :func:`jaxcnn.conv`.

Two ways in:

- :class:`Conv`: a drop-in for ``flax.nnx.Conv`` (same constructor, same ``kernel`` / ``bias``
  parameters, ``kernel_size`` of 1, 2 or 3 entries) plus ``mesh`` and ``algorithm``; its parameters
  carry the algorithm's sharding so that they are created already distributed.
- :func:`conv_general_dilated`: a callable with ``jax.lax.conv_general_dilated``'s signature, for the
  ``conv_general_dilated=`` hook of ``nnx.Conv`` / ``linen.Conv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn import algorithms
from jaxcnn.conv import conv, conv_transpose
from jaxcnn.mesh import mesh_sizes
from jaxcnn.nn.placement import Placement


def _entries(spec: P, ndim: int) -> tuple[Any, ...]:
    """A PartitionSpec as an ``out_sharding`` tuple of ``ndim`` entries (``P()``: replicated on the mesh)."""
    return tuple(spec) + (None,) * (ndim - len(spec))


def _ones(value: int | Sequence[int] | None) -> bool:
    return value is None or all(v == 1 for v in ((value,) if isinstance(value, int) else value))


@dataclasses.dataclass(frozen=True)
class DistributedConvGeneralDilated:
    """``lax.conv_general_dilated`` computed by :func:`jaxcnn.conv` (hashable, compares by value).

    Supports 1-, 2- and 3-D convolutions in any dimension numbers, strides, ``"SAME"`` / ``"VALID"`` /
    explicit padding, kernel (rhs) dilation and feature groups (where the algorithm splits them,
    :mod:`jaxcnn.algorithms.groups`). Operands are transposed to channels-last (``(N, *spatial, C)``
    / ``(*window, I, O)``) and the result back.

    Attributes:
      mesh: the mesh :func:`jaxcnn.conv` runs on.
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      reduce_dtype: the dtype the sums travel in (:func:`jaxcnn.conv`'s; None: float32 for 16-bit
        operands). Halos and gathers move the operands' own dtype.
    """

    mesh: Mesh
    algorithm: str
    reduce_dtype: Any = None

    def __call__(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: str | Sequence[tuple[int, int]],
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
        precision: Any = None,
        preferred_element_type: Any = None,
        out_sharding: Any = None,
    ) -> jax.Array:
        """Same arguments and result as ``jax.lax.conv_general_dilated``; with input (lhs) dilation,
        the transposed convolution :func:`jaxcnn.conv_transpose` computes (window strides 1, explicit
        padding, no feature groups: what ``lax.conv_transpose`` passes).

        Raises:
          NotImplementedError: for what :func:`jaxcnn.conv` / :func:`jaxcnn.conv_transpose` do not
            compute: input dilation with window strides, string padding or feature groups, batch
            groups, a non-default ``precision``, or a rank other than 3, 4 or 5.
        """
        if lhs.ndim not in (3, 4, 5):
            raise NotImplementedError(
                f"jaxcnn computes 1-, 2- and 3-D convolutions (operands of rank 3, 4 or 5), got {lhs.shape}"
            )
        rank = lhs.ndim - 2
        transposed = not _ones(lhs_dilation)
        if transposed and (not _ones(window_strides) or isinstance(padding, str) or feature_group_count != 1):
            raise NotImplementedError(
                f"jaxcnn computes input (lhs) dilation {lhs_dilation} as a transposed convolution: window "
                f"strides 1, explicit (lo, hi) padding and feature_group_count 1, got window_strides="
                f"{tuple(window_strides)}, padding={padding!r}, feature_group_count={feature_group_count}"
            )
        if batch_group_count != 1:
            raise NotImplementedError(
                f"jaxcnn does not support batch-grouped convolutions (batch_group_count={batch_group_count})"
            )
        if precision not in (None, lax.Precision.DEFAULT, "default"):
            raise NotImplementedError(
                f"jaxcnn computes at the default precision; got precision={precision!r}"
            )
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        # dn specs list (batch / out, feature / in, *spatial) positions; go channels-last.
        x = jnp.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
        kernel = jnp.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
        dilation = 1 if rhs_dilation is None else tuple(rhs_dilation)
        if transposed:
            y = conv_transpose(
                x,
                kernel,
                mesh=self.mesh,
                algorithm=self.algorithm,
                strides=tuple(lhs_dilation),
                padding=tuple(tuple(p) for p in padding),
                dilation=dilation,
                preferred_element_type=preferred_element_type,
                reduce_dtype=self.reduce_dtype,
            )
        else:
            y = conv(
                x,
                kernel,
                mesh=self.mesh,
                algorithm=self.algorithm,
                strides=tuple(window_strides),
                padding=padding,
                dilation=dilation,
                feature_group_count=feature_group_count,
                preferred_element_type=preferred_element_type,
                reduce_dtype=self.reduce_dtype,
            )
        # y is (N, *spatial, K); out_spec[i] is the dimension of the result that holds logical
        # dimension i of (N, K, *spatial).
        channels_last = (0, rank + 1, *range(1, rank + 1))
        inverse = [0] * (rank + 2)
        for logical, position in enumerate(dn.out_spec):
            inverse[position] = channels_last[logical]
        y = jnp.transpose(y, inverse)
        if out_sharding is not None:
            sharding = (
                out_sharding
                if isinstance(out_sharding, NamedSharding)
                else NamedSharding(self.mesh, out_sharding)
            )
            y = lax.with_sharding_constraint(y, sharding)
        return y


def conv_general_dilated(
    mesh: Mesh, algorithm: str, reduce_dtype: Any = None
) -> DistributedConvGeneralDilated:
    """A ``jax.lax.conv_general_dilated`` replacement that runs ``algorithm`` on ``mesh`` (its sums in
    ``reduce_dtype``, :class:`DistributedConvGeneralDilated`).

    >>> layer = nnx.Conv(3, 8, (3, 3), conv_general_dilated=jaxcnn.nn.conv_general_dilated(mesh, "3d"),
    ...                  rngs=nnx.Rngs(0))
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see jaxcnn.make_mesh), got {type(mesh).__name__}")
    algorithms.get(algorithm).check_mesh(mesh_sizes(mesh))  # now, not at call time
    return DistributedConvGeneralDilated(
        mesh, algorithm, None if reduce_dtype is None else jnp.dtype(reduce_dtype)
    )


class Conv(nnx.Conv):
    """``flax.nnx.Conv`` (1-, 2- or 3-D, channels-last) computed by a jaxcnn algorithm, with sharded
    parameters.

    Same constructor arguments, parameters (``kernel`` ``(*kernel_size, C/G, K)``, ``bias`` (K,)) and
    call as ``nnx.Conv``, plus:

    Args:
      mesh: a mesh from :func:`jaxcnn.make_mesh`.
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      reduce_dtype: the dtype the sums travel in (default float32 for a 16-bit ``dtype``;
        ``docs/mixed_precision.md``).

    The kernel is annotated (``out_sharding`` metadata, ``nnx.get_partition_spec``) with the
    algorithm's kernel layout, the bias with y's channel layout; both are replicated when the layout
    zero-pads their channels. With Flax's eager sharding (the default) they are created sharded.
    ``feature_group_count`` G works as in ``nnx.Conv`` (kernel ``(R, S, C/G, K)``; depthwise: G = C)
    where the algorithm splits the groups on this mesh (:mod:`jaxcnn.algorithms.groups`; else
    ``ValueError`` at construction). ``input_dilation`` other than 1 is not supported.

    ``kernel_size`` has 1, 2 or 3 entries: the layer convolves ``(N, W, C)``, ``(N, H, W, C)`` or
    ``(N, D, H, W, C)`` inputs (a 3-D layer may split depth over the mesh axis ``d``, a 1-D layer its
    length over ``w``). As in ``nnx.Conv``, an int ``kernel_size`` is a 1-D kernel (``3``: ``(3,)``), so that
    ``functools.partial(jaxcnn.nn.Conv, mesh=mesh, algorithm=...)`` stands in for ``nnx.Conv`` unchanged.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        *,
        mesh: Mesh,
        algorithm: str = "data",
        reduce_dtype: Any = None,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ):
        for banned in ("conv_general_dilated", "kernel_metadata", "bias_metadata"):
            if banned in kwargs:
                raise TypeError(f"jaxcnn.nn.Conv sets {banned!r} itself")
        size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(size) not in (1, 2, 3):
            raise ValueError(
                "jaxcnn.nn.Conv is 1-, 2- or 3-D: kernel_size must have 1, 2 or 3 entries, "
                f"got {kernel_size!r}"
            )
        placement = Placement(algorithm, mesh, kwargs.get("feature_group_count", 1), len(size))
        kernel_spec = placement.kernel_spec(in_features, out_features)
        bias_spec = placement.bias_spec(out_features)
        super().__init__(
            in_features,
            out_features,
            size,
            strides,
            conv_general_dilated=conv_general_dilated(mesh, algorithm, reduce_dtype),
            kernel_metadata={"out_sharding": _entries(kernel_spec, len(size) + 2), "mesh": mesh},
            bias_metadata={"out_sharding": _entries(bias_spec, 1), "mesh": mesh},
            rngs=rngs,
            **kwargs,
        )
        self.mesh = mesh
        self.algorithm = algorithm

    @property
    def input_spec(self) -> P:
        """PartitionSpec of the ``(N, *spatial, C)`` input the algorithm computes on (no movement)."""
        return self._placement.x_spec

    @property
    def output_spec(self) -> P:
        """PartitionSpec of the ``(N, *spatial_out, K)`` output (the next layer's input layout)."""
        return self._placement.y_spec

    @property
    def _placement(self) -> Placement:
        return Placement(self.algorithm, self.mesh, self.feature_group_count, len(self.kernel_size))
