"""Every registered model satisfies the :class:`jaxcnn.models.protocol.Network` protocol, and the names
and tasks the rest of jaxcnn reads come from the one registry (:data:`jaxcnn.models.MODELS`)."""

import pytest
from flax import nnx

import jaxcnn
import jaxcnn.models as models
from jaxcnn import networks
from jaxcnn.models.graph import Head, Output
from jaxcnn.models.protocol import TASKS, ModelHead, Network
from jaxcnn.models.trace import trace_layers

#: Small options per model (abstract builds: nothing is computed, so only the trace needs them small).
OPTIONS = {"mobilenet_v2": {"settings": ((1, 8, 1, 1),)}, "unet": {"depth": 1}}


def _abstract(name):
    cls = models.MODELS[name]
    return nnx.eval_shape(
        lambda: models.build(
            name,
            num_classes=cls.default_num_classes,
            in_channels=cls.default_in_channels,
            mesh=jaxcnn.make_mesh(),
            rngs=nnx.Rngs(0),
            sharded_init=False,
            **OPTIONS.get(name, {}),
        )
    )


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_satisfies_the_protocol(name):
    cls = models.MODELS[name]
    assert cls.task in TASKS and models.task_of(name) == cls.task  # declared by the class
    model = _abstract(name)
    assert isinstance(model, Network) and isinstance(model.head, ModelHead)
    assert isinstance(model.conv_names, tuple) and isinstance(model.plan_graph, tuple)
    # The head is the plan graph's last node, by kind: a classifier's Head, a segmentation Output.
    last = model.plan_graph[-1]
    assert type(last) is (Head if cls.task == "classification" else Output)
    assert last.name == model.head.name == model.conv_names[-1]
    # Only a classifier pads its classes, and the traced tables say which layer does.
    assert model.head.pad_outputs == (cls.task == "classification")
    side = cls.default_image
    image = (side, side, cls.default_in_channels)
    layers = trace_layers(model, 2, image)
    assert [layer.name for layer in layers if layer.pad_outputs] == (
        [model.head.name] if model.head.pad_outputs else []
    )


def test_the_registry_is_the_one_list_of_names_and_tasks():
    classifiers = models.model_names("classification")
    assert set(classifiers) | set(models.model_names("segmentation")) == set(models.MODELS)
    assert models.model_names() == tuple(models.MODELS)
    assert models.model_names("segmentation") == ("unet",)
    assert tuple(networks.NETWORKS) == classifiers
    with pytest.raises(ValueError, match="valid models are"):
        models.task_of("resnet34")
    with pytest.raises(ValueError, match="valid tasks are"):
        models.model_names("detection")
