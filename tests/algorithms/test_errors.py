"""Bad input raises a clear error that names the offending value and what would be valid."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn

X = jnp.zeros((2, 8, 8, 4))
K = jnp.zeros((3, 3, 4, 4))


@pytest.fixture(scope="module")
def mesh():
    return jaxcnn.make_mesh(n=2, k=2, c=2)


@pytest.mark.parametrize(
    ("x", "kernel", "kwargs", "error", "match"),
    [
        (
            jnp.zeros((8, 8, 4)),
            K,
            {},
            ValueError,
            r"x must have rank 4 \(N, H, W, C\), got shape \(8, 8, 4\)",
        ),
        (X, jnp.zeros((3, 3, 4)), {}, ValueError, r"kernel must have rank 4"),
        (X, jnp.zeros((3, 3, 5, 4)), {}, ValueError, r"kernel input channels 5 .* must equal x channels 4"),
        (X, K, {"algorithm": "4d"}, ValueError, r"unknown algorithm '4d'; valid algorithms are \('data'"),
        (X, K, {"strides": 0}, ValueError, r"strides must be positive ints, got 0"),
        (X, K, {"dilation": (1, -2)}, ValueError, r"dilation must be positive ints, got \(1, -2\)"),
        (X, K, {"padding": "FULL"}, ValueError, r"padding must be 'SAME', 'VALID' or .*got 'FULL'"),
        (X, K, {"padding": ((1, -1), (0, 0))}, ValueError, r"non-negative ints"),
        (X, jnp.zeros((9, 3, 4, 4)), {"padding": "VALID"}, ValueError, r"output H would be 0"),
        (np.zeros((2, 8, 8, 4), np.int32), K, {}, TypeError, r"x must have a floating dtype.*int32"),
        ([[1.0]], K, {}, TypeError, r"x must be an array"),
    ],
)
def test_bad_arguments(mesh, x, kernel, kwargs, error, match):
    kwargs = {"algorithm": "3d", **kwargs}
    with pytest.raises(error, match=match):
        jaxcnn.conv2d(x, kernel, mesh=mesh, **kwargs)


@pytest.mark.parametrize(
    ("algorithm", "grid", "axis"),
    [
        ("data", {"n": 2, "h": 2}, "h"),
        ("spatial", {"k": 2}, "k"),
        ("filter", {"n": 2, "c": 2}, "c"),
        ("channel", {"w": 2, "k": 2}, "k"),
        ("2d", {"k": 2, "c": 2}, "c"),
    ],
)
def test_unused_mesh_axis_is_named(algorithm, grid, axis):
    mesh = jaxcnn.make_mesh(**grid)
    with pytest.raises(
        ValueError, match=rf"algorithm '{algorithm}' does not use mesh axis '{axis}' \(size 2\)"
    ):
        jaxcnn.conv2d(X, K, mesh=mesh, algorithm=algorithm)


def test_mesh_bigger_than_device_count():
    with pytest.raises(ValueError, match=r"needs 16 devices but only 8 are available"):
        jaxcnn.make_mesh(n=4, k=4)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_mesh_sizes_must_be_positive_ints(size):
    with pytest.raises(ValueError, match=r"mesh axis 'k' must be a positive int"):
        jaxcnn.make_mesh(k=size)


def test_foreign_mesh_axes_and_non_mesh():
    import jax
    from jax.sharding import Mesh

    foreign = Mesh(np.array(jax.devices()[:2]), ("batch",))
    with pytest.raises(ValueError, match=r"axes \['batch'\] that jaxcnn does not know"):
        jaxcnn.conv2d(X, K, mesh=foreign, algorithm="data")
    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh"):
        jaxcnn.conv2d(X, K, mesh="n=2", algorithm="data")


def test_algorithm_list():
    assert jaxcnn.ALGORITHMS == ("data", "spatial", "filter", "channel", "2d", "2.5d", "3d")
