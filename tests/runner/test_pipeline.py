"""The grain training pipeline: the epoch-permutation batches of the old per-step code, bit for bit; a
position that restores under any process or worker count; ArrayRecord files equal to the image folder
they came from; ``jaxcnn data convert``'s one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image

import jaxcnn
from jaxcnn.runner import data as data_lib
from jaxcnn.runner.config import DataConfig
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data import cli as data_cli
from jaxcnn.runner.data import datasets, records
from jaxcnn.runner.data.pipeline import LocalBatches


def reference(data: datasets.Dataset, batch_size: int, seed: int, rows: slice, step: int):
    """The pre-grain ``TrainBatches.local(step)``: epoch permutation, global batch, this process's rows."""
    steps_per_epoch = len(data.x_train) // batch_size
    epoch, i = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(len(data.x_train))
    idx = perm[i * batch_size : (i + 1) * batch_size][rows]
    x = (data.x_train[idx].astype(np.float32) - np.float32(data.mean)) / np.float32(data.std)
    return x.astype(np.float32), data.y_train[idx]


def assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    return datasets.digits(0.2, seed=0)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    """3 classes x 7 PNGs of 5x6 pixels, colour and (one per class) grey."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee", "cat"):
        os.makedirs(root / cls)
        for i in range(7):
            grey = i == 3
            pixels = rng.integers(0, 256, (5, 6) if grey else (5, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels, "L" if grey else "RGB").save(root / cls / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def converted(image_folder, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("rec") / "imgs.array_record")
    assert data_cli.main(["convert", image_folder, out, "--test-fraction", "0.3", "--seed", "1"]) == 0
    return out


def test_batches_equal_the_epoch_permutation_reference(digits):
    mesh = jaxcnn.make_mesh(n=4, k=2)
    batches = data_lib.TrainBatches(digits, 64, seed=3, mesh=mesh, start=20)
    assert batches.steps_per_epoch == 22 and batches.rows == slice(0, 64)
    for step in range(20, 26):  # across the epoch boundary (steps 22+ are epoch 1)
        assert batches.step == step
        images, labels = next(batches)
        assert images.shape == (64, 8, 8, 1) and images.sharding.spec == P("n")
        assert_same((images, labels), reference(digits, 64, 3, slice(0, 64), step))
        assert_same(batches(step), (images, labels))  # random access: the same batch
    batches.close()
    # Another process's rows of the same global batches (process 1 of 4 on an n=8 mesh).
    other = LocalBatches(digits, 64, 3, slice(16, 32), prefetch=3)
    for step in range(3):
        assert_same(next(other), reference(digits, 64, 3, slice(16, 32), step))
    with pytest.raises(ConfigError, match=r"train\.batch_size=2000 exceeds the 1437 training images"):
        LocalBatches(digits, 2000, 0, slice(0, 2000))


def test_state_round_trips_and_is_process_count_independent(digits):
    # A "2-process" run: each process reads its half of every global batch of 32.
    halves = [LocalBatches(digits, 32, 5, rows) for rows in (slice(0, 16), slice(16, 32))]
    for half in halves:
        for _ in range(50):  # into epoch 1 (44 steps per epoch)
            next(half)
    states = [json.loads(json.dumps(h.get_state())) for h in halves]
    assert states[0] == states[1] == {"step": 50, "seed": 5, "batch_size": 32, "num_records": 1437}
    # ... restored in a 1-process run (every row on this process's 8 devices).
    single = data_lib.TrainBatches(digits, 32, 5, jaxcnn.make_mesh(n=8))
    next(single)
    single.set_state(states[0])
    assert single.get_state() == states[0]
    for _ in range(3):
        step = single.step
        merged = [np.concatenate(parts) for parts in zip(*(next(h) for h in halves), strict=True)]
        images, labels = next(single)
        assert_same((images, labels), merged)
        assert_same((images, labels), reference(digits, 32, 5, slice(0, 32), step))
    single.close()
    with pytest.raises(ConfigError, match=r"batch_size=32 \(now 64\).*same seed, train\.batch_size"):
        LocalBatches(digits, 64, 5, slice(0, 64)).set_state(states[0])


def test_array_record_equals_the_image_folder(image_folder, converted):
    folder = datasets.folder(image_folder, test_fraction=0.3, seed=1)
    rec = datasets.load_dataset(DataConfig(source="array_record", path=converted), seed=123)
    with open(converted + ".json") as f:
        meta = json.load(f)
    assert meta["counts"] == {"train": 14, "test": 7} and meta["shape"] == [5, 6, 3]
    assert rec.class_names == folder.class_names == ("ant", "bee", "cat") and rec.num_classes == 3
    assert rec.image_shape == folder.image_shape and len(rec.x_train) == 14 and len(rec.y_test) == 7
    for a, b in ((rec.x_train, folder.x_train), (rec.y_train, folder.y_train), (rec.x_test, folder.x_test)):
        assert_same((a[:],), (b,))
    assert rec.mean == folder.mean  # exact integer sums, as NumPy's float64 mean
    assert rec.std == pytest.approx(folder.std, rel=1e-14) and np.float32(rec.std) == np.float32(folder.std)
    mesh = jaxcnn.make_mesh(n=2, h=2, k=2)
    a, b = (data_lib.TrainBatches(d, 6, 0, mesh) for d in (rec, folder))
    for _ in range(4):  # 2 steps per epoch: two epochs
        assert_same(next(a), next(b))
    for x, y in zip(data_lib.eval_batches(rec, 4, mesh), data_lib.eval_batches(folder, 4, mesh), strict=True):
        assert_same(x, y)
    # A FOLDER/train + FOLDER/test layout keeps its splits.
    split_out = converted.replace("imgs.array_record", "split.array_record")
    assert data_cli.main(["convert", os.path.join(image_folder, ".."), split_out]) == 2  # no class folders
    os.makedirs(os.path.join(os.path.dirname(split_out), "tt"), exist_ok=True)
    tt = os.path.join(os.path.dirname(split_out), "tt")
    os.symlink(image_folder, os.path.join(tt, "train"))
    os.symlink(image_folder, os.path.join(tt, "test"))
    assert data_cli.main(["convert", tt, split_out, "--image-size", "3", "4"]) == 0
    both = datasets.array_record(split_out)
    assert both.x_train.shape == both.x_test.shape == (21, 3, 4, 3)
    assert_same((both.y_train[:],), (both.y_test[:],))


@pytest.mark.slow
def test_workers_give_the_in_process_batches(converted):
    rec = datasets.array_record(converted)
    in_process = LocalBatches(rec, 4, 7, slice(0, 4), start=2)
    with LocalBatches(rec, 4, 7, slice(0, 4), workers=2, start=2) as workers:
        for _ in range(4):
            assert_same(next(workers), next(in_process))
        state = workers.get_state()
    assert state["step"] == 6
    in_process.set_state(state)  # a state saved with 2 workers restores with none
    assert_same(next(in_process), reference_from(rec, 4, 7, 6))


def reference_from(data, batch_size, seed, step):
    x, y = data.read("train", np.arange(len(data.x_train)))
    arrays = datasets.Dataset(x, y, x[:1], y[:1], data.num_classes, data.mean, data.std)
    return reference(arrays, batch_size, seed, slice(0, batch_size), step)


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", "{tmp}/missing", "{tmp}/o.array_record"], "image folder not found"),
        (["convert", "{imgs}", "{tmp}/o.npz"], "expected a name ending with .array_record"),
        (["convert", "{imgs}", "{tmp}/o.array_record", "--image-size", "0", "4"], "two positive sizes"),
        (["convert", "{imgs}", "{tmp}/o.array_record", "--image-size", "a", "4"], "invalid int value"),
        (["convert", "{imgs}", "{tmp}/o.array_record", "--test-fraction", "1.5"], "must be in (0, 1)"),
        (["convert", "{imgs}", "{tmp}/o.array_record", "--test-fraction", "0.01"], "cannot split"),
        (["convert"], "the following arguments are required"),
    ],
)
def test_convert_errors_are_one_line(args, message, image_folder, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, imgs=image_folder) for a in args]
    assert data_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn data: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_convert_cli_mixed_sizes_without_resize(tmp_path):
    for cls, size in (("a", (4, 4)), ("b", (5, 4))):
        os.makedirs(tmp_path / "imgs" / cls)
        for i in range(3):
            Image.fromarray(np.zeros(size, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = str(tmp_path / "o.array_record")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxcnn",
            "data",
            "convert",
            str(tmp_path / "imgs"),
            out,
            "--test-fraction",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "different sizes" in run.stderr and "--image-size H W" in run.stderr
    with pytest.raises(ConfigError, match=r"data\.path: .*o\.array_record\.json"):
        datasets.load_dataset(DataConfig(source="array_record", path=out), seed=0)
    with pytest.raises(ValueError, match=r"ending with \.array_record"):
        records.split_paths("o.npz")
