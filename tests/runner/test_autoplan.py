"""``model.algorithms: auto``: geometries traced from the model, placements from ``jaxcnn.plan_network``."""

from __future__ import annotations

import math

from flax import nnx

import jaxcnn
from jaxcnn.geometry import conv_geometry
from jaxcnn.models.trace import trace_layers
from jaxcnn.networks import ConvLayer
from jaxcnn.nn.placement import format_placement
from jaxcnn.runner import setup
from jaxcnn.runner.config import from_dict
from tests.runner import tiny_model


def test_placement_strings():
    assert format_placement("3d", {"n": 2, "h": 1, "w": 1, "k": 2, "c": 2}) == "3d@n=2,k=2,c=2"
    assert format_placement("data", {"n": 1, "h": 1, "w": 1, "k": 1, "c": 1}) == "data"


def test_auto_plans_the_traced_layers():
    cfg = from_dict({"model": {"algorithms": "auto"}, "mesh": {"n": 8}, "train": {"batch_size": 16}})
    mesh = setup.build_mesh(cfg)
    model = setup.build_model(cfg, mesh, 10, (12, 12, 3), builder=tiny_model.build)
    # The geometries the model really runs, in execution order (not attribute order).
    layers = [
        ConvLayer("first", conv_geometry((16, 12, 12, 3), (3, 3, 3, 8), 1, "SAME")),
        ConvLayer("second", conv_geometry((16, 12, 12, 8), (3, 3, 8, 16), 2, "SAME")),
    ]

    def build(algorithms):
        return tiny_model.build("tiny", num_classes=10, in_channels=3, mesh=mesh, algorithms=algorithms)

    assert trace_layers(nnx.eval_shape(lambda: build("data@n=8")), 16, (12, 12, 3)) == layers
    expected = jaxcnn.plan_network(layers, 8, math.inf)
    placements = {s.name: format_placement(s.choice.algorithm, s.choice.grid) for s in expected.steps}
    built = {b.name: (b.conv.algorithm, dict(b.conv.mesh.shape)) for b in (model.first, model.second)}
    for name, text in placements.items():
        algorithm, _, sizes = text.partition("@")
        grid = dict(item.split("=") for item in sizes.split(",")) if sizes else {}
        assert built[name][0] == algorithm
        assert {a: s for a, s in built[name][1].items() if s > 1} == {a: int(s) for a, s in grid.items()}
