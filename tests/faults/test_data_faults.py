"""Bad training data is a one-line ``ConfigError`` naming the file, the array or the record and what
would be valid (issue 10): ``.npz`` files (not an archive, truncated, pickled objects, wrong ranks or
dtypes, NaN/inf images, bad labels, mismatched or empty splits), image folders (an undecodable file)
and ArrayRecord datasets (sidecar, split files, and each record as it is read)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcnn.runner.config import DataConfig
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data import datasets, records
from jaxcnn.runner.data.pipeline import LocalBatches

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_line_error(fn, *args, **kwargs) -> str:
    """The message of the ``ConfigError`` ``fn(*args, **kwargs)`` raises (asserted to be one line)."""
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------- npz


def good_arrays(**changes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((8, 4, 5, 2), np.float32),
        "y_train": np.array([0, 1, 2, 3, 0, 1, 2, 3]),
        "x_test": rng.random((4, 4, 5, 2), np.float32),
        "y_test": np.array([0, 1, 2, 3]),
    }
    arrays.update(changes)
    return arrays


def write_npz(tmp_path, name="d.npz", **changes) -> str:
    path = str(tmp_path / name)
    np.savez(path, **good_arrays(**changes))
    return path


def npz_error(tmp_path, **changes) -> str:
    path = write_npz(tmp_path, **changes)
    return one_line_error(datasets.load_dataset, DataConfig(source="npz", path=path), 0)


def test_valid_npz_variants_load(tmp_path):
    d = datasets.npz(write_npz(tmp_path))
    assert d.num_classes == 4 and d.image_shape == (4, 5, 2)
    # Integer-valued float labels, (N, 1) labels, NHW images and uint8 images are all fine.
    d = datasets.npz(
        write_npz(
            tmp_path,
            y_train=np.arange(8.0) % 4,
            y_test=np.arange(4).reshape(4, 1),
            x_train=np.zeros((8, 3, 3), np.uint8),
            x_test=np.ones((4, 3, 3), np.uint8),
        )
    )
    assert d.y_train.dtype == np.int32 and d.y_test.tolist() == [0, 1, 2, 3] and d.image_shape == (3, 3, 1)


def test_npz_not_an_archive(tmp_path):
    invalid = "is not a valid .npz (x_train, y_train, x_test, y_test)"
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    message = one_line_error(datasets.npz, str(garbage))
    assert message == f"data.path: {garbage} {invalid}: not a zip archive (np.savez writes one)"
    assert "allow_pickle" not in message
    with open(write_npz(tmp_path), "rb") as f:
        whole = f.read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole[: len(whole) // 2])
    message = one_line_error(datasets.npz, str(truncated))
    assert (
        message
        == f"data.path: {truncated} {invalid}: a truncated or damaged zip archive (np.savez writes one)"
    )
    single = str(tmp_path / "single.npz")
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    assert "it is a single .npy array (np.save)" in one_line_error(datasets.npz, single)
    assert "npz file not found" in one_line_error(datasets.npz, str(tmp_path / "missing.npz"))


def test_npz_damaged_member(tmp_path):
    """A complete zip directory over damaged array bytes: the bad array's read fails, named."""
    path = write_npz(tmp_path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    start = data.index(b"\x93NUMPY", data.index(b"x_test.npy"))  # x_test's stored .npy
    data[start + 200 : start + 260] = bytes(60)  # zero some pixels: the CRC no longer matches
    with open(path, "wb") as f:
        f.write(bytes(data))
    message = one_line_error(datasets.npz, path)
    assert message.startswith(f"data.path: {path} is not a valid .npz"), message
    assert "x_test cannot be read (BadZipFile: Bad CRC-32" in message, message


def test_npz_lacks_arrays(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=np.zeros((2, 3, 3)), images=np.zeros(1))
    message = one_line_error(datasets.npz, path)
    assert "lacks arrays ['y_train', 'x_test', 'y_test']; it has ['images', 'x_train']" in message


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    y = np.empty(8, object)
    y[:] = [Payload()] * 8
    message = npz_error(tmp_path, y_train=y)
    assert "y_train holds Python objects (dtype object), which are never unpickled" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"x_train": np.zeros((8, 20))},
            "x_train has shape (8, 20) (rank 2); expected (N, H, W) or (N, H, W, C)",
        ),
        (
            {"x_test": np.zeros((4, 4, 5, 2, 1))},
            "x_test has shape (4, 4, 5, 2, 1) (rank 5); expected (N, H, W) or (N, H, W, C)",
        ),
        (
            {"x_train": np.full((8, 4, 5), "a")},
            "x_train has dtype <U1; images must be numeric (uint8, int or float arrays)",
        ),
        (
            {"x_test": np.zeros((4, 4, 5, 2), np.complex64)},
            "x_test has dtype complex64; images must be numeric",
        ),
        (
            {"x_test": np.zeros((0, 4, 5, 2), np.float32), "y_test": np.zeros(0, np.int64)},
            "x_test is empty (shape (0, 4, 5, 2)); each split needs at least one image",
        ),
        ({"x_train": np.zeros((8, 0, 5, 2))}, "x_train has shape (8, 0, 5, 2); image sizes H, W (and C)"),
        (
            {"x_test": np.zeros((4, 5, 4, 2), np.float32)},
            "x_train images are (4, 5, 2) but x_test images are (5, 4, 2) (H, W, C); both splits need the "
            "same image shape",
        ),
        (
            {"y_train": np.arange(7) % 4},
            "x_train has 8 images but y_train has 7 labels; need one label per image",
        ),
        (
            {"y_test": np.eye(4)},
            "y_test has shape (4, 4); expected (N,) integer class indices (one-hot labels: store their "
            "argmax)",
        ),
        (
            {"y_train": np.array(list("abcdabcd"))},
            "y_train has dtype <U1; labels must be integer class indices",
        ),
    ],
    ids=[
        "x-rank-2",
        "x-rank-5",
        "x-strings",
        "x-complex",
        "empty-test",
        "zero-height",
        "split-shapes",
        "length-mismatch",
        "one-hot",
        "string-labels",
    ],
)
def test_npz_bad_arrays(tmp_path, changes, expected):
    message = npz_error(tmp_path, **changes)
    assert message.startswith(f"data.path: {tmp_path / 'd.npz'}: "), message
    assert expected in message, message


