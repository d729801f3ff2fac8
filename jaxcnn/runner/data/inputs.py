"""Images to predict: an ``.npz``, an ``.npy`` or an image folder, as a batch of a run's image shape.

``jaxcnn predict`` (:mod:`jaxcnn.runner.inference`) reads its ``--input`` here:

- **an .npz**: the array ``x``, or ``x_test`` when there is no ``x`` (the test split of a file written
  for ``data.source: npz``); read without unpickling (``allow_pickle=False``);
- **an .npy**: one array (``np.save``), e.g. one volume or a batch of volumes for a 3-D U-Net;
- **a folder**: every ``.png`` / ``.jpg`` / ``.jpeg`` under it, subfolders included (a folder laid out
  ``FOLDER/<class>/*.png`` for ``data.source: folder`` or ``jaxcnn data convert`` works as it is), in
  the order of their sorted paths relative to the folder (:func:`read_folder` returns them as the names).
  Each is decoded as the ``folder`` source decodes it (:func:`jaxcnn.runner.data.datasets.read_image`:
  grey or RGB uint8) and resized (bilinear, as ``data.image_size`` resizes training images) to the
  run's ``(H, W)``; a grey image for a colour model has its channel repeated, as the ``folder`` source
  does.

Arrays hold raw images in the training data's units (uint8 pixels, digits' 0-16, ...): the caller
normalises them with the training set's mean and standard deviation, as training did
(:func:`jaxcnn.runner.data.normalize`). :func:`as_batch` takes ``(N, *image_shape)``, and, for one
channel, ``(N, *spatial)``; one image or volume (``image_shape`` or ``spatial``) is a batch of one.
Anything else is one :class:`InputError` line naming the input, its shape and what the run takes.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from jaxcnn.runner.data.datasets import IMAGE_EXTENSIONS, read_image

#: The arrays of an ``.npz`` that hold the images, in the order they are looked for.
NPZ_IMAGE_KEYS = ("x", "x_test")


class InputError(ValueError):
    """Images that do not fit the run: a wrong shape, channel count or dtype, or an unreadable input."""


def expected(image_shape: tuple[int, ...]) -> str:
    """``"(N, 8, 8, 1) or (N, 8, 8)"``: the batch shapes :func:`as_batch` takes for ``image_shape``."""
    dims = ", ".join(map(str, image_shape))
    shapes = f"(N, {dims})"
    if image_shape[-1] == 1:
        shapes += f" or (N, {', '.join(map(str, image_shape[:-1]))})"
    kind = "volumes" if len(image_shape) == 4 else "images"
    return f"{shapes} {kind} (the run's {kind} are {tuple(image_shape)}, channels last)"


def as_batch(x: np.ndarray, image_shape: tuple[int, ...], where: str) -> np.ndarray:
    """``x`` as a batch ``(N, *image_shape)`` (a view where it can be; see the module docstring).

    Args:
      x: the images.
      image_shape: the run's ``(*spatial, channels)``.
      where: what ``x`` is, for messages (``"--input a.npz: x"``).

    Raises:
      InputError: ``x`` is not numeric, not finite, empty, or of another shape.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise InputError(f"{where} has dtype {x.dtype}; images must be numeric")
    shape, spatial = tuple(image_shape), tuple(image_shape[:-1])
    grey = shape[-1] == 1
    if x.shape[1:] == shape:
        batch = x
    elif grey and x.shape[1:] == spatial:
        batch = x[..., None]
    elif x.shape == shape:
        batch = x[None]
    elif grey and x.shape == spatial:
        batch = x[None, ..., None]
    else:
        raise InputError(f"{where} has shape {x.shape}; expected {expected(shape)}")
    if len(batch) == 0:
        raise InputError(f"{where} has shape {x.shape}: no images")
    if batch.dtype.kind == "f" and not np.isfinite(batch).all():
        raise InputError(f"{where} has NaN/inf values; images must be finite")
    return batch


def read_array(path: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """The images of the ``.npz`` or ``.npy`` file ``path`` as a batch (:func:`as_batch`).

    Raises:
      InputError: the file is missing, unreadable, holds no image array, or its images do not fit.
    """
    where = f"--input {path}"
    if not os.path.isfile(path):
        raise InputError(f"{where}: no such file")
    try:
        if path.endswith(".npy"):
            return as_batch(np.load(path, allow_pickle=False), image_shape, where)
        with np.load(path, allow_pickle=False) as f:
            key = next((k for k in NPZ_IMAGE_KEYS if k in f.files), None)
            if key is None:
                raise InputError(
                    f"{where} has arrays {sorted(f.files)}; the images must be the array x (or x_test)"
                )
            return as_batch(f[key], image_shape, f"{where}: {key}")
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        text = " ".join(str(e).split())
        raise InputError(f"{where} cannot be read ({type(e).__name__}: {text})") from None


def list_images(root: str) -> list[str]:
    """The image files under ``root`` (subfolders included), as sorted paths relative to ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [
            os.path.relpath(os.path.join(folder, f), root)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def read_folder(root: str, image_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """The images under ``root`` as a uint8 batch ``(N, *image_shape)`` and their names (paths relative
    to ``root``), decoded and resized as the module docstring says.

    Raises:
      InputError: no images, a run of volumes (folders hold 2-D images), or an image with channels the
        run cannot take (a colour image for a grey model).
      ConfigError: an image cannot be decoded (naming it; :func:`read_image`).
    """
    names = list_images(root)
    if not names:
        raise InputError(f"--input {root}: no {'/'.join(IMAGE_EXTENSIONS)} images in the folder")
    if len(image_shape) != 3:
        raise InputError(
            f"--input {root}: image folders hold 2-D images; the run takes volumes {tuple(image_shape)} "
            "(pass an .npy or .npz)"
        )
    channels = image_shape[-1]
    images = []
    for name in names:
        a = read_image(os.path.join(root, name), tuple(image_shape[:2]))
        if a.shape[-1] != channels:
            if a.shape[-1] != 1:
                raise InputError(
                    f"--input {os.path.join(root, name)} is a colour image {a.shape}; the run's images have "
                    f"{channels} channel{'s' if channels > 1 else ''} {tuple(image_shape)}"
                )
            a = np.repeat(a, channels, -1)
        images.append(a)
    return np.stack(images), names


def read_inputs(path: str, image_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """The images of ``path`` (a folder, an ``.npz`` or an ``.npy``) as a batch, and their names
    (a folder's files; ``[]`` for arrays).

    Raises:
      InputError: see :func:`read_array` and :func:`read_folder`; another kind of path.
    """
    if os.path.isdir(path):
        return read_folder(path, image_shape)
    if not path.endswith((".npz", ".npy")):
        raise InputError(
            f"--input {path}: expected an .npz (images in the array x), an .npy or a folder of images"
        )
    return read_array(path, image_shape), []
