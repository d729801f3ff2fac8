"""Property test: random layer shapes, strides, dilations, paddings, kernels and a valid grid per
algorithm; forward and gradients equal single-device lax (relative 5e-5, fp32)."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxcnn
from jaxcnn.algorithms import REGISTRY
from tests.utils import assert_same_loss_and_grads, random_inputs, reference_conv

pytestmark = pytest.mark.slow

AXES = ("n", "h", "w", "k", "c")


@st.composite
def grids(draw, algorithm: str) -> dict[str, int]:
    """A grid over the algorithm's axes (but d: the layers are 2-D) with at most 8 devices."""
    sizes = {a: 1 for a in AXES}
    for axis in draw(st.permutations([a for a in REGISTRY[algorithm].axes if a in AXES])):
        budget = 8 // math.prod(sizes.values())
        sizes[axis] = draw(st.sampled_from([s for s in (1, 2, 4, 8) if s <= budget]))
    return sizes


@st.composite
def layers(draw, max_size: int = 20, max_dilation: int = 3):
    """A 2-D layer: x shape, kernel shape and conv kwargs (h, w at most ``max_size``)."""
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    padding = draw(
        st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.tuples(
                st.tuples(st.integers(0, 4), st.integers(0, 4)),
                st.tuples(st.integers(0, 4), st.integers(0, 4)),
            ),
        )
    )
    ext_h, ext_w = dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1
    h = draw(st.integers(max(1, ext_h - 8), max_size))
    w = draw(st.integers(max(1, ext_w - 8), max_size))
    shape = (draw(st.integers(1, 4)), h, w, draw(st.integers(1, 9)))
    k = draw(st.integers(1, 9))
    try:
        jaxcnn.conv_geometry(shape, (r, s, shape[3], k), strides, padding, dilation)
    except ValueError:
        assume(False)
    return shape, (r, s, shape[3], k), dict(strides=strides, padding=padding, dilation=dilation)


@pytest.mark.parametrize("algorithm", jaxcnn.ALGORITHMS)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_random_layers_and_grids(algorithm, data):
    grid = data.draw(grids(algorithm), label="grid")
    x_shape, k_shape, kw = data.draw(layers(), label="layer")
    mesh = jaxcnn.make_mesh(**grid)
    x, kernel = random_inputs(1, x_shape, k_shape)

    assert_same_loss_and_grads(
        lambda a, b: jaxcnn.conv2d(a, b, mesh=mesh, algorithm=algorithm, **kw),
        lambda a, b: reference_conv(a, b, **kw),
        x,
        kernel,
    )