def test_npz_non_finite_images(tmp_path):
    x = good_arrays()["x_train"].copy()
    x[3, 0, 0, 0] = np.nan
    x[5, 1, 2, 1] = np.inf
    x[5, 2, 2, 1] = -np.inf
    assert "x_train has 3 NaN/inf values in 2 images (first: image 3); images must be finite" in npz_error(
        tmp_path, x_train=x
    )
    x = good_arrays()["x_test"].astype(np.float16)
    x[2, 3, 4, 1] = np.inf
    assert "x_test has 1 NaN/inf values in 1 images (first: image 2)" in npz_error(tmp_path, x_test=x)


def test_npz_bad_labels(tmp_path):
    y = np.array([0, 1, -1, 3, 0, 1, 2, 3])
    assert npz_error(tmp_path, y_train=y) == (
        f"data.path: {tmp_path / 'd.npz'}: y_train has 1 label outside [0, 4): -1 (row 2); labels must be "
        "class indices 0 .. 3 (num_classes being 1 + the largest label)"
    )
    y = np.array([-1, -2, 1, -3, -4])
    message = npz_error(tmp_path, y_test=y, x_test=np.zeros((5, 4, 5, 2)))
    assert "y_test has 4 labels outside [0, 4): -1 (row 0), -2 (row 1), -3 (row 3), ...;" in message
    # Labels that do not fit int32 would wrap around silently when cast.
    y = np.array([0, 1, 2, 3, 0, 1, 2, 2**40])
    assert "y_train has 1 label outside [0, 4): 1099511627776 (row 7)" in npz_error(tmp_path, y_train=y)


def test_npz_non_integer_labels(tmp_path):
    y = np.array([0, 1, 1.5, 3, 0, 1, np.nan, 3])
    assert npz_error(tmp_path, y_train=y).endswith(
        "y_train has 2 non-integer labels: 1.5 (row 2), nan (row 6); labels must be integer class "
        "indices 0, 1, ..."
    )
    assert "y_test has 1 non-integer label: inf (row 1)" in npz_error(
        tmp_path, y_test=np.array([0, np.inf, 2, 3])
    )


# ------------------------------------------------------------------------------------------- folder


