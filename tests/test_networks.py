"""Network layer tables against published figures (torchvision ResNet-50 v1.5 and VGG-16).

The tables are traced from jaxcnn.models, so their names are the models' (``stem``, ``layerN.0.proj``,
``convB_I``) and the classifier (``head``, a 1x1 convolution on a 1x1 map) is a layer too."""

import math

import pytest

from jaxcnn.networks import (
    ConvLayer,
    dedupe,
    get_network,
    layers_from_dicts,
    layers_from_yaml,
    resnet50_layers,
    vgg16_layers,
)


def macs(layers: list[ConvLayer]) -> int:
    return sum(layer.geom.flops // 2 * layer.repeat for layer in layers)


def weights(layers: list[ConvLayer]) -> int:
    return sum(math.prod(layer.geom.kernel_shape) * layer.repeat for layer in layers)


def test_resnet50_counts_macs_and_weights():
    layers = resnet50_layers(batch=2)
    assert len(layers) == 54 and (layers[0].name, layers[-1].name) == ("stem", "head")
    assert sum(layer.name.endswith(".proj") for layer in layers) == 4
    # torchvision: 4.09 GMACs per image, the fc layer (2048*1000) included.
    assert macs(layers) == pytest.approx(2 * 4.089e9, rel=2e-3)
    # torchvision: 25,557,032 parameters = conv 23,454,912 + fc 2,049,000 (1,000 of them biases)
    # + batch norm 53,120.
    assert weights(layers) == 23_454_912 + 2_048_000
    assert layers[0].geom.y_shape == (2, 112, 112, 64)
    assert layers[-2].geom.y_shape == (2, 7, 7, 2048)
    assert layers[-1].geom.x_shape == (2, 1, 1, 2048) and layers[-1].geom.y_shape == (2, 1, 1, 1000)
    # Only the classifier may pad its classes to the grid's k * c (the planner ranks it so).
    assert [layer.name for layer in layers if layer.pad_outputs] == ["head"]
    conv2 = next(layer for layer in layers if layer.name == "layer2.0.conv2")
    assert conv2.geom.strides == (2, 2) and conv2.geom.y_shape == (2, 28, 28, 128)  # v1.5: stride in 3x3


def test_resnet50_dedupe_keeps_totals():
    layers = resnet50_layers(batch=1)
    unique = dedupe(layers)
    assert len(unique) < 54 and sum(layer.repeat for layer in unique) == 54
    assert macs(unique) == macs(layers)


def test_vgg16_counts_macs_and_weights():
    layers = vgg16_layers(batch=1)
    assert len(layers) == 14 and layers[-1].name == "head" and layers[0].name == "conv1_1"
    # 15.47 GMACs total, of which the three dense layers of the ImageNet model are 123.6M; jaxcnn's
    # VGG-16 has a global-average-pool classifier instead (512 * 1000).
    assert macs(layers) == pytest.approx(15.47e9 - 123.6e6 + 512_000, rel=2e-3)
    assert weights(layers) == 14_710_464 + 512_000  # 14,714,688 conv parameters minus 4,224 biases
    assert layers[-2].geom.y_shape == (1, 14, 14, 512)


def test_image_size_changes_spatial_sizes():
    layers = resnet50_layers(batch=1, image=128)
    assert layers[0].geom.y_shape[1] == 64 and layers[-2].geom.y_shape[1] == 4


def test_layers_from_yaml_and_dicts(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(
        "layers:\n"
        "  - {name: a, h: 8, w: 8, c: 3, k: 4, r: 3, stride: 2, padding: 1}\n"
        "  - {h: 4, w: 6, c: 4, k: 8, r: 1, s: 3, padding: VALID, dilation: [1, 2], repeat: 3}\n"
    )
    a, b = layers_from_yaml(path, batch=5)
    assert a.name == "a" and a.geom.y_shape == (5, 4, 4, 4) and a.geom.padding == ((1, 1), (1, 1))
    assert b.name == "conv1" and b.repeat == 3
    assert b.geom.kernel_shape == (1, 3, 4, 8) and b.geom.y_shape == (5, 4, 2, 8)  # 6 - 2*(3-1) = 2
    assert get_network(str(path), batch=5) == [a, b]


def test_layers_of_any_rank_from_yaml(tmp_path):
    path = tmp_path / "nd.yaml"
    path.write_text(
        "- {name: line, input: [32, 4], k: 8, kernel: 5, stride: 2, padding: 2, repeat: 2}\n"
        "- {name: vol, input: [4, 8, 8, 4], k: 8, kernel: [1, 3, 3], padding: [0, [1, 1], 1]}\n"
        "- {name: plane, input: [8, 6, 4], k: 8, kernel: [1, 3], padding: VALID, dilation: [1, 2]}\n"
    )
    line, vol, plane = layers_from_yaml(path, batch=3)
    assert line.geom.rank == 1 and line.repeat == 2 and line.geom.kernel_shape == (5, 4, 8)
    assert line.geom.padding == ((2, 2),) and line.geom.y_shape == (3, 16, 8)
    assert vol.geom.rank == 3 and vol.geom.kernel_shape == (1, 3, 3, 4, 8)
    assert vol.geom.padding == ((0, 0), (1, 1), (1, 1)) and vol.geom.y_shape == (3, 4, 8, 8, 8)
    # The N-D form of a 2-D layer is the h, w, c, k, r form.
    [same] = layers_from_dicts([{"name": "plane", "h": 8, "w": 6, "c": 4, "k": 8, "r": 1, "s": 3,
                                  "padding": "VALID", "dilation": [1, 2]}], batch=3)  # fmt: skip
    assert plane == same and plane.geom.y_shape == (3, 8, 2, 8)


def test_a_table_layer_pads_its_outputs_when_named_head_or_told():
    entry = {"h": 1, "w": 1, "c": 16, "k": 10, "r": 1}
    head, told, plain, untold = layers_from_dicts(
        [
            {**entry, "name": "head"},
            {**entry, "pad_outputs": True},
            entry,
            {**entry, "name": "head", "pad_outputs": False},
        ],
        batch=2,
    )
    assert (head.pad_outputs, told.pad_outputs, plain.pad_outputs, untold.pad_outputs) == (
        True,
        True,
        False,
        False,
    )


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"h": 8, "w": 8, "c": 3, "k": 4, "r": 3, "size": 3}, r"unknown keys \['size'\]"),
        ({"h": 8, "w": 8, "c": 3, "k": 4, "r": 3, "kernel": 3}, r"mixes the 2-D keys \['c', 'h', 'r', 'w'\]"),
        ({"input": [8, 8, 8, 8, 3], "k": 4, "kernel": 3}, r"'input' must be \[W, C\]"),
        ({"input": [8, 8, 3], "k": 4, "kernel": [3, 3, 3]}, "'kernel' must be an int or a list of 2 ints"),
        ({"input": [8, 0, 3], "k": 4, "kernel": 3}, "'input' must be a positive int, got 0"),
        ({"input": [8, 3], "kernel": 3}, r"missing required keys \['k'\]"),
        ({"input": [8, 3], "k": 4, "kernel": 3, "groups": 2}, r"unknown keys \['groups'\]"),
        (
            {"input": [1, 1, 8], "k": 4, "kernel": 1, "pad_outputs": "yes"},
            "'pad_outputs' must be true or false",
        ),
        ({"name": "deep", "input": [2, 8, 8, 3], "k": 4, "kernel": 3, "padding": "VALID"}, "deep.*output D"),
        ({"h": 8, "w": 8, "c": 3, "r": 3}, r"missing required keys \['k'\]"),
        ({"h": 8, "w": 8, "c": 3, "k": 4, "r": 0}, "'r' must be a positive int"),
        ({"name": "big", "h": 2, "w": 2, "c": 3, "k": 4, "r": 5, "padding": "VALID"}, "big.*output H"),
    ],
)
def test_bad_layers_name_the_problem(entry, match):
    with pytest.raises(ValueError, match=match):
        layers_from_dicts([entry], batch=1)


def test_unknown_network():
    with pytest.raises(ValueError, match="resnet50"):
        get_network("alexnet", batch=1)
