"""A stratified train/test split: scikit-learn's ``train_test_split(..., stratify=labels)``, index for
index, without importing scikit-learn.

Every run on the digits data (and every ``folder`` source without ``train/`` and ``test/``) splits its
labels once. Importing ``sklearn.model_selection`` for it took 1.2 s of a 16 s ``jaxcnn train`` on this
repository's 2-core machine, more than the split, the data and the step compile's cache hits together.
This module repeats scikit-learn 1.x's ``StratifiedShuffleSplit`` (``_approximate_mode`` and the
per-class permutations, drawn from ``numpy.random.RandomState(seed)`` in the same order), so the rows in
each split are the ones scikit-learn picks; ``tests/runner/test_split.py`` checks that against
scikit-learn itself over random labels, fractions and seeds, errors included.
"""

from __future__ import annotations

import math

import numpy as np


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per class, how many of ``n_draws`` rows to draw: the floor of each class's share, then one more
    for the classes with the largest remainders (ties broken at random)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: ``ceil(test_fraction * N)`` test rows with each class in proportion,
    shuffled by ``seed``.

    Raises:
      ValueError: ``test_fraction`` outside (0, 1), an empty train split, a class with one row, or fewer
        train or test rows than classes (scikit-learn's conditions, in its words).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_size={test_fraction} should be a float in the (0, 1) range")
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(
            f"With n_samples={n}, test_size={test_fraction}, the resulting train set will be empty"
        )
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError(
            "The least populated classes in y have only 1 member, which is too few: "
            f"{classes[class_counts < 2].tolist()}"
        )
    if n_train < len(classes):
        raise ValueError(
            f"The train_size = {n_train} should be at least the number of classes = {len(classes)}"
        )
    if n_test < len(classes):
        raise ValueError(
            f"The test_size = {n_test} should be at least the number of classes = {len(classes)}"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        rows = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)
