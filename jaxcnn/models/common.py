"""Building blocks shared by the models: per-layer placement, Conv+BN(+ReLU), pooling, the head.

Every convolution of a model has a dotted name (``"stem"``, ``"layer1.0.conv1"``, ...; the classifier
is the convolution :data:`HEAD_NAME`) and a placement string (:mod:`jaxcnn.nn.placement`: ``"3d"`` or
``"3d@n=2,k=2,c=2"``). A model's ``algorithms`` argument gives them as one string for all
convolutions, a dict ``{name: placement}`` (the key ``"*"`` is the default for names not listed), or
a list in layer order.

Layouts flow explicitly: every block is called with its input *and the layout that input is in*
(a ``NamedSharding``), and moves it to its convolution's input layout with
:func:`jaxcnn.redistribute.redistribute` (collectives jaxcnn plans and counts; nothing is left to
XLA's partitioner). Activations leave a block in its convolution's output layout; BatchNorm, ReLU and
pooling work in the layout they are given. Each model also describes itself as a plan graph
(``plan_graph``, see :mod:`jaxcnn.models.graph`) so that the planner places all layers jointly; what
every model provides is :class:`jaxcnn.models.protocol.Network`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.common_mesh import on_common_mesh
from jaxcnn.nn import BatchNorm, Conv, Placement, global_avg_pool, max_pool, parse_placement
from jaxcnn.redistribute import moves_nothing, redistribute

Algorithms = str | Mapping[str, str] | Sequence[str]

#: The name of a classifier's :class:`Head` convolution (its placement key and plan-graph node's name).
HEAD_NAME = "head"


class Placements:
    """Hands out each convolution's placement by name (dict), position (list) or uniformly (str).

    Args:
      mesh: the model's mesh.
      algorithms: see the module docstring.
      reduce_dtype: the dtype every convolution's sums travel in (:class:`jaxcnn.nn.Conv`; None:
        float32 for a 16-bit computation dtype).
    """

    def __init__(self, mesh: Mesh, algorithms: Algorithms, reduce_dtype: Any = None):
        if not isinstance(algorithms, str | Mapping) and not (
            isinstance(algorithms, Sequence) and all(isinstance(a, str) for a in algorithms)
        ):
            raise ValueError(
                f"algorithms must be a str, a dict {{layer: placement}} or a list, got {algorithms!r}"
            )
        self.mesh = mesh
        self.algorithms = algorithms
        self.reduce_dtype = reduce_dtype
        self.names: list[str] = []
        self.defaulted: list[str] = []

    def placement(self, name: str, default: str | None = None, rank: int = 2) -> Placement:
        """The placement of the next convolution, called ``name``, with ``rank`` spatial dimensions
        (its activation layouts have ``rank + 2`` entries; a 3-D layer may split depth over ``d``).

        ``default`` (the classifier's ``data`` over all devices) is used when a dict names neither the
        layer nor ``"*"``, or a list is one entry short of the layer count (configs written for the
        convolutions alone).
        """
        return dataclasses.replace(self._placement(name, default), rank=rank)

    def _placement(self, name: str, default: str | None) -> Placement:
        if name in self.names:
            raise ValueError(f"duplicate convolution name {name!r}")
        self.names.append(name)
        listed = not isinstance(self.algorithms, str | Mapping)
        if default is not None and (
            (
                isinstance(self.algorithms, Mapping)
                and name not in self.algorithms
                and "*" not in self.algorithms
            )
            or (listed and len(self.names) - 1 == len(self.algorithms))
        ):
            self.defaulted.append(name)
            return parse_placement(default, self.mesh)
        if isinstance(self.algorithms, str):
            choice = self.algorithms
        elif isinstance(self.algorithms, Mapping):
            choice = self.algorithms.get(name, self.algorithms.get("*"))
            if choice is None:
                raise ValueError(f"algorithms has no entry for layer {name!r} and no '*' default")
        else:
            index = len(self.names) - 1
            if index >= len(self.algorithms):
                raise ValueError(
                    f"algorithms lists {len(self.algorithms)} placements but the model has more convolutions"
                )
            choice = self.algorithms[index]
        return parse_placement(choice, self.mesh)

    def finish(self) -> tuple[str, ...]:
        """Checks that every given placement was used; returns the convolution names in order."""
        if isinstance(self.algorithms, Mapping):
            unknown = sorted(set(self.algorithms) - set(self.names) - {"*"})
            if unknown:
                raise ValueError(f"algorithms names unknown layers {unknown}; the layers are {self.names}")
        elif not isinstance(self.algorithms, str) and len(self.algorithms) != len(self.names) - len(
            self.defaulted
        ):
            raise ValueError(
                f"algorithms lists {len(self.algorithms)} placements but the model has {len(self.names)} "
                f"convolutions: {self.names}"
            )
        return tuple(self.names)


class ConvBN(nnx.Module):
    """Convolution (no bias) → distributed BatchNorm → optional ReLU, in the convolution's layouts.

    Args:
      cin, cout: channels.
      kernel: kernel size (the same along every spatial dimension).
      stride: stride.
      plan: the model's :class:`Placements`; ``name`` picks this convolution's placement.
      relu: apply ReLU.
      relu6: cap the ReLU at 6 (``min(max(x, 0), 6)``, MobileNetV2); only with ``relu``.
      groups: feature group count G (``cin``: depthwise); the placement must split whole groups
        (:mod:`jaxcnn.algorithms.groups`), else ``ValueError`` names what would work.
      momentum: BatchNorm running-average momentum (0.9, as PyTorch's 0.1: Flax's 0.99 default leaves
        the running statistics far from the data after the few hundred steps of a small run).
      dtype: computation dtype (parameters are float32).
      spatial_dims: 2 (NHWC images) or 3 (``(N, D, H, W, C)`` volumes; needs N-D convolutions).
      rngs: parameter initialisation.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        *,
        plan: Placements,
        name: str,
        relu: bool = True,
        relu6: bool = False,
        groups: int = 1,
        momentum: float = 0.9,
        dtype: Any = jnp.float32,
        spatial_dims: int = 2,
        rngs: nnx.Rngs,
    ):
        placement = dataclasses.replace(plan.placement(name, rank=spatial_dims), groups=groups)
        self.conv = Conv(
            cin,
            cout,
            (kernel,) * spatial_dims,
            stride,
            padding="SAME",
            use_bias=False,
            feature_group_count=groups,
            mesh=placement.mesh,
            algorithm=placement.algorithm,
            reduce_dtype=plan.reduce_dtype,
            dtype=dtype,
            kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
            rngs=rngs,
        )
        self.bn = BatchNorm(
            cout,
            mesh=placement.mesh,
            spec=placement.y_spec,
            spatial_dims=spatial_dims,
            momentum=momentum,
            dtype=dtype,
            rngs=rngs,
        )
        self.relu = relu
        self.spatial_dims = spatial_dims
        self.relu6 = relu6
        self.name = name  # the convolution's name (planners key placements by it)
        self.mesh = placement.mesh
        self.input_sharding = NamedSharding(placement.mesh, placement.x_spec)
        self.output_sharding = NamedSharding(placement.mesh, placement.y_spec)

    def __call__(self, x: jax.Array, src: NamedSharding) -> jax.Array:
        """``x`` laid out as ``src``; returns the block's output, laid out as ``self.output_sharding``.
        ``x`` (float32 images, for the first block) is cast to the computation dtype before it moves."""
        if self.conv.dtype is not None:
            x = x.astype(self.conv.dtype)
        y = self.bn(self.conv(redistribute(x, src, self.input_sharding)))
        y = on_common_mesh(y, self.mesh, self.output_sharding.spec)  # where it is already: no movement
        if not self.relu:
            return y
        return nnx.relu6(y) if self.relu6 else nnx.relu(y)


