"""Data sources and the per-host global batches built from them."""

from __future__ import annotations

import numpy as np
import pytest

import jaxcnn
from jaxcnn.runner import data as data_lib
from jaxcnn.runner.config import DataConfig
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data import datasets


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    return datasets.digits(0.2, seed=0)


def test_digits_split(digits):
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.num_classes == 10 and digits.image_shape == (8, 8, 1)
    # Stratified: every class is in the test split in (nearly) its overall proportion (~36 each).
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37, counts
    assert int(digits.x_train.max()) == 16 and digits.x_train.dtype == np.uint8
    # Same seed, same split; another seed, another split.
    again = datasets.digits(0.2, seed=0)
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    assert not np.array_equal(datasets.digits(0.2, seed=1).y_test, digits.y_test)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((12, 5, 6, 2), np.float32),
        "y_train": rng.integers(0, 4, 12),
        "x_test": rng.random((4, 5, 6, 2), np.float32),
        "y_test": np.array([0, 1, 2, 3]),
    }
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    d = datasets.load_dataset(DataConfig(source="npz", path=str(path)), seed=0)
    for key, value in arrays.items():
        np.testing.assert_array_equal(getattr(d, key), value)
    assert d.num_classes == 4
    assert d.mean == pytest.approx(float(arrays["x_train"].astype(np.float64).mean()))
    np.savez(path, x_train=arrays["x_train"])
    with pytest.raises(ConfigError, match=r"lacks arrays \['y_train', 'x_test', 'y_test'\]"):
        datasets.npz(str(path))


def test_image_folder(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    expected = {}
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            img = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
            mpimg.imsave(tmp_path / "imgs" / cls / f"{i}.png", img)
            expected[(cls, i)] = img
    d = datasets.folder(str(tmp_path / "imgs"), test_fraction=0.4, seed=0)
    assert d.class_names == ("cat", "dog")
    assert d.x_train.shape == (6, 4, 6, 3) and d.x_test.shape == (4, 4, 6, 3)
    assert sorted(np.bincount(d.y_test).tolist()) == [2, 2]
    # Pixels survive the PNG round trip exactly and land with their class label.
    everything = {
        (int(y), x.tobytes()) for x, y in zip([*d.x_train, *d.x_test], [*d.y_train, *d.y_test], strict=True)
    }
    assert everything == {(("cat", "dog").index(c), img.tobytes()) for (c, _), img in expected.items()}
    resized = datasets.folder(str(tmp_path / "imgs"), image_size=(2, 3), test_fraction=0.4, seed=0)
    assert resized.x_train.shape == (6, 2, 3, 3)


def test_synthetic_is_seeded():
    a = datasets.synthetic((4, 4), 3, 5, 16, 8, seed=1)
    b = datasets.synthetic((4, 4), 3, 5, 16, 8, seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape == (16, 4, 4, 3) and a.y_train.max() < 5 and a.num_classes == 5


def test_epoch_shuffling_is_deterministic(digits):
    mesh = jaxcnn.make_mesh(n=4, k=2)
    batches = data_lib.TrainBatches(digits, 64, seed=3, mesh=mesh)
    steps = batches.steps_per_epoch
    assert steps == 1437 // 64
    epoch0 = np.concatenate([batches.indices(s) for s in range(steps)])
    epoch1 = np.concatenate([batches.indices(s) for s in range(steps, 2 * steps)])
    assert len(set(epoch0.tolist())) == steps * 64  # no repeats within an epoch
    assert not np.array_equal(epoch0, epoch1)  # reshuffled per epoch
    # What each batch holds (indices and pixels, bit for bit, against a written-out reference):
    # tests/runner/test_pipeline.py::test_batches_equal_the_epoch_permutation_reference.
    fresh = data_lib.TrainBatches(digits, 64, seed=3, mesh=mesh)  # a resumed run sees the same batch
    np.testing.assert_array_equal(fresh.indices(steps + 2), batches.indices(steps + 2))


def test_eval_batches_cover_the_test_set_once(digits):
    mesh = jaxcnn.make_mesh(n=8)
    seen, total = [], 0.0
    for images, labels, mask in data_lib.eval_batches(digits, 128, mesh):
        m = np.asarray(mask).astype(bool)
        seen.append(np.asarray(labels)[m])
        total += m.sum()
        assert np.all(np.asarray(images)[~m] == 0)
    assert total == 360
    np.testing.assert_array_equal(np.concatenate(seen), digits.y_test)
