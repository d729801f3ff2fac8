"""Switching meshes between layers: x and the kernel may arrive laid out on another mesh (or on none).

Every layer runs on its own mesh over the same 8 devices; the forward pass and both gradients must
equal ``lax.conv_general_dilated`` (composed the same way), eagerly and under ``jax.jit``. Results of
layers on different meshes combine (``y1 + y2``, a ``jit`` chain ending on another mesh, a gradient
summed over both): jaxcnn names every layout on the common mesh of the devices
(``jaxcnn.common_mesh``), where JAX alone raises ``IndivisibleError``
(``test_jax_alone_raises_indivisible_error``). Tolerance: fp32, two chained 3x3x16 reductions,
relative 2e-5 / absolute 1e-4.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.sharding import IndivisibleError
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

import jaxcnn
from tests.utils import first_fast, reference_conv

X_SHAPE = (4, 8, 8, 16)
K_SHAPE = (3, 3, 16, 16)
TOL = {"rtol": 2e-5, "atol": 1e-4}

C8 = ("channel", {"c": 8})
# (first layer, second layer) as (algorithm, grid). data n=8 also zero-pads the batch (4 -> 8).
SWITCHES = [
    (C8, ("channel", {"n": 2, "c": 4})),
    (C8, ("3d", {"n": 2, "k": 2, "c": 2})),
    (C8, ("spatial", {"n": 2, "h": 2, "w": 2})),
    (("data", {"n": 8}), ("filter", {"k": 8})),
    (("data", {"n": 8}), ("channel", {"n": 2, "c": 4})),
    (("spatial", {"n": 2, "h": 2, "w": 2}), C8),
]


def _switch_id(switch):
    return "->".join(f"{alg}@" + ",".join(f"{a}{s}" for a, s in grid.items()) for alg, grid in switch)


def _inputs():
    """x, kernel 1, kernel 2 and an output cotangent (numpy's generator: no PRNG programs to compile)."""
    rng = np.random.default_rng(0)
    x, ct = (jnp.asarray(rng.standard_normal(X_SHAPE), jnp.float32) for _ in range(2))
    k1, k2 = (jnp.asarray(rng.standard_normal(K_SHAPE) / 12, jnp.float32) for _ in range(2))
    return x, k1, k2, ct


def _layer(algorithm, grid):
    """(mesh, layout, conv) of one layer."""
    mesh = jaxcnn.make_mesh(**grid)
    layout = jaxcnn.conv_layout(jaxcnn.conv_geometry(X_SHAPE, K_SHAPE), mesh=mesh, algorithm=algorithm)
    return mesh, layout, lambda x, k: jaxcnn.conv2d(x, k, mesh=mesh, algorithm=algorithm)


def _value_and_vjp(f, *args):
    """f(*args) and its VJP at the last argument (the output cotangent)."""
    *primals, ct = args
    y, vjp = jax.vjp(f, *primals)
    return y, vjp(ct)


_reference_one = jax.jit(lambda x, k, ct: _value_and_vjp(reference_conv, x, k, ct))
_reference_two = jax.jit(
    lambda x, k1, k2, ct: _value_and_vjp(
        lambda a, b, c: reference_conv(reference_conv(a, b), c), x, k1, k2, ct
    )
)


@pytest.mark.parametrize("switch", first_fast(SWITCHES, one_argument=True), ids=_switch_id)
def test_eager_kernel_laid_out_on_the_other_mesh(switch):
    """The second layer's kernel is laid out for the first layer's mesh, x is uncommitted."""
    (alg1, grid1), (alg2, grid2) = switch
    mesh1, layout1, _ = _layer(alg1, grid1)
    _, _, conv2 = _layer(alg2, grid2)
    x, k, _, ct = _inputs()
    k = jax.device_put(k, NamedSharding(mesh1, layout1.kernel_spec))
    chex.assert_trees_all_close(_value_and_vjp(conv2, x, k, ct), _reference_one(x, k, ct), **TOL)


@pytest.mark.slow
def test_eager_grad_on_one_mesh_then_another():
    """One gradient step of a layer on ``c=8``, then its gradient on ``n=2, c=4`` with the kernel the
    step left laid out on ``c=8``."""
    _, _, conv1 = _layer("channel", {"c": 8})
    _, _, conv2 = _layer("channel", {"n": 2, "c": 4})
    x, k, _, _ = _inputs()

    def loss(conv):
        return lambda a, b: jnp.sum(jnp.tanh(conv(a, b)))

    k = k - 0.1 * jax.grad(loss(conv1), argnums=1)(x, k)
    grads = jax.grad(loss(conv2), argnums=(0, 1))(x, k)
    chex.assert_trees_all_close(grads, jax.grad(loss(reference_conv), argnums=(0, 1))(x, k), **TOL)


@pytest.mark.parametrize("switch", first_fast([SWITCHES[0], SWITCHES[3]], one_argument=True), ids=_switch_id)
def test_jit_two_layers(switch):
    """Both layers in one ``jit``, every argument placed on the first layer's mesh (as a data loader
    would place a batch): forward and the gradients w.r.t. x and both kernels."""
    (alg1, grid1), (alg2, grid2) = switch
    mesh1, _, conv1 = _layer(alg1, grid1)
    _, _, conv2 = _layer(alg2, grid2)
    args = _inputs()
    placed = jax.device_put(args, NamedSharding(mesh1, PartitionSpec()))
    got = jax.jit(lambda *a: _value_and_vjp(lambda x, k1, k2: conv2(conv1(x, k1), k2), *a))(*placed)
    chex.assert_trees_all_close(got, _reference_two(*args), **TOL)


@pytest.mark.slow
def test_jit_uncommitted_loss_and_grads():
    """All arguments uncommitted (placement left to ``jit``); a loss and gradients come back."""
    _, _, conv1 = _layer(*C8)
    _, _, conv2 = _layer("channel", {"n": 2, "c": 4})
    x, k1, k2, ct = _inputs()
    got = jax.jit(lambda *args: _value_and_vjp(lambda a, b, c: jnp.vdot(conv2(conv1(a, b), c), ct), *args))(
        x, k1, k2, 1.0
    )
    y, grads = _reference_two(x, k1, k2, ct)
    chex.assert_trees_all_close(got, (jnp.vdot(y, ct), grads), **TOL)


def _same_layout(y, sharding):
    """``y`` is laid out as ``sharding`` (named on the common mesh, or on ``sharding``'s own)."""
    assert y.sharding.is_equivalent_to(sharding, y.ndim), (y.sharding, sharding)


def _two_meshes():
    """(conv on c=8, conv on n=2 c=4, their output shardings) for X_SHAPE / K_SHAPE."""
    mesh1, layout1, conv1 = _layer(*C8)
    mesh2, layout2, conv2 = _layer("channel", {"n": 2, "c": 4})
    return conv1, conv2, NamedSharding(mesh1, layout1.y_spec), NamedSharding(mesh2, layout2.y_spec)


def test_jit_uncommitted_returning_the_second_mesh_layout():
    """A ``jit`` chain with uncommitted arguments ending in a layout the first mesh cannot name."""
    conv1, conv2, _, s2 = _two_meshes()
    x, k1, k2, ct = _inputs()
    y = jax.jit(lambda a, b, c: conv2(conv1(a, b), c))(x, k1, k2)
    _same_layout(y, s2)
    assert "_u0" in y.sharding.mesh.axis_names  # named on the common mesh
    chex.assert_trees_all_close(y, _reference_two(x, k1, k2, ct)[0], **TOL)


def test_jit_uncommitted_with_out_shardings():
    conv1, conv2, _, out = _two_meshes()
    x, k, _, ct = _inputs()
    y = jax.jit(lambda a, b: conv2(conv1(a, b), b), out_shardings=out)(x, k)
    assert y.sharding == out
    chex.assert_trees_all_close(y, _reference_two(x, k, k, ct)[0], **TOL)


def test_jit_uncommitted_chain_resharded_back_to_the_first_mesh():
    conv1, conv2, s1, s2 = _two_meshes()
    x, k1, k2, ct = _inputs()
    y = jax.jit(lambda a, b, c: jaxcnn.reshard(conv2(conv1(a, b), c), to=s1, src=s2))(x, k1, k2)
    _same_layout(y, s1)
    chex.assert_trees_all_close(y, _reference_two(x, k1, k2, ct)[0], **TOL)


def test_eager_chain_moves_the_activation_between_meshes():
    """Eagerly, the first layer's concrete output (on c=8) reaches the second layer (n=2, c=4), which
    moves it with jaxcnn.redistribute (its layout is known) and returns its own layout."""
    conv1, conv2, s1, s2 = _two_meshes()
    x, k1, k2, ct = _inputs()
    y1 = conv1(x, k1)
    _same_layout(y1, s1)
    y = conv2(y1, k2)
    _same_layout(y, s2)
    chex.assert_trees_all_close(y, _reference_two(x, k1, k2, ct)[0], **TOL)


def _reference_sum(x, k1, k2):
    return reference_conv(x, k1) + reference_conv(x, k2)


@pytest.mark.parametrize("reshard", [False, True])
@pytest.mark.parametrize("mode", first_fast(["jit committed", "eager", "jit uncommitted"], one_argument=True))
def test_sum_across_meshes(mode, reshard):
    """``y1 + y2`` (or ``y1 + reshard(y2, to=y1's layout, src=y2's)``) for y1, y2 from two meshes:
    exact, eagerly and under jit; under jit the gradients w.r.t. x (a sum over both meshes) and both
    kernels too."""
    conv1, conv2, s1, s2 = _two_meshes()
    x, k1, k2, _ = _inputs()

    def f(a, b, c):
        y2 = conv2(a, c)
        return conv1(a, b) + (jaxcnn.nn.reshard(y2, to=s1, src=s2) if reshard else y2)

    args = (x, k1, k2)
    if mode == "jit committed":
        args = jax.device_put(args, NamedSharding(s1.mesh, PartitionSpec()))
    y = f(*args) if mode == "eager" else jax.jit(f)(*args)
    if reshard:
        _same_layout(y, s1)
    chex.assert_trees_all_close(y, _reference_sum(x, k1, k2), **TOL)
    if mode != "eager":

        def loss(g):
            return lambda a, b, c: jnp.sum(jnp.tanh(g(a, b, c)))

        grads = jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(*args)
        want = jax.grad(loss(_reference_sum), argnums=(0, 1, 2))(x, k1, k2)
        chex.assert_trees_all_close(grads, want, **TOL)


def test_jax_alone_raises_indivisible_error():
    """What jaxcnn.common_mesh avoids, with no jaxcnn code: two meshes over the same 8 devices."""
    devices = np.asarray(jax.devices()[:8])
    auto = (AxisType.Auto,) * 2
    a = NamedSharding(Mesh(devices.reshape(1, 8), ("n", "c"), axis_types=auto), PartitionSpec(None, "c"))
    b = NamedSharding(Mesh(devices.reshape(2, 4), ("n", "c"), axis_types=auto), PartitionSpec("n", "c"))
    x = jnp.arange(64.0).reshape(8, 8)
    message = "is incompatible with mesh_shape=.*dim_size=2 is not divisible by axis_size=8"
    with pytest.raises(IndivisibleError, match=message):
        jax.device_put(x, a) + jax.device_put(x, b)
    chain = jax.jit(lambda v: jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(v, a) * 2, b))
    with pytest.raises(IndivisibleError, match=message):
        chain(x)
    np.testing.assert_array_equal(jax.device_put(x, b) + jax.device_put(x, a), 2 * x)  # b's mesh names both