Input = tuple[jax.Array, NamedSharding]  # an activation and the layout it is in


def block_input(
    x: jax.Array, src: NamedSharding, first: ConvBN, shortcut: NamedSharding
) -> tuple[Input, Input]:
    """A residual block's input for its main chain and for its shortcut, each with its layout.

    The main chain reads ``x`` moved into ``first``'s input layout (``first``: the chain's first
    convolution). The shortcut reads ``x`` in the layout ``shortcut`` (an identity shortcut: the sum's
    layout; a projection: its convolution's input layout). When that moved copy already is in
    ``shortcut`` (:func:`jaxcnn.redistribute.moves_nothing`: e.g. a ``filter`` expand reading
    ``P(n, h, None, k)`` and a ``channel`` project summing in ``P(n, h, None, c)`` on the same devices),
    the shortcut reads the same copy: the block input changes layout once, forward and backward (the
    cotangents of both readers summed before the one change back), not once per reader
    (:func:`jaxcnn.planner.step.step_cost` prices the block so). Else the shortcut reads ``x`` where it
    is (``(x, src)``), and moves it itself.
    """
    moved = redistribute(x, src, first.input_sharding), first.input_sharding
    return moved, moved if moves_nothing(x.shape, first.input_sharding, shortcut) else (x, src)


