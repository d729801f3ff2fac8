"""Image sources: scikit-learn digits, synthetic, ``.npz`` files, image folders and ArrayRecord files.

Every source returns a :class:`Dataset`: NHWC images (any numeric dtype; normalised per batch by
:mod:`jaxcnn.runner.pipeline` with the training set's mean and standard deviation) and int32 labels,
read by row index (:meth:`Dataset.read`). The first four are host NumPy arrays every process loads
whole (they are small, or synthetic); ``array_record`` (:mod:`jaxcnn.runner.records`, written by
``jaxcnn data convert``) stays on disk, and each process reads only the rows of each global batch it
holds.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import numpy as np

from jaxcnn.runner import records
from jaxcnn.runner.config import DataConfig
from jaxcnn.runner.typed import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits.

    Attributes:
      x_train: ``(N, H, W, C)`` images: a NumPy array, or for ``array_record`` a
        :class:`~jaxcnn.runner.records.RecordColumn` (``len``, ``shape``, indexing; read from disk).
      y_train: ``(N,)`` int32 labels in ``[0, num_classes)`` (array or record column, like ``x_train``).
      x_test: ``(M, H, W, C)`` images.
      y_test: ``(M,)`` int32 labels.
      num_classes: number of classes.
      mean: mean of ``x_train`` (scalar), subtracted per batch.
      std: standard deviation of ``x_train`` (scalar), divided per batch.
      class_names: one name per class (folder names; digits ``"0".."9"``).
    """

    x_train: np.ndarray | records.RecordColumn
    y_train: np.ndarray | records.RecordColumn
    x_test: np.ndarray | records.RecordColumn
    y_test: np.ndarray | records.RecordColumn
    num_classes: int
    mean: float
    std: float
    class_names: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
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
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), a stratified split fixed by ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]  # values 0..16
    x_tr, x_te, y_tr, y_te = _split(x, d.target, test_fraction, seed)
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


def npz(path: str) -> Dataset:
    """Arrays ``x_train, y_train, x_test, y_test`` from an ``.npz`` file (x as NHW or NHWC)."""
    if not os.path.isfile(path):
        raise ConfigError(f"data.path: npz file not found: {path}")
    with np.load(path) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise ConfigError(f"data.path: {path} lacks arrays {missing}; it has {sorted(f.keys())}")
        return _make(f["x_train"], f["y_train"], f["x_test"], f["y_test"])


def read_image(path: str, size: tuple[int, ...]) -> np.ndarray:
    """One image as uint8 ``(H, W, C)``, ``C`` 1 (grey) or 3 (colour), resized (bilinear) to ``size``
    ``(H, W)`` unless it is ``()``; Pillow if installed (any format, resizing), else matplotlib (PNG)."""
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


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of a stratified ``test_fraction`` split fixed by ``seed`` (the rows,
    in order, that :func:`digits` and :func:`folder` put in each split)."""
    train, test, _, _ = _split(np.arange(len(labels)), labels, test_fraction, seed)
    return train, test


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
    """The ArrayRecord dataset named ``path`` (``OUT.array_record``, see :mod:`jaxcnn.runner.records`).

    Reads only the JSON sidecar: images and labels stay on disk, read by row (:meth:`Dataset.read`).

    Raises:
      ConfigError: the name, the sidecar or a split file is wrong or missing.
    """
    try:
        meta = records.read_meta(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.path: {e}") from None
    shape = tuple(meta["shape"])
    train, test = (records.RecordSplit(meta["files"][s], shape, meta["counts"][s]) for s in ("train", "test"))
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
    if cfg.source == "npz":
        return npz(cfg.path)
    if cfg.source == "array_record":
        return array_record(cfg.path)
    return folder(cfg.path, cfg.image_size, cfg.test_fraction, seed)


def image_spec(cfg: DataConfig, seed: int) -> tuple[tuple[int, int, int], int]:
    """``((H, W, C), num_classes)`` of the dataset, without loading digits or synthetic data."""
    if cfg.source == "digits":
        return (8, 8, 1), 10
    if cfg.source == "synthetic":
        return (*cfg.image_size, cfg.channels), cfg.num_classes  # type: ignore[return-value]
    data = load_dataset(cfg, seed)
    return data.image_shape, data.num_classes
