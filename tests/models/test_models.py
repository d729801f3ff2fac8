"""Models with mixed per-layer placements on 8 devices against the same model on one device.

Reference: the same architecture with every convolution ``"data"`` on ``jaxcnn.make_mesh()`` (one
device), same initial parameters. Compared (:func:`tests.models.steps.assert_same_step`, its
tolerance): training-mode logits, all parameter gradients, the BatchNorm running statistics after the
step, and eval-mode logits with the updated statistics.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxcnn
import jaxcnn.models as models
import jaxcnn.nn as jnn
from tests.models.steps import assert_same_step, copy_values


def _compare(name, placements, shape, with_eval=True, **kwargs):
    mesh = jaxcnn.make_mesh(n=8)
    build = dict(num_classes=10, in_channels=shape[-1], **kwargs)
    ours = models.build(name, mesh=mesh, algorithms=placements, rngs=nnx.Rngs(0), **build)
    # The reference gets the same initial values (copied to host, then to its one device).
    one = jaxcnn.make_mesh()
    abstract_ref = nnx.eval_shape(
        lambda: models.build(name, mesh=one, algorithms="data", rngs=nnx.Rngs(0), sharded_init=False, **build)
    )
    ref = copy_values(ours, abstract_ref)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.arange(shape[0]) % 10
    assert_same_step(ours, ref, x, labels, with_eval)
    return ours


def test_small_cnn_mixed_placements_equal_one_device():
    # The classifier ("head") is a distributed 1x1 convolution too, here on a 3d placement.
    placements = ["data", "spatial@n=2,h=2,w=2", "3d@n=2,k=2,c=2", "2d@n=2,h=2,k=2", "3d@n=2,k=2,c=2"]
    model = _compare("small_cnn", placements, (8, 8, 8, 1), width=0.25)
    assert models.conv_layer_names(model) == ("conv1", "conv2", "conv3", "conv4", "head")
    spatial = jnn.parse_placement(placements[1], jaxcnn.make_mesh(n=8))
    assert model.conv2.conv.kernel[...].sharding.mesh == spatial.mesh


@pytest.mark.slow
def test_tiny_resnet18_mixed_placements_equal_one_device():
    placements = {
        "*": "3d@n=2,k=2,c=2",
        "stem": "spatial@n=2,h=2,w=2",
        "layer1.0.conv1": "data",
        "layer2.0.conv2": "2d@n=2,h=2,k=2",
        "layer2.0.proj": "2.5d@n=2,k=2,c=2",
        "head": "filter@n=2,k=4",
    }
    # Eval mode (running statistics) is covered by the small CNN; one program less to compile here. One
    # block per stage (stage_sizes): the identity block of stage 1, the strided projection blocks of
    # stages 2-4, half the compile of ResNet-18's eight blocks (the second, identity block of stages
    # 2-4 is the same code as layer1.0).
    _compare(
        "resnet18", placements, (8, 8, 8, 3), with_eval=False, width=1 / 16, small_images=True,
        stage_sizes=(1, 1, 1, 1),
    )  # fmt: skip


def test_conv_layer_names_and_placement_errors():
    mesh = jaxcnn.make_mesh()

    def names(name, **kw):
        abstract = nnx.eval_shape(
            lambda: models.build(name, num_classes=10, in_channels=3, mesh=mesh, rngs=nnx.Rngs(0), **kw)
        )
        return models.conv_layer_names(abstract)

    resnet18, resnet50, vgg16 = names("resnet18"), names("resnet50"), names("vgg16")
    assert (len(resnet18), len(resnet50), len(vgg16)) == (21, 54, 14)  # the classifier "head" included
    assert resnet18[-1] == resnet50[-1] == vgg16[-1] == "head"
    assert resnet18[:4] == ("stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1")
    assert resnet50[1:5] == ("layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.0.proj")
    assert vgg16[-4:] == ("conv5_1", "conv5_2", "conv5_3", "head")
    # stage_sizes: the same kinds of blocks, fewer of them (a bottleneck block with a projection opens
    # each stage; layer1.1 is one with the identity shortcut)
    short = names("resnet50", stage_sizes=(2, 1, 1, 1))
    assert len(short) == 1 + 3 * 5 + 4 + 1
    assert short[5:8] == ("layer1.1.conv1", "layer1.1.conv2", "layer1.1.conv3")
    assert short[-5:] == ("layer4.0.conv1", "layer4.0.conv2", "layer4.0.conv3", "layer4.0.proj", "head")
    for bad in ((), (2, 0), (2.0,)):
        with pytest.raises(ValueError, match="stage_sizes must be a non-empty list of positive ints"):
            names("resnet18", stage_sizes=bad)

    def build_small(**kw):  # abstract: the errors are raised before any array is computed
        nnx.eval_shape(lambda: models.build(num_classes=10, in_channels=1, mesh=mesh, rngs=nnx.Rngs(0), **kw))

    with pytest.raises(ValueError, match="lists 3 placements but the model has more"):
        build_small(name="small_cnn", algorithms=["data"] * 3)
    build_small(name="small_cnn", algorithms=["data"] * 4)  # the head defaults to data over all devices
    build_small(name="small_cnn", algorithms=["data"] * 5)
    with pytest.raises(ValueError, match=r"unknown layers \['conv9'\]"):
        build_small(name="small_cnn", algorithms={"*": "data", "conv9": "3d"})
    with pytest.raises(ValueError, match="valid models"):
        build_small(name="resnet34")