def test_folder_names_the_bad_image(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee"):
        os.makedirs(tmp_path / "imgs" / cls)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    assert datasets.folder(str(tmp_path / "imgs"), test_fraction=0.5).num_classes == 2
    bad = tmp_path / "imgs" / "bee" / "1.png"
    good = (tmp_path / "imgs" / "bee" / "2.png").read_bytes()
    bad.write_bytes(rng.bytes(200))
    message = one_line_error(datasets.folder, str(tmp_path / "imgs"), test_fraction=0.5)
    assert message.startswith(f"cannot read image {bad} (UnidentifiedImageError: cannot identify image file")
    assert message.endswith("; fix or remove the file")
    bad.write_bytes(good[: len(good) // 2])  # a truncated PNG
    message = one_line_error(datasets.folder, str(tmp_path / "imgs"), test_fraction=0.5)
    assert message.startswith(f"cannot read image {bad} ("), message


# -------------------------------------------------------------------------------------- ArrayRecord

SHAPE = (4, 5, 3)


def write_records(path: str, items) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, records.WRITER_OPTIONS)
    for item in items:
        writer.write(item if isinstance(item, bytes) else records.encode(*item))
    writer.close()


def images(n: int, shape=SHAPE) -> list:
    return [(np.full(shape, i, np.uint8), i % 3) for i in range(n)]


def write_dataset(tmp_path, train=None, test=None, **meta) -> str:
    """A 3-class ArrayRecord dataset: 6 train, 3 test records of ``SHAPE`` (``meta``: sidecar keys)."""
    name = str(tmp_path / "ds.array_record")
    paths = records.split_paths(name)
    write_records(paths["train"], images(6) if train is None else train)
    write_records(paths["test"], images(3) if test is None else test)
    records.write_meta(
        name,
        {
            "shape": list(SHAPE),
            "num_classes": 3,
            "class_names": ["a", "b", "c"],
            "mean": 2.5,
            "std": 1.7,
            "counts": {"train": 6, "test": 3},
            "files": {s: os.path.basename(paths[s]) for s in ("train", "test")},
            **meta,
        },
    )
    return name


def record_error(name: str) -> str:
    return one_line_error(datasets.load_dataset, DataConfig(source="array_record", path=name), 0)


def test_array_record_valid(tmp_path):
    d = datasets.load_dataset(DataConfig(source="array_record", path=write_dataset(tmp_path)), 0)
    x, y = d.read("train", np.array([5, 0]))
    assert x.shape == (2, *SHAPE) and x[0, 0, 0, 0] == 5 and y.tolist() == [2, 0]


def test_array_record_sidecar_faults(tmp_path):
    name = str(tmp_path / "ds.array_record")
    sidecar = name + ".json"
    assert record_error(name) == (
        f"data.path: ArrayRecord sidecar {sidecar} not found (data.path names the OUT.array_record given "
        "to jaxcnn data convert FOLDER OUT.array_record)"
    )
    assert "expected a name ending with .array_record" in record_error(str(tmp_path / "ds.npz"))
    with open(sidecar, "wb") as f:
        f.write(np.random.default_rng(0).bytes(100))
    assert record_error(name).startswith(
        f"data.path: {sidecar} is not a valid jaxcnn-image-v1 sidecar (not JSON: 'utf-8' codec can't decode"
    )
    with open(sidecar, "w") as f:
        f.write('{"format": "jaxcnn-image-v1", "shape": [4, 5')
    assert record_error(name).startswith(
        f"data.path: {sidecar} is not a valid jaxcnn-image-v1 sidecar (not JSON: "
    )
    with open(sidecar, "w") as f:
        f.write("[1, 2]")
    assert (
        record_error(name)
        == f"data.path: {sidecar} is not a jaxcnn-image-v1 sidecar (a JSON list, not an object)"
    )
    with open(sidecar, "w") as f:
        json.dump({"format": "other"}, f)
    assert record_error(name) == f"data.path: {sidecar} is not a jaxcnn-image-v1 sidecar (format 'other')"


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"shape": [4, 5]}, "shape is [4, 5]; expected [H, W, C], three positive ints"),
        ({"shape": [4, 0, 3]}, "shape is [4, 0, 3]; expected [H, W, C], three positive ints"),
        ({"num_classes": 0}, "num_classes is 0; expected a positive int"),
        ({"std": 0}, "std is 0; expected a finite number > 0"),
        ({"mean": "x"}, "mean is 'x'; expected a finite number"),
        ({"counts": {"train": 6, "test": 0}}, "counts is {'train': 6, 'test': 0}; expected"),
        ({"files": {"train": "t"}}, "files is {'train': 't'}; expected"),
        (
            {"class_names": ["a", "b"]},
            "class_names is ['a', 'b']; expected a list of num_classes = 3 strings",
        ),
    ],
    ids=["shape-rank", "shape-zero", "classes", "std", "mean", "counts", "files", "class-names"],
)
def test_array_record_bad_sidecar_values(tmp_path, meta, expected):
    name = write_dataset(tmp_path, **meta)
    message = record_error(name)
    assert message.startswith(f"data.path: {name}.json: {expected}"), message


