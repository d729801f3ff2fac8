"""Metered programs priced like predictions: jaxcnn.timing.metered.metered_link of a compiled layer equals
the cost model's per-device bytes, latency terms, calls and cross-host parts, kind by kind."""

from __future__ import annotations

import numpy as np
import pytest

import jaxcnn
from jaxcnn.cost import predict
from jaxcnn.measure import measure_conv
from jaxcnn.timing.metered import metered_link
from tests.utils import first_fast

GEOM = jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 16, 16))


@pytest.mark.parametrize(
    ("algorithm", "grid", "hosts"),
    first_fast(
        [
            ("spatial", dict(n=2, h=2, w=2), 2),  # permutes, a gradient all-reduce over all devices
            ("2d", dict(n=2, h=2, k=2), 4),  # streamed panels: gathers in a loop, reduce-scatters
            ("3d", dict(n=2, k=2, c=2), 1),
        ],
        keep=2,
    ),
)
def test_a_metered_layer_has_the_predicted_link_figures(algorithm, grid, hosts):
    cost = predict(GEOM, algorithm, grid, hosts=hosts)
    fwd, bwd = measure_conv(GEOM, mesh=jaxcnn.make_mesh(**grid), algorithm=algorithm)
    for report, predicted in ((fwd, cost.forward), (bwd, cost.backward)):
        got, want = metered_link(report, hosts), predicted.link_bytes()
        assert set(got.kinds) == set(want.kinds)
        for kind in want.kinds:
            np.testing.assert_array_equal(got.kinds[kind], want.kinds[kind], err_msg=kind)
            np.testing.assert_array_equal(got.steps[kind], want.steps[kind], err_msg=kind)
            np.testing.assert_array_equal(got.calls[kind], want.calls[kind], err_msg=kind)
        np.testing.assert_array_equal(got.dcn, want.dcn + np.zeros(8))
        np.testing.assert_array_equal(got.dcn_steps, want.dcn_steps + np.zeros(8))
