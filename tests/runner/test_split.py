"""The stratified split and the digits data, read without scikit-learn, equal scikit-learn's own."""

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxcnn.runner.data import datasets
from jaxcnn.runner.data.split import stratified_split


def _sklearn(labels: np.ndarray, test_fraction: float, seed: int):
    rows = np.arange(len(labels))
    train, test, _, _ = train_test_split(
        rows, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return train, test


@given(
    st.lists(st.integers(0, 6), min_size=2, max_size=80),
    st.floats(0.02, 0.9),
    st.integers(0, 2**31 - 1),
)
def test_split_equals_scikit_learns_rows_and_errors(labels, test_fraction, seed):
    labels = np.asarray(labels)
    try:
        want = _sklearn(labels, test_fraction, seed)
    except ValueError:
        with pytest.raises(ValueError):
            stratified_split(labels, test_fraction, seed)
        return
    got = stratified_split(labels, test_fraction, seed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_digits_equal_scikit_learns_load_and_split(seed):
    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=0.2, random_state=seed, stratify=d.target
    )
    got = datasets.digits(0.2, seed)
    for g, w in ((got.x_train, x_tr), (got.x_test, x_te), (got.y_train, y_tr), (got.y_test, y_te)):
        np.testing.assert_array_equal(g, w)


def test_a_class_with_one_row_is_named():
    with pytest.raises(ValueError, match=r"only 1 member.*\[3\]"):
        stratified_split(np.array([0, 0, 1, 1, 3]), 0.4, 0)


def test_loading_digits_does_not_import_scikit_learn(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "sklearn"] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them raises ImportError
    assert datasets.digits(0.2, 0).x_train.shape == (1437, 8, 8, 1)
