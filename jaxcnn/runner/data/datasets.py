"""Image sources: scikit-learn digits, synthetic, ``.npz`` files, image folders, ArrayRecord files, and
the generated segmentation task ``ellipsoids`` (:mod:`jaxcnn.runner.data.ellipsoids`).

Every source returns a :class:`Dataset`: NHWC images (any numeric dtype; normalised per batch by
:mod:`jaxcnn.runner.data.pipeline` with the training set's mean and standard deviation) and int32 labels,
read by row index (:meth:`Dataset.read`); ``ellipsoids`` has ``(N, *spatial, 1)`` volumes and one label
per voxel, ``(N, *spatial)`` (:attr:`Dataset.task` is ``"segmentation"``). The first four are host
NumPy arrays every process loads whole (they are small, or synthetic); ``array_record``
(:mod:`jaxcnn.runner.data.records`, written by ``jaxcnn data convert``) stays on disk, and each process reads
only the rows of each global batch it holds.

Bad data is a one-line :class:`~jaxcnn.runner.config.typed.ConfigError` naming the file, the array or the
record and what would be valid, never a silent wrong answer: an ``.npz`` is read without unpickling
(``allow_pickle=False``) and its arrays checked whole (it is loaded whole anyway): ranks, numeric
dtypes, finite images, matching lengths, non-empty splits, integer labels in ``[0, num_classes)``
(``num_classes`` is 1 + the largest label). Folder images name the file that cannot be decoded.
ArrayRecord files are checked cheaply: the sidecar's keys at load, each split file's index when it is
opened (at load), and each record's header and label as it is read (:mod:`jaxcnn.runner.data.records`).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import os
import zipfile
import zlib
from typing import Literal

import numpy as np

from jaxcnn.runner.config import DataConfig
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data import records
from jaxcnn.runner.data.ellipsoids import ellipsoids
from jaxcnn.runner.data.split import stratified_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits.

    Attributes:
      x_train: ``(N, H, W, C)`` images: a NumPy array, or for ``array_record`` a
        :class:`~jaxcnn.runner.data.records.RecordColumn` (``len``, ``shape``, indexing; read from disk).
      y_train: ``(N,)`` int32 labels in ``[0, num_classes)`` (array or record column, like ``x_train``).
      x_test: ``(M, H, W, C)`` images.
      y_test: ``(M,)`` int32 labels.
      num_classes: number of classes.
      mean: mean of ``x_train`` (scalar), subtracted per batch.
      std: standard deviation of ``x_train`` (scalar), divided per batch.
      class_names: one name per class (folder names; digits ``"0".."9"``).
      task: ``"classification"`` (one label per image) or ``"segmentation"`` (one label per voxel: labels
        ``(N, *spatial)``, images ``(N, *spatial, C)``).
    """

    x_train: np.ndarray | records.RecordColumn
    y_train: np.ndarray | records.RecordColumn
    x_test: np.ndarray | records.RecordColumn
    y_test: np.ndarray | records.RecordColumn
    num_classes: int
    mean: float
    std: float
    class_names: tuple[str, ...] = ()
    task: Literal["classification", "segmentation"] = "classification"

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` (``(D, H, W, C)`` for 3-D volumes)."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def read(self, split: Literal["train", "test"], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and int32 labels of rows ``idx`` of ``split`` (one read per record for ArrayRecord)."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        if isinstance(x, records.RecordColumn):
            return x.split.read(idx)
        return x[idx], y[idx]


def _make(x_train, y_train, x_test, y_test, num_classes=None, class_names=()) -> Dataset:
    x_train, x_test = (x if x.ndim == 4 else x[..., None] for x in (np.asarray(x_train), np.asarray(x_test)))
    y_train, y_test = (np.asarray(y).astype(np.int32).reshape(-1) for y in (y_train, y_test))
    if x_train.shape[1:] != x_test.shape[1:] or len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(
            f"inconsistent dataset: x_train {x_train.shape}, y_train {y_train.shape}, "
            f"x_test {x_test.shape}, y_test {y_test.shape}"
        )
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    x64 = x_train.astype(np.float64)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        int(num_classes),
        float(x64.mean()),
        float(x64.std()) or 1.0,
        tuple(class_names),
    )


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    train, test = stratified_split(y, test_fraction, seed)
    return x[train], x[test], y[train], y[test]


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled ``digits.csv.gz`` (64 pixel columns and a label per row), read the way its
    ``load_digits`` reads it, without importing scikit-learn (1.2 s)."""
    try:
        path = importlib.metadata.distribution("scikit-learn").locate_file(
            "sklearn/datasets/data/digits.csv.gz"
        )
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data.source: digits needs scikit-learn (pip install scikit-learn)") from None
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), a stratified split fixed by ``seed``."""
    images, target = _bundled_digits()
    x = images.astype(np.uint8)[..., None]  # values 0..16
    x_tr, x_te, y_tr, y_te = _split(x, target, test_fraction, seed)
    return _make(x_tr, y_tr, x_te, y_te, 10, tuple(str(i) for i in range(10)))


def synthetic(
    image_size: tuple[int, int], channels: int, num_classes: int, num_train: int, num_test: int, seed: int = 0
) -> Dataset:
    """Random uint8 images and labels (for throughput benchmarks; nothing to learn)."""
    rng = np.random.default_rng(seed)
    h, w = image_size

    def images(n):
        return rng.integers(0, 256, size=(n, h, w, channels), dtype=np.uint8)

    return _make(
        images(num_train),
        rng.integers(0, num_classes, num_train),
        images(num_test),
        rng.integers(0, num_classes, num_test),
        num_classes,
    )


def ellipsoid_segmentation(
    image_size: tuple[int, ...],
    num_ellipsoids: tuple[int, int],
    noise_std: float,
    num_train: int,
    num_test: int,
    seed: int = 0,
) -> Dataset:
    """The generated segmentation task of :mod:`.ellipsoids` (2-D or 3-D by ``image_size``)."""
    x_tr, y_tr, x_te, y_te = ellipsoids(image_size, num_ellipsoids, noise_std, num_train, num_test, seed)
    x64 = x_tr.astype(np.float64)
    return Dataset(
        x_tr, y_tr, x_te, y_te, 2, float(x64.mean()), float(x64.std()) or 1.0, ("background", "ellipsoid"),
        task="segmentation",
    )  # fmt: skip


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_INT32_MAX = int(np.iinfo(np.int32).max)


def _examples(values: np.ndarray, rows: np.ndarray, n: int = 3) -> str:
    """``"-1 (row 3), 12 (row 7), ..."``: the first ``n`` of ``values`` at ``rows``."""
    shown = ", ".join(f"{v.item()!r} (row {int(r)})" for v, r in zip(values[:n], rows[:n], strict=True))
    return shown + (", ..." if len(rows) > n else "")


def _check_images(where: str, name: str, x: np.ndarray) -> None:
    """Raises :class:`ConfigError` unless ``x`` is a non-empty, finite, numeric NHW or NHWC array."""
    if x.dtype.kind not in "biuf":
        raise ConfigError(
            f"{where}: {name} has dtype {x.dtype}; images must be numeric (uint8, int or float arrays)"
        )
    if x.ndim not in (3, 4):
        raise ConfigError(
            f"{where}: {name} has shape {x.shape} (rank {x.ndim}); expected (N, H, W) or (N, H, W, C)"
        )
    if len(x) == 0:
        raise ConfigError(f"{where}: {name} is empty (shape {x.shape}); each split needs at least one image")
    if 0 in x.shape[1:]:
        raise ConfigError(f"{where}: {name} has shape {x.shape}; image sizes H, W (and C) must be positive")
    # A NaN or inf anywhere makes the float64 sum non-finite: one pass, no mask, unless there is one.
    with np.errstate(invalid="ignore", over="ignore"):
        finite = x.dtype.kind != "f" or np.isfinite(x.sum(dtype=np.float64))
    if not finite:
        bad = ~np.isfinite(x.reshape(len(x), -1))
        images = np.flatnonzero(bad.any(axis=1))
        raise ConfigError(
            f"{where}: {name} has {int(bad.sum())} NaN/inf values in {len(images)} images (first: image "
            f"{int(images[0])}); images must be finite"
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _check_labels(where: str, name: str, y: np.ndarray, num_images: int) -> np.ndarray:
    """``y`` as ``(N,)`` after checking it: ``(N,)`` or ``(N, 1)`` integer-valued numbers, one per image
    (``num_images``); the range is :func:`_check_label_range`'s."""
    if y.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: {name} has dtype {y.dtype}; labels must be integer class indices")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise ConfigError(
            f"{where}: {name} has shape {y.shape}; expected (N,) integer class indices (one-hot labels: "
            "store their argmax)"
        )
    y = y.reshape(-1)
    if len(y) != num_images:
        x_name = "x" + name[1:]
        raise ConfigError(
            f"{where}: {x_name} has {num_images} images but {name} has {len(y)} labels; "
            "need one label per image"
        )
    if y.dtype.kind == "f":
        rows = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(rows):
            raise ConfigError(
                f"{where}: {name} has {_plural(len(rows), 'non-integer label')}: {_examples(y[rows], rows)}; "
                "labels must be integer class indices 0, 1, ..."
            )
    return y


def _check_label_range(where: str, labels: dict[str, np.ndarray], num_classes: int | None = None) -> int:
    """``num_classes`` (default: 1 + the largest label below ``2**31``) after checking that every label
    of every split (``{"y_train": y, ...}``) is in ``[0, num_classes)``."""
    if num_classes is None:
        ok = [y[(y >= 0) & (y <= _INT32_MAX)] for y in labels.values()]
        num_classes = 1 + max((int(y.max()) for y in ok if len(y)), default=0)
        rule = "num_classes being 1 + the largest label"
    else:
        rule = "num_classes"
    for name, y in labels.items():
        rows = np.flatnonzero((y < 0) | (y >= num_classes))
        if len(rows):
            raise ConfigError(
                f"{where}: {name} has {_plural(len(rows), 'label')} outside [0, {num_classes}): "
                f"{_examples(y[rows], rows)}; labels must be class indices 0 .. {num_classes - 1} ({rule})"
            )
    return num_classes


def _load_npz_arrays(path: str) -> dict[str, np.ndarray]:
    """The four arrays of the ``.npz`` file ``path``, read without unpickling anything."""
    invalid = f"data.path: {path} is not a valid .npz (x_train, y_train, x_test, y_test)"
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ConfigError(f"{invalid}: it is a single .npy array (np.save); write the four with np.savez")
    if not zipfile.is_zipfile(path):
        what = "a truncated or damaged zip archive" if magic[:2] == b"PK" else "not a zip archive"
        raise ConfigError(f"{invalid}: {what} (np.savez writes one)")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{invalid}: {type(e).__name__}: {' '.join(str(e).split())}") from None
    with f:
        missing = [k for k in NPZ_KEYS if k not in f]
        if missing:
            raise ConfigError(
                f"data.path: {path} lacks arrays {missing}; it has {sorted(f.keys())} (a valid .npz has "
                "x_train, y_train, x_test, y_test)"
            )
        arrays = {}
        for key in NPZ_KEYS:
            try:
                arrays[key] = f[key]
            except ValueError as e:
                if "allow_pickle" in str(e):  # an object array: never unpickled
                    raise ConfigError(
                        f"{invalid}: {key} holds Python objects (dtype object), which are never unpickled; "
                        "save numeric arrays"
                    ) from None
                raise ConfigError(f"{invalid}: {key}: {' '.join(str(e).split())}") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
                raise ConfigError(
                    f"{invalid}: {key} cannot be read ({type(e).__name__}: {' '.join(str(e).split())})"
                ) from None
    return arrays


def npz(path: str) -> Dataset:
    """Arrays ``x_train, y_train, x_test, y_test`` from an ``.npz`` file (x as NHW or NHWC).

    Nothing is unpickled (``allow_pickle=False``). ``num_classes`` is 1 + the largest label.

    Raises:
      ConfigError: the file is missing, not an ``.npz``, lacks an array, or an array is invalid: x not
        numeric NHW / NHWC, empty, with NaN/inf, or of other image sizes in train and test; y not one
        integer-valued label in ``[0, 2**31)`` per image.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"data.path: npz file not found: {path}")
    a = _load_npz_arrays(path)
    where = f"data.path: {path}"
    for key in ("x_train", "x_test"):
        _check_images(where, key, a[key])
    y_train = _check_labels(where, "y_train", a["y_train"], len(a["x_train"]))
    y_test = _check_labels(where, "y_test", a["y_test"], len(a["x_test"]))
    x_train, x_test = (x if x.ndim == 4 else x[..., None] for x in (a["x_train"], a["x_test"]))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            f"{where}: x_train images are {x_train.shape[1:]} but x_test images are {x_test.shape[1:]} "
            "(H, W, C); both splits need the same image shape"
        )
    num_classes = _check_label_range(where, {"y_train": y_train, "y_test": y_test})
    return _make(x_train, y_train, x_test, y_test, num_classes)


def read_image(path: str, size: tuple[int, ...]) -> np.ndarray:
    """One image as uint8 ``(H, W, C)``, ``C`` 1 (grey) or 3 (colour), resized (bilinear) to ``size``
    ``(H, W)`` unless it is ``()``; Pillow if installed (any format, resizing), else matplotlib (PNG).

    Raises:
      ConfigError: the file cannot be read or decoded (naming it).
    """
    try:
        return _read_image(path, size)
    except ConfigError:
        raise
    except Exception as e:  # any decoder failure on a bad file: name the file
        text = " ".join(str(e).split())
        raise ConfigError(
            f"cannot read image {path} ({type(e).__name__}{': ' + text if text else ''}); "
            "fix or remove the file"
        ) from None


def _read_image(path: str, size: tuple[int, ...]) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        Image = None
    if Image is not None:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB")
            if size:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    else:  # pragma: no cover
        import matplotlib.image as mpimg

        if size:
            raise ConfigError("data.image_size: resizing folder images needs Pillow")
        a = mpimg.imread(path)
        a = (a * 255).round().astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)
        if a.ndim == 3:
            a = a[..., :3]
    return a[..., None] if a.ndim == 2 else a


def list_folder(root: str, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """The image files under ``root/<class>/`` (classes and files sorted by name), their int32 labels
    (indices into ``classes``) and the class names (default: ``root``'s sorted subfolders).

    Raises:
      ConfigError: no class subfolders, a class folder is missing, or no images.
    """
    if classes is None:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ConfigError(f"data.path: {root} has no class subfolders (expected {root}/<class>/*.png)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise ConfigError(f"data.path: {root} lacks the class folder {name!r}")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise ConfigError(f"data.path: no {IMAGE_EXTENSIONS} images under {root}")
    return paths, np.asarray(labels, np.int32), classes


def _read_folder(root: str, size: tuple[int, ...], classes: list[str] | None = None):
    paths, labels, classes = list_folder(root, classes)
    images = [read_image(p, size) for p in paths]
    channels = max(a.shape[-1] for a in images)
    images = [np.repeat(a, channels, -1) if a.shape[-1] != channels else a for a in images]
    shapes = sorted({a.shape for a in images})
    if len(shapes) > 1:
        raise ConfigError(
            f"data.path: images under {root} have different sizes {shapes[:3]}...; "
            "set data.image_size: [H, W] to resize them"
        )
    return np.stack(images), labels, classes


def folder(path: str, image_size: tuple[int, ...] = (), test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Images in ``path/<class>/*.{png,jpg,jpeg}``; classes are the sorted subfolder names.

    If ``path/train`` and ``path/test`` exist they are the splits (each with the same class folders);
    otherwise a stratified ``test_fraction`` split fixed by ``seed`` is held out.
    """
    if not os.path.isdir(path):
        raise ConfigError(f"data.path: image folder not found: {path}")
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        x_tr, y_tr, classes = _read_folder(train_dir, image_size)
        x_te, y_te, _ = _read_folder(test_dir, image_size, classes)
    else:
        x, y, classes = _read_folder(path, image_size)
        x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed)
    return _make(x_tr, y_tr, x_te, y_te, len(classes), classes)


def array_record(path: str) -> Dataset:
    """The ArrayRecord dataset named ``path`` (``OUT.array_record``, see :mod:`jaxcnn.runner.data.records`).

    Reads only the JSON sidecar and the split files' indexes: images and labels stay on disk, read by
    row (:meth:`Dataset.read`), each record's header and label checked as it is read.

    Raises:
      ConfigError: the name, the sidecar or a split file is wrong, missing, truncated or damaged.
    """
    try:
        meta = records.read_meta(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.path: {e}") from None
    shape, num_classes = tuple(meta["shape"]), int(meta["num_classes"])
    train, test = (
        records.RecordSplit(meta["files"][s], shape, meta["counts"][s], num_classes)
        for s in ("train", "test")
    )
    for split in (train, test):
        split.check()  # opens the file: reads its index, not its records
    return Dataset(
        records.RecordColumn(train, labels=False),
        records.RecordColumn(train, labels=True),
        records.RecordColumn(test, labels=False),
        records.RecordColumn(test, labels=True),
        int(meta["num_classes"]),
        float(meta["mean"]),
        float(meta["std"]),
        tuple(meta.get("class_names", ())),
    )


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """The dataset ``cfg`` describes (split and synthetic contents fixed by ``seed``)."""
    if cfg.source == "digits":
        return digits(cfg.test_fraction, seed)
    if cfg.source == "synthetic":
        return synthetic(cfg.image_size, cfg.channels, cfg.num_classes, cfg.num_train, cfg.num_test, seed)
    if cfg.source == "ellipsoids":
        return ellipsoid_segmentation(
            cfg.image_size, cfg.num_ellipsoids, cfg.noise_std, cfg.num_train, cfg.num_test, seed
        )
    if cfg.source == "npz":
        return npz(cfg.path)
    if cfg.source == "array_record":
        return array_record(cfg.path)
    return folder(cfg.path, cfg.image_size, cfg.test_fraction, seed)


def image_spec(cfg: DataConfig, seed: int) -> tuple[tuple[int, ...], int]:
    """``((H, W, C), num_classes)`` of the dataset (``(D, H, W, C)`` for 3-D volumes), without loading
    digits, synthetic or ellipsoid data."""
    if cfg.source == "digits":
        return (8, 8, 1), 10
    if cfg.source == "synthetic":
        return (*cfg.image_size, cfg.channels), cfg.num_classes  # type: ignore[return-value]
    if cfg.source == "ellipsoids":
        return (*cfg.image_size, 1), 2
    data = load_dataset(cfg, seed)
    return data.image_shape, data.num_classes
