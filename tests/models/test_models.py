"""Models with mixed per-layer placements on 8 devices against the same model on one device.

Reference: the same architecture with every convolution ``"data"`` on ``jaxcnn.make_mesh()`` (one
device), same initial parameters. Compared: training-mode logits, all parameter gradients, the
BatchNorm running statistics after the step, and eval-mode logits with the updated statistics.
Tolerance: fp32, |a - b| <= 1e-4·|b| + max(1e-5, 1e-4·max|b|) per tensor: gradients pass through up to
20 convolutions and BatchNorms whose reductions run in a different order on 8 devices, so single
elements near zero differ by ~2e-5 of the tensor's scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.models as models
import jaxcnn.nn as jnn

TOL = dict(rtol=1e-4, atol=1e-5)


def _train_step_and_eval(model, x, labels, with_eval=True):
    """One jitted program: train-mode logits, parameter grads, updated state, then eval-mode logits."""
    model.train()
    graphdef, state = nnx.split(model)
    model.eval()
    eval_graphdef = nnx.split(model)[0]
    shardings = jnn.variable_shardings(state)
    mesh = next(iter(jax.tree.leaves(shardings))).mesh
    replicated = NamedSharding(mesh, P())
    param_shardings = nnx.state(shardings, nnx.Param)

    def step(state, x):
        m = nnx.merge(graphdef, state)

        def loss(m):
            logits = m(x)
            nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
            return nll, logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(m)
        new_state = nnx.state(m)
        eval_logits = nnx.merge(eval_graphdef, new_state)(x) if with_eval else logits
        return logits, grads, new_state, eval_logits

    out_shardings = (replicated, param_shardings, shardings, replicated)
    return jax.jit(step, out_shardings=out_shardings)(state, jax.device_put(x, replicated))


def _crop(value, like):
    """``value`` cut to the shape of ``like`` (its leading corner)."""
    return np.asarray(value)[tuple(slice(0, s) for s in np.shape(like))]


def _compare(name, placements, shape, with_eval=True, **kwargs):
    mesh = jaxcnn.make_mesh(n=8)
    build = dict(num_classes=10, in_channels=shape[-1], **kwargs)
    ours = models.build(name, mesh=mesh, algorithms=placements, rngs=nnx.Rngs(0), **build)
    # The reference gets the same initial values (copied to host, then to its one device).
    one = jaxcnn.make_mesh()
    abstract_ref = nnx.eval_shape(
        lambda: models.build(name, mesh=one, algorithms="data", rngs=nnx.Rngs(0), sharded_init=False, **build)
    )
    ref_graphdef, ref_state = nnx.split(abstract_ref)
    # A head placed with k * c > 1 pads its classes (jaxcnn.models.common.Head); the reference has none.
    ours_values = jax.device_get(nnx.to_pure_dict(nnx.state(ours)))
    ref_shapes = nnx.to_pure_dict(ref_state)
    nnx.replace_by_pure_dict(ref_state, jax.tree.map(_crop, ours_values, ref_shapes))
    ref = nnx.merge(ref_graphdef, ref_state)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.arange(shape[0]) % 10
    got, want = (_train_step_and_eval(m, x, labels, with_eval) for m in (ours, ref))
    for what, a_tree, b_tree in zip(("logits", "grads", "state", "eval logits"), got, want, strict=True):
        a_leaves = jax.tree_util.tree_leaves_with_path(a_tree)
        for (path, a), b in zip(a_leaves, jax.tree.leaves(b_tree), strict=True):
            msg = f"{what} {jax.tree_util.keystr(path)}"
            b = np.asarray(b)
            if what == "grads" and a.shape != b.shape:  # the padded classes get no gradient
                assert not np.asarray(a)[..., b.shape[-1] :].any(), msg
            a = _crop(np.asarray(a), b)
            atol = max(TOL["atol"], TOL["rtol"] * float(np.abs(b).max(initial=0.0)))
            np.testing.assert_allclose(np.asarray(a), b, rtol=TOL["rtol"], atol=atol, err_msg=msg)
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
    # Eval mode (running statistics) is covered by the small CNN; one program less to compile here.
    _compare("resnet18", placements, (8, 8, 8, 3), with_eval=False, width=1 / 16, small_images=True)


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