def test_array_record_split_file_faults(tmp_path):
    name = write_dataset(tmp_path)
    paths = records.split_paths(name)
    with open(paths["train"], "rb") as f:
        good = f.read()
    os.remove(paths["test"])
    assert (
        record_error(name) == f"data.path: test split file {paths['test']} (named by {name}.json) not found"
    )
    with open(paths["test"], "wb") as f:
        f.write(np.random.default_rng(0).bytes(300))  # garbage
    assert record_error(name).startswith(
        f"data.path: {paths['test']} is not a readable ArrayRecord file (truncated or damaged? rewrite it "
        "with jaxcnn data convert): RuntimeError: "
    )
    with open(paths["test"], "wb") as f:
        f.write(good[: len(good) - 100])  # truncated
    assert record_error(name).startswith(f"data.path: {paths['test']} is not a readable ArrayRecord file")
    write_records(paths["test"], images(2))  # fewer records than the sidecar says
    assert record_error(name) == (
        f"data.path: {paths['test']} has 2 records; its sidecar says 3 (a partial or mismatched file? "
        "rewrite it with jaxcnn data convert)"
    )


def test_array_record_bad_records_fail_when_read(tmp_path):
    train = images(6)
    train[2] = (np.zeros((5, 4, 3), np.uint8), 1)  # header shape disagrees with the sidecar's
    train[4] = (np.zeros(SHAPE, np.uint8), 3)  # label out of [0, 3)
    test = [*images(2), records.encode(np.zeros(SHAPE, np.uint8), 1)[:-7]]  # cut short
    name = write_dataset(tmp_path, train=train, test=test)
    d = datasets.load_dataset(DataConfig(source="array_record", path=name), 0)  # headers are not scanned
    paths = records.split_paths(name)
    assert d.read("train", np.array([0, 1, 3, 5]))[1].tolist() == [0, 1, 0, 2]
    assert one_line_error(d.read, "train", np.array([1, 2])) == (
        f"data.path: {paths['train']}: record 2 has an image of shape (5, 4, 3); the sidecar says (4, 5, 3)"
    )
    assert one_line_error(d.read, "train", np.array([4])) == (
        f"data.path: {paths['train']}: record 4 has label 3; valid labels are in [0, 3) (num_classes)"
    )
    assert one_line_error(lambda: d.y_train[4]).endswith(
        "record 4 has label 3; valid labels are in [0, 3) (num_classes)"
    )
    assert one_line_error(d.read, "test", np.array([2])) == (
        f"data.path: {paths['test']}: record 2 is malformed: 63 bytes, but its header (H, W, C) = (4, 5, 3) "
        "needs 10 + 60"
    )
    # A damaged chunk inside a file whose index is intact fails when its records are read.
    with open(paths["test"], "r+b") as f:
        f.seek(200)
        f.write(bytes(4))
    d = datasets.load_dataset(DataConfig(source="array_record", path=name), 0)  # the index is intact
    message = one_line_error(d.read, "test", np.arange(3))
    assert message.startswith(
        f"data.path: {paths['test']}: cannot read records [0, 1, 2] (truncated or damaged? rewrite it with "
        "jaxcnn data convert): RuntimeError: Corrupted Riegeli/records file: chunk data hash mismatch"
    ), message
    # Through the grain pipeline (read threads) the error arrives unchanged.
    batches = LocalBatches(d, 6, seed=0, rows=slice(0, 6))
    with pytest.raises(ConfigError, match=r"record [24] has"):
        next(batches)
    batches.close()


# -------------------------------------------------------------------------------------------- CLI


def test_cli_bad_npz_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(np.random.default_rng(1).bytes(1000))
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "jaxcnn", "train", "configs/default.yaml", "--cpu-devices", "8"),
            *("data.source=npz", f"data.path={bad}", "train.steps=1", f"output_dir={tmp_path / 'runs'}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"jaxcnn train: config error: data.path: {bad} is not a valid .npz (x_train, y_train, x_test, "
        "y_test): not a zip archive (np.savez writes one)"
    )
