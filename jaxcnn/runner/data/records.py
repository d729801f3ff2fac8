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

Bad data is a one-line :class:`~jaxcnn.runner.config.typed.ConfigError` naming the file: :func:`read_meta`
checks the sidecar's keys and values; a split file that cannot be opened (missing, truncated, not an
ArrayRecord file) or whose record count disagrees with the sidecar fails when it is opened
(:meth:`RecordSplit.check`); each record is checked as it is read (its size, its header's shape
against the sidecar's, its label against ``num_classes``), so nothing scans a whole split.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from jaxcnn.runner.config.typed import ConfigError

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
    """The ``(image, label)`` of one record: a read-only uint8 ``(H, W, C)`` view and an int.

    Raises:
      ValueError: the record is shorter than the header, or its size disagrees with the header's shape.
    """
    if len(record) < HEADER.size:
        raise ValueError(f"{len(record)} bytes, shorter than the {HEADER.size}-byte header")
    label, h, w, c = HEADER.unpack_from(record)
    if len(record) != HEADER.size + h * w * c:
        raise ValueError(
            f"{len(record)} bytes, but its header (H, W, C) = {(h, w, c)} needs {HEADER.size} + {h * w * c}"
        )
    image = np.frombuffer(record, np.uint8, h * w * c, HEADER.size).reshape(h, w, c)
    return image, label


def _one_line(e: BaseException) -> str:
    """``e``'s message on one line (the reader's errors can be long or empty)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class RecordSplit:
    """One split file: ``len(split)`` records of uint8 ``shape`` images, read by index.

    Args:
      path: the ``.array_record`` file.
      shape: ``(H, W, C)`` of every image (from the sidecar).
      count: the number of records (from the sidecar; checked against the file when it is opened).
      num_classes: labels must be in ``[0, num_classes)`` (checked per record as it is read); ``None``:
        only ``>= 0``.

    Pickles without its open reader (grain worker processes reopen the file on first read).

    Raises (on opening or reading):
      ConfigError: the file cannot be opened or read (missing, truncated, not an ArrayRecord file), has
        another record count than the sidecar, or a record is malformed, has another shape than the
        sidecar's or a label out of range (naming the file and the record index).
    """

    def __init__(
        self, path: str, shape: tuple[int, int, int], count: int, num_classes: int | None = None
    ) -> None:
        self.path, self.shape, self.count = path, tuple(shape), int(count)
        self.num_classes = None if num_classes is None else int(num_classes)
        self._source: Any = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def _open(self) -> Any:
        if self._source is None:
            import grain

            if not os.path.isfile(self.path):
                raise ConfigError(f"data.path: ArrayRecord split file {self.path} not found")
            try:
                source = grain.sources.ArrayRecordDataSource(self.path)
                n = len(source)
            except (RuntimeError, OSError, ValueError) as e:
                raise ConfigError(
                    f"data.path: {self.path} is not a readable ArrayRecord file (truncated or damaged? "
                    f"rewrite it with jaxcnn data convert): {_one_line(e)}"
                ) from None
            if n != self.count:
                raise ConfigError(
                    f"data.path: {self.path} has {n} records; its sidecar says {self.count} "
                    "(a partial or mismatched file? rewrite it with jaxcnn data convert)"
                )
            self._source = source
        return self._source

    def check(self) -> None:
        """Opens the file (reads its index, not its records): raises its :class:`ConfigError` now."""
        self._open()

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(len(idx), H, W, C)`` uint8 and labels ``(len(idx),)`` int32 of records ``idx``."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        images = np.empty((len(idx), *self.shape), np.uint8)
        labels = np.empty(len(idx), np.int32)
        if len(idx):
            if idx.min() < 0 or idx.max() >= self.count:
                raise IndexError(f"record index out of range [0, {self.count}) in {self.path}")
            source = self._open()
            try:
                records = source.__getitems__(idx.tolist())
            except (RuntimeError, OSError, ValueError) as e:
                rows = idx[:5].tolist()
                raise ConfigError(
                    f"data.path: {self.path}: cannot read records {rows}{'...' if len(idx) > 5 else ''} "
                    f"(truncated or damaged? rewrite it with jaxcnn data convert): {_one_line(e)}"
                ) from None
            for i, record in enumerate(records):
                where = f"data.path: {self.path}: record {int(idx[i])}"
                try:
                    image, label = decode(record)
                except ValueError as e:
                    raise ConfigError(f"{where} is malformed: {e}") from None
                if image.shape != self.shape:
                    raise ConfigError(
                        f"{where} has an image of shape {image.shape}; the sidecar says {self.shape}"
                    )
                if label < 0 or (self.num_classes is not None and label >= self.num_classes):
                    valid = (
                        ">= 0" if self.num_classes is None else f"in [0, {self.num_classes}) (num_classes)"
                    )
                    raise ConfigError(f"{where} has label {label}; valid labels are {valid}")
                images[i], labels[i] = image, label
        return images, labels


class RecordColumn:
    """The images or the labels of a :class:`RecordSplit` as a read-only array-like.

    Stands in for ``Dataset.x_train`` / ``y_train`` (``x_test`` / ``y_test``): ``len``, ``shape``,
    ``dtype``, ``ndim`` and indexing by an int, a slice or an integer array (each read goes to the file;
    :meth:`jaxcnn.runner.data.datasets.Dataset.read` reads images and labels in one pass).

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


def _is_int(v: Any, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_meta(path: str) -> dict[str, Any]:
    """The sidecar of the dataset named ``path``, with ``files`` resolved to paths.

    Checks every key's type and range (not the split files' contents: see :meth:`RecordSplit.check`).

    Raises:
      FileNotFoundError: no sidecar or split file.
      ValueError: not a jaxcnn ArrayRecord sidecar (not JSON, another format, a key missing or invalid).
    """
    names = split_paths(path)
    sidecar = names["meta"]
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(
            f"ArrayRecord sidecar {sidecar} not found (data.path names the OUT{SUFFIX} given to "
            f"jaxcnn data convert FOLDER OUT{SUFFIX})"
        )
    try:
        with open(sidecar, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(
            f"{sidecar} is not a valid {FORMAT} sidecar (not JSON: {' '.join(str(e).split())}); "
            "rewrite it with jaxcnn data convert"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{sidecar} is not a {FORMAT} sidecar (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{sidecar} is not a {FORMAT} sidecar (format {meta.get('format')!r})")
    missing = [k for k in ("shape", "num_classes", "mean", "std", "counts", "files") if k not in meta]
    if missing:
        raise ValueError(f"{sidecar} lacks {missing}")

    def bad(key: str, valid: str) -> ValueError:
        return ValueError(f"{sidecar}: {key} is {meta[key]!r}; expected {valid}")

    shape = meta["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v, 1) for v in shape)):
        raise bad("shape", "[H, W, C], three positive ints")
    if shape[2] > 65535 or shape[0] > 65535 or shape[1] > 65535:
        raise bad("shape", "sizes below 65536 (the record header's uint16)")
    if not _is_int(meta["num_classes"], 1):
        raise bad("num_classes", "a positive int")
    if not _is_number(meta["mean"]):
        raise bad("mean", "a finite number")
    if not (_is_number(meta["std"]) and meta["std"] > 0):
        raise bad("std", "a finite number > 0")
    counts, files = meta["counts"], meta["files"]
    if not (isinstance(counts, dict) and _is_int(counts.get("train"), 1) and _is_int(counts.get("test"), 1)):
        raise bad("counts", '{"train": N, "test": M}, positive ints (empty splits cannot train or evaluate)')
    if not (
        isinstance(files, dict) and all(isinstance(files.get(s), str) and files[s] for s in ("train", "test"))
    ):
        raise bad("files", '{"train": NAME, "test": NAME}, file names next to the sidecar')
    names_ = meta.get("class_names", [])
    if not (isinstance(names_, list) and all(isinstance(n, str) for n in names_)) or (
        names_ and len(names_) != meta["num_classes"]
    ):
        raise bad("class_names", f"a list of num_classes = {meta['num_classes']} strings")
    folder = os.path.dirname(sidecar)
    meta["files"] = {s: os.path.join(folder, files[s]) for s in ("train", "test")}
    for s, f in meta["files"].items():
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{s} split file {f} (named by {sidecar}) not found")
    return meta
