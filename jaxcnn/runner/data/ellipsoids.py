"""``data.source: ellipsoids``: a generated 2-D / 3-D segmentation task (noisy volumes, ellipsoid masks).

Each image (2-D) or volume (3-D) of side ``size`` is Gaussian background noise of standard deviation
``noise_std`` plus ``k`` ellipses / ellipsoids (``k`` uniform in ``[num_min, num_max]``) of random
centre (inside the volume), radii (uniform in ``[size/8, size/4]``) and orientation (a uniformly random
rotation), each adding an intensity offset uniform in ``[0.75, 1.25]`` inside it. The label of a voxel is
1 inside any ellipsoid and 0 outside (binary foreground; ``num_classes`` is 2). Everything is fixed by
``seed``: the train and test splits draw from ``numpy.random.default_rng([seed, split])``, so the test
volumes are held out (never the training ones) and the same on every host.

Arrays: images ``(N, *spatial, 1)`` float32, labels ``(N, *spatial)`` int32 (one class id per voxel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Radii are drawn from this fraction range of the side length.
RADIUS_RANGE = (1 / 8, 1 / 4)
#: Each ellipsoid adds an intensity offset from this range.
INTENSITY_RANGE = (0.75, 1.25)


def _rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed, determinant +1)."""
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def ellipsoid_volumes(
    num: int,
    shape: Sequence[int],
    num_ellipsoids: tuple[int, int],
    noise_std: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` noisy volumes of ``shape`` (2 or 3 sides) and their binary ellipsoid masks.

    Returns:
      ``(x, y)``: ``(num, *shape, 1)`` float32 intensities and ``(num, *shape)`` int32 labels (0/1).

    Raises:
      ValueError: ``shape`` is not 2 or 3 positive sides, or the ellipsoid range is not
        ``1 <= min <= max``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"ellipsoid volumes are 2-D or 3-D with positive sides, got shape {shape}")
    low, high = num_ellipsoids
    if not 1 <= low <= high:
        raise ValueError(f"num_ellipsoids must be [min, max] with 1 <= min <= max, got {[low, high]}")
    dims = len(shape)
    side = np.asarray(shape, np.float64)
    grid = np.stack(np.meshgrid(*(np.arange(s) + 0.5 for s in shape), indexing="ij"), -1)  # (*shape, d)
    x = rng.normal(0.0, noise_std, (num, *shape)).astype(np.float32)
    y = np.zeros((num, *shape), np.int32)
    for i in range(num):
        for _ in range(rng.integers(low, high + 1)):
            radii = rng.uniform(*RADIUS_RANGE, dims) * side
            center = rng.uniform(radii, side - radii)
            rot = _rotation(rng, dims)
            local = (grid - center) @ rot  # coordinates along the ellipsoid's axes
            inside = np.sum((local / radii) ** 2, axis=-1) <= 1.0
            x[i][inside] += np.float32(rng.uniform(*INTENSITY_RANGE))
            y[i][inside] = 1
    return x[..., None], y


def ellipsoids(
    image_size: Sequence[int],
    num_ellipsoids: tuple[int, int],
    noise_std: float,
    num_train: int,
    num_test: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test splits of the ellipsoid task (see the module docstring), fixed by ``seed``.

    Returns:
      ``(x_train, y_train, x_test, y_test)``.
    """
    train = ellipsoid_volumes(
        num_train, image_size, num_ellipsoids, noise_std, np.random.default_rng([seed, 0])
    )
    test = ellipsoid_volumes(
        num_test, image_size, num_ellipsoids, noise_std, np.random.default_rng([seed, 1])
    )
    return (*train, *test)
