"""The ArrayRecord image format: labelled uint8 images read by random access, never loaded whole.

A dataset written by ``jaxcnn data convert FOLDER OUT.array_record`` is three files next to each other:

- ``OUT.array_record.json``: the sidecar, ``{"format", "shape": [H, W, C], "num_classes",
  "class_names", "mean", "std", "counts": {"train": N, "test": M}, "files": {"train", "test"}}``
  (``mean`` / ``std``: of the training pixels, used to standardise batches; ``files``: the split files'
  names, relative to the sidecar's folder);
- ``OUT-train.array_record`` and ``OUT-test.array_record``: one record per image, written with
  ``group_size:1`` (every record individually addressable).

``data.path`` names the dataset by ``OUT.array_record`` (the name given to the converter; no file of
exactly that name exists). A record is a 10-byte little-endian header ``(label: int32, H, W, C:
uint16)`` followed by the image's ``H * W * C`` raw uint8 bytes in HWC order: decoding is a copy, no
codec. Reads go through ``grain.sources.ArrayRecordDataSource``, opened lazily in each process that
reads (grain worker processes included).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

FORMAT = "jaxcnn-image-v1"
SUFFIX = ".array_record"
HEADER = struct.Struct("<iHHH")  # label, H, W, C
WRITER_OPTIONS = "group_size:1"  # random access: one record per chunk


def split_paths(path: str) -> dict[str, str]:
    """``{"meta", "train", "test"}`` file paths of the dataset named ``path`` (``OUT.array_record``).

    Raises:
      ValueError: ``path`` does not end with ``.array_record``.
    """
    if not path.endswith(SUFFIX) or len(os.path.basename(path)) == len(SUFFIX):
        raise ValueError(f"expected a name ending with {SUFFIX} (e.g. data/images{SUFFIX}), got {path!r}")
    stem = path[: -len(SUFFIX)]
    return {"meta": path + ".json", "train": f"{stem}-train{SUFFIX}", "test": f"{stem}-test{SUFFIX}"}


def encode(image: np.ndarray, label: int) -> bytes:
    """One record: the header ``(label, H, W, C)`` and the uint8 ``(H, W, C)`` image's raw bytes."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, C) image, got {image.dtype} {image.shape}")
    return HEADER.pack(int(label), *image.shape) + np.ascontiguousarray(image).tobytes()


def decode(record: bytes) -> tuple[np.ndarray, int]:
    """The ``(image, label)`` of one record: a read-only uint8 ``(H, W, C)`` view and an int."""
    label, h, w, c = HEADER.unpack_from(record)
    image = np.frombuffer(record, np.uint8, h * w * c, HEADER.size).reshape(h, w, c)
    return image, label


class RecordSplit:
    """One split file: ``len(split)`` records of uint8 ``shape`` images, read by index.

    Args:
      path: the ``.array_record`` file.
      shape: ``(H, W, C)`` of every image (from the sidecar).
      count: the number of records (from the sidecar; checked against the file when it is opened).

    Pickles without its open reader (grain worker processes reopen the file on first read).
    """

    def __init__(self, path: str, shape: tuple[int, int, int], count: int) -> None:
        self.path, self.shape, self.count = path, tuple(shape), int(count)
        self._source: Any = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def _open(self) -> Any:
        if self._source is None:
            import grain

            source = grain.sources.ArrayRecordDataSource(self.path)
            if len(source) != self.count:
                raise ValueError(f"{self.path} has {len(source)} records; its sidecar says {self.count}")
            self._source = source
        return self._source

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(len(idx), H, W, C)`` uint8 and labels ``(len(idx),)`` int32 of records ``idx``."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        images = np.empty((len(idx), *self.shape), np.uint8)
        labels = np.empty(len(idx), np.int32)
        if len(idx):
            if idx.min() < 0 or idx.max() >= self.count:
                raise IndexError(f"record index out of range [0, {self.count}) in {self.path}")
            for i, record in enumerate(self._open().__getitems__(idx.tolist())):
                image, labels[i] = decode(record)
                if image.shape != self.shape:
                    raise ValueError(f"{self.path}: a record has shape {image.shape}, expected {self.shape}")
                images[i] = image
        return images, labels


class RecordColumn:
    """The images or the labels of a :class:`RecordSplit` as a read-only array-like.

    Stands in for ``Dataset.x_train`` / ``y_train`` (``x_test`` / ``y_test``): ``len``, ``shape``,
    ``dtype``, ``ndim`` and indexing by an int, a slice or an integer array (each read goes to the file;
    :meth:`jaxcnn.runner.datasets.Dataset.read` reads images and labels in one pass).

    Args:
      split: the split file.
      labels: the labels (int32) rather than the images (uint8).
    """

    def __init__(self, split: RecordSplit, labels: bool) -> None:
        self.split, self.labels = split, labels

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.split),) if self.labels else (len(self.split), *self.split.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int32 if self.labels else np.uint8)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        single = isinstance(key, (int, np.integer))
        idx = np.arange(len(self.split))[key]
        out = self.split.read(np.atleast_1d(idx))[1 if self.labels else 0]
        return out[0] if single else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def write_meta(path: str, meta: dict[str, Any]) -> None:
    """Writes the sidecar of the dataset named ``path`` (see the module docstring for the keys)."""
    with open(split_paths(path)["meta"], "w") as f:
        json.dump({"format": FORMAT, **meta}, f, indent=2)


def read_meta(path: str) -> dict[str, Any]:
    """The sidecar of the dataset named ``path``, with ``files`` resolved to paths.

    Raises:
      FileNotFoundError: no sidecar or split file.
      ValueError: not a jaxcnn ArrayRecord sidecar, or a key is missing.
    """
    names = split_paths(path)
    with open(names["meta"]) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{names['meta']} is not a {FORMAT} sidecar (format {meta.get('format')!r})")
    missing = [k for k in ("shape", "num_classes", "mean", "std", "counts", "files") if k not in meta]
    if missing:
        raise ValueError(f"{names['meta']} lacks {missing}")
    folder = os.path.dirname(names["meta"])
    meta["files"] = {s: os.path.join(folder, meta["files"][s]) for s in ("train", "test")}
    for f in meta["files"].values():
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f} (named by {names['meta']}) not found")
    return meta
