"""A network as the planner sees it: convolutions, pooling and residual blocks (series-parallel).

A model's ``plan_graph`` is a tuple of nodes in execution order:

- :class:`Conv`: a convolution (with its BatchNorm and ReLU, or the classifier ``"head"``);
- :class:`Pool`: a pooling window applied in the output layout of the convolution ``after``;
- :class:`Residual`: ``relu(main(x) + shortcut(x))``: a chain of convolutions and an identity or
  projection shortcut, summed in the layout of the main chain's last convolution (MobileNetV2's
  inverted residuals have no activation after the sum; elementwise functions move nothing, so the
  node is the same).

The shapes come from the model itself (:func:`jaxcnn.runner.autoplan.conv_layers` traces it), so the
graph only names layers and never repeats their geometry.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution node (``name`` keys its placement)."""

    name: str


@dataclasses.dataclass(frozen=True)
class Pool:
    """A ``window × window`` pooling with ``stride`` and ``padding`` in the layout of conv ``after``."""

    after: str
    window: int
    stride: int
    padding: str
    kind: str = "max"


@dataclasses.dataclass(frozen=True)
class Residual:
    """``relu(main(x) + shortcut(x))``; ``shortcut`` is a projection conv's name or None (identity)."""

    main: tuple[str, ...]
    shortcut: str | None


Node = Conv | Pool | Residual
