"""The U-Net: mixed placements on 8 devices equal one device (logits and gradients), its names and
plan graph, ``auto`` planning, and the rank-generic layers it needs (pooling and BatchNorm on volumes)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.models as models
import jaxcnn.nn as jnn
from jaxcnn.models.graph import Concat, Output
from tests.utils import first_fast

BUILD = dict(num_classes=2, in_channels=1, width=0.25, depth=2)


def _loss_and_grads(model, x, labels):
    model.train()
    graphdef, state = nnx.split(model)
    shardings = jnn.variable_shardings(state)
    mesh = next(iter(jax.tree.leaves(shardings))).mesh
    replicated = NamedSharding(mesh, P())

    def step(state, x):
        m = nnx.merge(graphdef, state)

        def loss(m):
            logits = m(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(m)
        return logits, grads

    out = (replicated, nnx.state(shardings, nnx.Param))
    return jax.jit(step, out_shardings=out)(state, jax.device_put(x, replicated))


@pytest.mark.slow
def test_unet_mixed_placements_equal_one_device():
    # One level (8 convolutions, every algorithm once): depth only repeats the same blocks.
    placements = [
        "data", "spatial@n=2,h=2,w=2", "filter@n=2,k=4", "3d@n=2,k=2,c=2", "2.5d@n=2,k=2,c=2",
        "channel@n=4,c=2", "2d@n=2,h=2,k=2", "spatial@n=2,h=2,w=2",
    ]  # fmt: skip
    build = {**BUILD, "depth": 1}
    ours = models.build("unet", mesh=jaxcnn.make_mesh(n=8), algorithms=placements, rngs=nnx.Rngs(0), **build)
    ref = models.build("unet", mesh=jaxcnn.make_mesh(), algorithms="data", rngs=nnx.Rngs(0), **build)
    assert models.conv_layer_names(ours) == (
        "enc0.conv1", "enc0.conv2", "bottom.conv1", "bottom.conv2", "up0", "dec0.conv1", "dec0.conv2", "out",
    )  # fmt: skip
    _assert_equals_one_device(ours, ref, (8, 16, 16))


@pytest.mark.slow
def test_unet3d_with_split_depth_equals_one_device():
    # Volumes with depth and height split (halos along d and h, d alone, d with w) and the transposed
    # convolution up0 and the concatenation on a d split; kernels gathered over k on 2d.
    placements = [
        "spatial@d=2,h=2,w=2", "spatial@n=2,d=2,h=2", "2d@d=2,h=2,k=2", "spatial@d=4,w=2",
        "2d@n=2,d=2,k=2", "spatial@d=2,h=2,w=2", "filter@n=2,k=4", "spatial@n=2,d=2,h=2",
    ]  # fmt: skip
    build = {**BUILD, "depth": 1, "spatial_dims": 3}
    ours = models.build("unet", mesh=jaxcnn.make_mesh(d=8), algorithms=placements, rngs=nnx.Rngs(0), **build)
    ref = models.build("unet", mesh=jaxcnn.make_mesh(), algorithms="data", rngs=nnx.Rngs(0), **build)
    up = ours.ups[0].conv
    assert isinstance(up, jnn.ConvTranspose) and up.kernel.shape == (2, 2, 2, 8, 4)
    _assert_equals_one_device(ours, ref, (2, 8, 8, 8))


def _assert_equals_one_device(ours, ref, shape):
    """``ours`` and the one-device ``ref`` give the same logits and parameter gradients on a batch of
    ``shape`` (N, *spatial) one-channel images."""
    x = jax.random.normal(jax.random.key(1), (*shape, 1))
    labels = (jax.random.uniform(jax.random.key(2), shape) > 0.7).astype(jnp.int32)
    (got_logits, got_grads), (want_logits, want_grads) = (_loss_and_grads(m, x, labels) for m in (ours, ref))
    assert got_logits.shape == (*shape, 2)
    pairs = [("logits", got_logits, want_logits)] + [
        (jax.tree_util.keystr(path), a, b)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads), strict=True
        )
    ]
    for what, a, b in pairs:
        b = np.asarray(b)
        atol = max(1e-5, 1e-4 * float(np.abs(b).max(initial=0.0)))
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=atol, err_msg=what)


def test_unet_graph_options_and_errors():
    mesh = jaxcnn.make_mesh()
    model = nnx.eval_shape(lambda: models.build("unet", mesh=mesh, rngs=nnx.Rngs(0), **{**BUILD, "depth": 3}))
    graph = model.plan_graph
    assert [n for n in graph if isinstance(n, Concat)] == [
        Concat("enc2.conv2", "up2"),
        Concat("enc1.conv2", "up1"),
        Concat("enc0.conv2", "up0"),
    ]
    assert graph[-1] == Output("out") and model.task == "segmentation"
    from jaxcnn.models.trace import trace_layers

    layers = {layer.name: layer.geom for layer in trace_layers(model, 2, (16, 16, 1))}
    assert layers["up0"].input_dilation == (2, 2) and layers["up0"].y_shape == (2, 16, 16, 4)
    assert layers["dec0.conv1"].x_shape == (2, 16, 16, 8)  # the skip's 4 channels + the upsampled 4
    with pytest.raises(ValueError, match="divisible by 8"):
        jax.eval_shape(lambda: model(jnp.zeros((2, 12, 12, 1))))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        models.build("unet", mesh=mesh, rngs=nnx.Rngs(0), spatial_dims=1, **BUILD)
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        models.build("unet", mesh=mesh, rngs=nnx.Rngs(0), **{**BUILD, "depth": 0})


@pytest.mark.slow
def test_auto_places_the_unet_and_predicts_its_step():
    from jaxcnn.planner.network import plan_graph
    from jaxcnn.planner.step import grid_key, step_cost
    from jaxcnn.runner.autoplan import plan_algorithms

    mesh = jaxcnn.make_mesh(n=4, c=2)  # a batch of 4 on 8 devices: every layer needs more than data

    def build(algorithms):
        return models.build("unet", mesh=mesh, algorithms=algorithms, rngs=nnx.Rngs(0), **BUILD)

    placements = plan_algorithms(build, mesh, 4, (16, 16, 1), 0, "float32")
    assert set(placements) == set(models.conv_layer_names(nnx.eval_shape(lambda: build("data@n=8"))))
    assert all("@" in p for p in placements.values())
    model = nnx.eval_shape(lambda: build(placements))  # the plan builds
    # The plan is no worse than data parallelism with n=4, c=2 replicas (the run mesh itself).
    from jaxcnn.models.trace import trace_layers
    from jaxcnn.planner.step import choices_for

    layers = {layer.name: layer.geom for layer in trace_layers(model, 4, (16, 16, 1))}
    source = (P("n"), grid_key({"n": 4, "c": 2}))
    chosen = plan_graph(model.plan_graph, layers, 8, source)
    data = choices_for(layers, dict.fromkeys(layers, ("channel", {"n": 4, "c": 2})), first="enc0.conv1")
    planned, baseline = (step_cost(model.plan_graph, layers, c, source).max_bytes for c in (chosen, data))
    assert 0 < planned <= baseline


@pytest.mark.parametrize("padding", first_fast(["VALID", "SAME"], one_argument=True))
def test_pooling_and_batchnorm_on_volumes_with_split_depth(padding):
    # 3-D activations (N, D, H, W, C) with depth and height split (over the mesh axes h and w: the layers
    # read the axes from the spec, so they need no axis named d).
    mesh = jaxcnn.make_mesh(n=2, h=2, w=2)
    spec = P("n", "h", "w")
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 5, 3))
    windows = (((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)))

    @jax.jit  # one program (run eagerly, each operation of the halo exchanges compiles on its own)
    def pools(x):
        maxes = [jnn.max_pool(x, window, stride, padding, mesh=mesh, spec=spec) for window, stride in windows]
        avg = jnn.avg_pool(x, (2, 2, 2), (2, 2, 2), padding, count_include_pad=False, mesh=mesh, spec=spec)
        return maxes, avg

    maxes, avg = pools(x)
    for (window, stride), got in zip(windows, maxes, strict=True):
        want = lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1), padding)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    want = nnx.avg_pool(x, (2, 2, 2), (2, 2, 2), padding, count_include_pad=False)
    np.testing.assert_allclose(avg, want, rtol=1e-5, atol=1e-6)
    bn = jnn.BatchNorm(3, mesh=mesh, spec=spec, spatial_dims=3, use_running_average=False, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(3, use_running_average=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(bn(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="spatial_dims=3"):
        bn(x[:, 0])
