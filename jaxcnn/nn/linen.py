"""Flax Linen convolution computed by a jaxcnn algorithm: a drop-in for ``flax.linen.Conv``.

Two ways in, as for NNX (:mod:`jaxcnn.nn.conv`):

- :class:`Conv`: ``linen.Conv`` itself (the same fields in the same order, the same ``kernel`` /
  ``bias`` parameters, call and result) plus the keyword-only fields ``mesh``, ``algorithm`` and
  ``reduce_dtype``; its parameters are annotated with the algorithm's layouts. A model that takes its
  convolution class as an argument and passes ``linen.Conv``'s fields positionally (Flax's ImageNet
  ResNet: ``self.conv(self.filters, (3, 3), self.strides)``) runs unchanged with
  ``conv=functools.partial(jaxcnn.nn.linen.Conv, mesh=mesh, algorithm="2d")``.
- ``functools.partial(linen.Conv, conv_general_dilated=jaxcnn.nn.conv_general_dilated(mesh, "2d"))``:
  the same computation, with plain (unannotated) parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import flax.linen as nn
import jax
from flax.core import meta
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.nn.conv import DistributedConvGeneralDilated, _entries, conv_general_dilated
from jaxcnn.nn.placement import Placement

T = TypeVar("T")


def _annotated(init_fn: Callable[..., Any], spec_of: Callable[[tuple[int, ...]], P]) -> Callable[..., Any]:
    """``init_fn`` with its result boxed in ``nn.Partitioned`` by ``spec_of(shape)``.

    ``init_fn`` is called as ``init_fn(key, shape, dtype)`` (``linen.Conv``'s call); a result that is
    already boxed (``nn.with_partitioning``, logical names) keeps the caller's annotation.
    """

    def init(key: jax.Array, shape: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        value = init_fn(key, shape, *args, **kwargs)
        if isinstance(value, meta.AxisMetadata):
            return value
        shape = tuple(shape)
        return nn.Partitioned(value, _entries(spec_of(shape), len(shape)))

    return init


class Conv(nn.Conv, kw_only=True):
    """``flax.linen.Conv`` (1-, 2- or 3-D, channels-last) computed by a jaxcnn algorithm.

    A subclass of ``linen.Conv`` with its fields in its order (``features, kernel_size, strides,
    padding, input_dilation, kernel_dilation, feature_group_count, use_bias, mask, dtype,
    param_dtype, precision, kernel_init, bias_init, promote_dtype, ...``), its parameters (``kernel``
    ``(*kernel_size, C/G, K)``, ``bias`` ``(K,)``), its call and its result, plus the keyword-only
    attributes below. The convolution runs through :func:`jaxcnn.nn.conv_general_dilated`, so what
    ``linen.Conv`` does around it is unchanged: ``kernel_size`` with 1, 2 or 3 entries (an int is one
    entry, a 1-D kernel, as in ``linen.Conv``), int / sequence strides and dilations, padding as a
    string (``"CIRCULAR"``, ``"REFLECT"`` and ``"CAUSAL"`` pad the input first), an int or a list of
    ``(lo, hi)`` pairs, extra batch dimensions, ``mask``, and ``dtype`` / ``param_dtype`` (float32
    parameters with ``dtype=jnp.bfloat16``: operands cast to bfloat16, sums in ``reduce_dtype``).
    ``feature_group_count`` G works where the algorithm splits the groups on the mesh
    (:mod:`jaxcnn.algorithms.groups`).

    ``kernel`` and ``bias`` are boxed in ``nn.Partitioned`` with the algorithm's kernel layout and the
    layout of y's channels (``P()``, replicated, where the layout zero-pads their channels), so
    ``nn.get_partition_spec(variables)`` gives them; a ``kernel_init`` / ``bias_init`` that returns
    boxed values already (``nn.with_partitioning``) keeps its own annotation.

    ``conv_general_dilated`` holds the layer's own :class:`jaxcnn.nn.DistributedConvGeneralDilated`
    for ``mesh``, ``algorithm`` and ``reduce_dtype`` (one passed in, as ``clone`` does, is replaced).

    Example::

      conv = functools.partial(jaxcnn.nn.linen.Conv, mesh=jaxcnn.make_mesh(n=2, h=2, k=2), algorithm="2d")
      y, variables = conv(16, (3, 3), 2).init_with_output(jax.random.key(0), x)  # features, kernel, strides

    Attributes:
      mesh: a mesh from :func:`jaxcnn.make_mesh` (keyword-only, required).
      algorithm: one of ``jaxcnn.ALGORITHMS`` (keyword-only, default ``"data"``).
      reduce_dtype: the dtype the sums travel in (keyword-only; None: float32 for a 16-bit ``dtype``,
        else ``dtype``; ``docs/mixed_precision.md``).

    Raises:
      TypeError: at construction, a ``mesh`` that is not a ``jax.sharding.Mesh``, or a
        ``conv_general_dilated`` / ``conv_general_dilated_cls`` other than jaxcnn's.
      ValueError: at construction, an unknown algorithm or a mesh axis of size > 1 it does not use; at
        initialization, a ``feature_group_count`` the algorithm does not split on the mesh.
      NotImplementedError: when called, what :func:`jaxcnn.nn.conv_general_dilated` does not compute
        (input dilation with strides, string padding or groups; a non-default ``precision``).
    """

    mesh: Mesh
    algorithm: str = "data"
    reduce_dtype: Any = None

    def __post_init__(self) -> None:
        if self.conv_general_dilated_cls is not None or not (
            self.conv_general_dilated is None
            or isinstance(self.conv_general_dilated, DistributedConvGeneralDilated)
        ):
            raise TypeError(
                "jaxcnn.nn.linen.Conv sets conv_general_dilated itself (from mesh, algorithm and "
                "reduce_dtype); pass neither conv_general_dilated nor conv_general_dilated_cls"
            )
        # Before Module.__post_init__ the fields may still be set; this also checks mesh and algorithm.
        self.conv_general_dilated = conv_general_dilated(self.mesh, self.algorithm, self.reduce_dtype)
        super().__post_init__()

    @nn.nowrap
    def param(
        self,
        name: str,
        init_fn: Callable[..., T | meta.AxisMetadata[T]],
        *init_args: Any,
        unbox: bool = True,
        **init_kwargs: Any,
    ) -> T | meta.AxisMetadata[T]:
        """``Module.param``, with ``kernel`` and ``bias`` annotated with the algorithm's layouts."""
        if name == "kernel":
            init_fn = _annotated(init_fn, self._kernel_spec)
        elif name == "bias":
            init_fn = _annotated(init_fn, lambda shape: self._placement().bias_spec(shape[-1]))
        return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)

    @nn.nowrap
    def _placement(self) -> Placement:
        """The layer's algorithm on its mesh, with its feature groups and spatial rank."""
        rank = 1 if isinstance(self.kernel_size, int) else len(self.kernel_size)
        return Placement(self.algorithm, self.mesh, self.feature_group_count, rank)

    @nn.nowrap
    def _kernel_spec(self, shape: tuple[int, ...]) -> P:
        """The annotation of a ``(*window, C/G, K)`` kernel."""
        return self._placement().kernel_spec(shape[-2] * self.feature_group_count, shape[-1])
