"""``jaxcnn data convert FOLDER OUT.array_record``: an image folder → an ArrayRecord dataset.

FOLDER has the ``folder`` source's layout: ``FOLDER/<class>/*.png|jpg`` (a stratified ``--test-fraction``
split fixed by ``--seed`` is held out, the same rows the ``folder`` source holds out) or
``FOLDER/train/<class>/...`` and ``FOLDER/test/<class>/...``. Images are decoded (and resized to
``--image-size``) a chunk at a time on a thread pool and written one record each; nothing holds the
whole dataset in memory. The output (``OUT.array_record.json``, ``OUT-train.array_record``,
``OUT-test.array_record``: :mod:`jaxcnn.runner.data.records`) trains with ``data.source: array_record``,
``data.path: OUT.array_record``, and gives the batches the ``folder`` source gives.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any, NoReturn

import numpy as np

from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data import datasets, records
from jaxcnn.runner.data.split import stratified_split

CHUNK = 256  # images decoded ahead of the writer


def _layout(
    folder: str, test_fraction: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, np.ndarray], list[str]]:
    """Per split: the image paths in record order, their labels; and the class names."""
    if not os.path.isdir(folder):
        raise ConfigError(f"image folder not found: {folder}")
    train_dir, test_dir = os.path.join(folder, "train"), os.path.join(folder, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        tr_paths, tr_labels, classes = datasets.list_folder(train_dir)
        te_paths, te_labels, _ = datasets.list_folder(test_dir, classes)
        return {"train": tr_paths, "test": te_paths}, {"train": tr_labels, "test": te_labels}, classes
    paths, labels, classes = datasets.list_folder(folder)
    try:
        split = dict(zip(("train", "test"), stratified_split(labels, test_fraction, seed), strict=True))
    except ValueError as e:  # too few images per class for a stratified split
        raise ConfigError(
            f"cannot split {folder} into train/test with --test-fraction {test_fraction}: {e}"
        ) from None
    return (
        {s: [paths[i] for i in idx] for s, idx in split.items()},
        {s: labels[idx] for s, idx in split.items()},
        classes,
    )


def _shape(paths: Sequence[str], image_size: tuple[int, ...]) -> tuple[int, int, int]:
    """``(H, W, C)`` of the records, from the image headers: ``C`` is 3 if any image is colour (grey
    ones are repeated, as the ``folder`` source does), ``H, W`` the common size or ``image_size``."""
    from PIL import Image

    sizes, channels = set(), 1
    for p in paths:
        with Image.open(p) as im:
            sizes.add(im.size[::-1])
            if im.mode not in ("1", "L", "I", "I;16", "F"):
                channels = 3
    if image_size:
        return (*image_size, channels)  # type: ignore[return-value]
    if len(sizes) > 1:
        raise ConfigError(
            f"images have different sizes {sorted(sizes)[:3]}...; pass --image-size H W to resize them"
        )
    return (*sizes.pop(), channels)  # type: ignore[return-value]


def _images(paths: Sequence[str], shape: tuple[int, int, int], threads: int) -> Iterator[np.ndarray]:
    """The images of ``paths`` in order as uint8 ``shape``, decoded ``CHUNK`` at a time on threads."""
    size = shape[:2]

    def read(path: str) -> np.ndarray:
        a = datasets.read_image(path, size)
        if a.shape[-1] != shape[-1]:
            a = np.repeat(a, shape[-1], -1)
        if a.shape != shape:
            raise ConfigError(f"{path}: decoded shape {a.shape}, expected {shape}")
        return a

    with ThreadPoolExecutor(threads) as pool:
        for i in range(0, len(paths), CHUNK):
            yield from pool.map(read, paths[i : i + CHUNK])


def convert(
    folder: str,
    out: str,
    image_size: tuple[int, ...] = (),
    test_fraction: float = 0.2,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Converts the image folder ``folder`` into the ArrayRecord dataset named ``out``.

    Args:
      folder: ``folder/<class>/*`` or ``folder/{train,test}/<class>/*`` (the ``folder`` source's layout).
      out: the dataset's name, ``OUT.array_record`` (see :mod:`jaxcnn.runner.data.records`).
      image_size: ``(H, W)`` to resize every image to (bilinear), or ``()`` for their own equal size.
      test_fraction: held-out fraction when ``folder`` has no ``train`` / ``test`` split.
      seed: fixes that split.
      threads: decoding threads (default: the CPU count).

    Returns:
      The sidecar's contents.

    Raises:
      ConfigError: a missing or empty folder, mixed image sizes without ``image_size``, a bad ``out``.
    """
    try:
        names = records.split_paths(out)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len(image_size) not in (0, 2) or any(s < 1 for s in image_size):
        raise ConfigError(f"--image-size needs two positive sizes H W, got {list(image_size)}")
    paths, labels, classes = _layout(folder, test_fraction, seed)
    if not paths["train"]:
        raise ConfigError(f"no training images in {folder}")
    shape = _shape(paths["train"] + paths["test"], tuple(image_size))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    from array_record.python.array_record_module import ArrayRecordWriter

    total = total_sq = 0  # exact integer sums of the training pixels
    for split in ("train", "test"):
        writer = ArrayRecordWriter(names[split], records.WRITER_OPTIONS)
        try:
            for image, label in zip(
                _images(paths[split], shape, threads or os.cpu_count() or 1), labels[split], strict=True
            ):
                writer.write(records.encode(image, int(label)))
                if split == "train":
                    wide = image.astype(np.int64)
                    total, total_sq = total + int(wide.sum()), total_sq + int((wide * wide).sum())
        finally:
            writer.close()
    count = len(paths["train"]) * math.prod(shape)
    # The training pixels' mean (as NumPy's float64 mean gives it: the sum is exact) and standard
    # deviation (the exact variance, rounded once).
    mean = total / count
    std = math.sqrt(float(Fraction(total_sq * count - total * total, count * count))) or 1.0
    meta = {
        "shape": list(shape),
        "num_classes": len(classes),
        "class_names": list(classes),
        "mean": mean,
        "std": std,
        "counts": {s: len(paths[s]) for s in ("train", "test")},
        "files": {s: os.path.basename(names[s]) for s in ("train", "test")},
    }
    records.write_meta(out, meta)
    return meta


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``jaxcnn data: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"jaxcnn data: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The ``jaxcnn data`` argument parser."""
    p = _Parser(prog="jaxcnn data", description="Prepare training data.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "convert",
        help="image folder → ArrayRecord dataset (data.source: array_record)",
        description="Converts FOLDER/<class>/*.png|jpg (a stratified --test-fraction split fixed by --seed "
        "is held out, as the folder source does) or FOLDER/train/<class>/... and FOLDER/test/<class>/... "
        "into OUT.array_record.json, OUT-train.array_record and OUT-test.array_record. Train with "
        "data.source=array_record data.path=OUT.array_record.",
    )
    c.add_argument("folder", help="FOLDER/<class>/*.png|jpg, or FOLDER/train and FOLDER/test")
    c.add_argument(
        "out",
        help="OUT.array_record: writes OUT.array_record.json, OUT-train.array_record, OUT-test.array_record",
    )
    c.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=(), help="resize to H W")
    c.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction (default 0.2)")
    c.add_argument("--seed", type=int, default=0, help="fixes the held-out split (default 0)")
    c.add_argument("--threads", type=int, default=None, help="decoding threads (default: CPU count)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs ``jaxcnn data convert ...``.

    Returns:
      0 on success; 2 for a usage error (one line on stderr).
    """
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a usage error (2, reported by _Parser.error)
        return int(e.code or 0)
    if not 0 < args.test_fraction < 1:
        print(f"jaxcnn data: --test-fraction must be in (0, 1), got {args.test_fraction}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"jaxcnn data: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        meta = convert(
            args.folder, args.out, tuple(args.image_size), args.test_fraction, args.seed, args.threads
        )
    except (ConfigError, OSError) as e:
        print(f"jaxcnn data: {str(e).removeprefix('data.path: ')}", file=sys.stderr)
        return 2
    counts = meta["counts"]
    print(
        f"wrote {counts['train']} train / {counts['test']} test images {tuple(meta['shape'])}, "
        f"{meta['num_classes']} classes: {args.out}.json"
    )
    return 0
