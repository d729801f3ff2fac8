"""Geometry and halo plans, checked against brute force over the blocks."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcnn.geometry import DimGeometry, conv_geometry, halo_plan
from tests.utils import reference_conv


@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 4),
    lo=st.integers(0, 6),
    hi=st.integers(0, 6),
    parts=st.integers(1, 8),
)
def test_halo_plan_windows_cover_exactly_what_each_block_reads(size, kernel, stride, dilation, lo, hi, parts):
    dim = DimGeometry(size, kernel, stride, dilation, (lo, hi))
    if dim.out < 1:
        return
    plan = halo_plan(dim, parts)
    assert plan.in_block == math.ceil(size / parts) and plan.out_block == math.ceil(dim.out / parts)
    extended = plan.left + plan.in_block + plan.right
    for b in range(parts):
        first_row = stride * b * plan.out_block - lo  # global input row read first by block b
        rows = {
            stride * p - lo + dilation * r
            for p in range(b * plan.out_block, (b + 1) * plan.out_block)
            for r in range(kernel)
        }
        assert min(rows) == first_row and max(rows) == first_row + plan.window - 1
        start = plan.start + b * plan.step  # offset of the window in [b·Bi - left, (b+1)·Bi + right)
        assert start == first_row - (b * plan.in_block - plan.left)
        assert start >= 0 and start + plan.window <= extended
    # The pieces tile exactly `left` and `right` rows.
    assert sum(r for _, r in plan.left_pieces()) == plan.left
    assert sum(r for _, r in plan.right_pieces()) == plan.right


@pytest.mark.parametrize(
    ("shape", "kernel", "strides", "padding", "dilation"),
    [
        ((1, 7, 9, 1), (3, 2, 1, 1), 2, "SAME", 1),
        ((1, 10, 5, 1), (4, 4, 1, 1), (3, 1), "SAME", (2, 1)),
        ((1, 12, 12, 1), (5, 5, 1, 1), 1, "VALID", 2),
        ((1, 6, 6, 1), (2, 3, 1, 1), 2, ((3, 0), (1, 4)), 1),
    ],
)
def test_geometry_output_shape_matches_lax(shape, kernel, strides, padding, dilation):
    geom = conv_geometry(shape, kernel, strides, padding, dilation)
    y = reference_conv(jnp.zeros(shape), jnp.zeros(kernel), strides, padding, dilation)
    assert geom.y_shape == y.shape


def test_multi_hop_halo_plan():
    """A 7-tap kernel dilated by 3 reaches 9 rows: 5 hops over blocks of 2 rows."""
    plan = halo_plan(DimGeometry(16, 7, 1, 3, (9, 9)), 8)
    assert (plan.left, plan.right, plan.in_block) == (9, 9, 2)
    assert plan.left_pieces() == [(5, 1), (4, 2), (3, 2), (2, 2), (1, 2)]
    # block 4: 8 rows from blocks 3..0 (hop 5 is off the image), 6 from blocks 5..7
    assert plan.received_rows(0) == 9 and plan.received_rows(4) == 14