def pool(x: jax.Array, after: ConvBN, window: int, stride: int, padding: str = "VALID") -> jax.Array:
    """Max pooling (the same window and stride along every spatial dimension) in the output layout of
    the block ``after``."""
    dims = after.spatial_dims
    return max_pool(
        x, (window,) * dims, (stride,) * dims, padding, mesh=after.mesh, spec=after.output_sharding.spec
    )


def _padded_init(init: Any, classes: int) -> Any:
    """``init`` drawn for ``classes`` output channels, zero-padded to the requested shape."""

    def padded(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        value = init(key, (*shape[:-1], classes), dtype)
        return jnp.pad(value, [(0, 0)] * (len(shape) - 1) + [(0, shape[-1] - classes)])

    return padded


class Head(nnx.Module):
    """Global average pooling → the classifier as a distributed 1×1 convolution on a 1×1 map.

    The dense layer ``(N, C) @ (C, K)`` is the convolution of ``(N, 1, 1, C)`` with a ``(1, 1, C, K)``
    kernel, so it runs under any algorithm that does not split space (data, filter, channel, 2d, 2.5d,
    3d) and is placed by the planner like every other layer (its name is :data:`HEAD_NAME`, its
    plan-graph node a :class:`jaxcnn.models.graph.Head`). Logits leave in the layout
    ``logits_sharding``: batch split as the head's rows, classes gathered.

    The classes are padded to a multiple of the placement's ``k · c`` (the blocks the output channels
    are split into; 1000 → 1008 on ``3d@n=32,k=4,c=4``): without it a classifier of 1000 classes on a
    batch of 32 would have no even placement on 512 devices (batch × class splits would reach at most
    32 · 8). The padded classes start at zero (the kernel is drawn for the real classes, so the
    initial values do not depend on the placement) and their logits are cropped away once the classes
    are gathered: they never reach the loss and their weights get zero gradients.

    Args:
      features: input channels.
      num_classes: logits.
      plan: the model's :class:`Placements`.
      dtype: computation dtype.
      rngs: parameter initialisation.
    """

    #: The classes are padded to a multiple of the placement's ``k · c`` (see above).
    pad_outputs: ClassVar[bool] = True

    def __init__(
        self, features: int, num_classes: int, *, plan: Placements, dtype: Any = jnp.float32, rngs: nnx.Rngs
    ):
        devices = plan.mesh.devices.size
        placement = plan.placement(HEAD_NAME, default=f"data@n={devices}")
        multiple = placement.mesh.shape.get("k", 1) * placement.mesh.shape.get("c", 1)
        self.name = HEAD_NAME
        self.num_classes = num_classes
        self.conv = Conv(
            features,
            -(-num_classes // multiple) * multiple,
            (1, 1),
            1,
            padding="VALID",
            use_bias=True,
            mesh=placement.mesh,
            algorithm=placement.algorithm,
            reduce_dtype=plan.reduce_dtype,
            dtype=dtype,
            kernel_init=_padded_init(nnx.initializers.lecun_normal(), num_classes),
            rngs=rngs,
        )
        self.mesh = placement.mesh
        self.input_sharding = NamedSharding(placement.mesh, placement.x_spec)
        self.output_sharding = NamedSharding(placement.mesh, placement.y_spec)
        rows = placement.y_spec[0] if len(placement.y_spec) else None
        self.logits_sharding = NamedSharding(placement.mesh, P(rows, None))
        self.label_sharding = NamedSharding(placement.mesh, P(rows))

    @property
    def padding_params(self) -> int:
        """Parameters of the padded classes (always zero: kernel columns and biases)."""
        return (self.conv.out_features - self.num_classes) * (self.conv.in_features + 1)

    def __call__(self, x: jax.Array, last: ConvBN) -> jax.Array:
        """``x`` is in ``last``'s output layout; returns ``(N, num_classes)`` float32 logits."""
        spec = tuple(last.output_sharding.spec) + (None,) * 4
        pooled = global_avg_pool(x, mesh=last.mesh, spec=last.output_sharding.spec)
        src = NamedSharding(last.mesh, P(spec[0], None, None, spec[3]))
        y = self.conv(redistribute(pooled[:, None, None, :], src, self.input_sharding))
        out = NamedSharding(self.mesh, P(*self.logits_sharding.spec[:1], None, None, None))
        logits = redistribute(y, self.output_sharding, out)[:, 0, 0, : self.num_classes]  # local crop
        return logits.astype(jnp.float32)
