"""The training input pipeline on grain: a ``grain.MapDataset`` indexed by global step.

Element ``step`` of the dataset is this process's rows of global batch ``step``: the training set is
shuffled per epoch by ``(seed, epoch)`` (:func:`epoch_permutation`, the same on every host), global
batch ``i`` of the epoch is rows ``[i * batch, (i + 1) * batch)`` of the permutation (the remainder of
each epoch is dropped), and this process keeps rows ``rows`` of it (``data.local_rows``). Only those
records are read (``Dataset.read``: in-memory arrays, or ArrayRecord files by random access) and
normalised to float32 with the training set's mean and standard deviation.

Because elements are indexed by step, a batch depends on nothing but the step, the seed, the batch
size and the dataset: not on the process count, the read threads or the worker processes. The
position of an iterator is therefore one number, the next step, and :meth:`LocalBatches.get_state`
saved by one run restores in another run with any number of processes or workers. Iterating is
``dataset[step:].to_iter_dataset(grain.ReadOptions(...))``, then ``.mp_prefetch(...)`` when
``workers > 0`` (worker ``w`` of ``W`` reads steps ``step + w``, ``step + w + W``, ...; grain returns
them in order).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data.datasets import Dataset
from jaxcnn.runner.data.sharding import batch_sharding, local_rows, to_global

State = dict[str, int]


def epoch_permutation(num: int, seed: int, epoch: int) -> np.ndarray:
    """The training-set order of ``epoch`` (same on every host, independent of the process count)."""
    return np.random.default_rng([seed, epoch]).permutation(num)


_cached_permutation = functools.lru_cache(maxsize=2)(epoch_permutation)


def normalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(x - mean) / std`` as float32."""
    return ((x.astype(np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


class StepRows:
    """The map of the step dataset: ``step`` → this process's rows of global batch ``step``.

    A picklable callable (grain worker processes receive a copy; each caches the permutations of the
    two most recent epochs). Safe to call from several read threads at once.

    Args:
      data: the dataset (its train split is read).
      batch_size: global batch size.
      seed: shuffling seed.
      rows: this process's rows of every global batch.
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, rows: slice) -> None:
        self.data, self.batch_size, self.seed, self.rows = data, batch_size, seed, rows
        self.num = len(data.x_train)
        self.steps_per_epoch = self.num // batch_size

    def indices(self, step: int) -> np.ndarray:
        """Training-set indices of this process's rows of global batch ``step`` (0-based)."""
        epoch, i = divmod(int(step), self.steps_per_epoch)
        perm = _cached_permutation(self.num, self.seed, epoch)
        return perm[i * self.batch_size : (i + 1) * self.batch_size][self.rows]

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 images and int32 labels of this process's rows of batch ``step``."""
        x, y = self.data.read("train", self.indices(step))
        return normalize(x, self.data.mean, self.data.std), np.asarray(y, np.int32)


def step_dataset(rows: StepRows) -> grain.MapDataset:
    """``grain.MapDataset`` whose element ``step`` is ``rows(step)``, for every step ``>= 0``
    (unbounded: its length is ``sys.maxsize``)."""
    return grain.MapDataset.range(sys.maxsize).map(rows)


def _allow_worker_processes() -> None:
    """grain's worker processes read an absl flag, which fails unless flags were parsed (scripts that
    do not run ``absl.app``; google/grain#1355): mark them parsed, keeping their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class LocalBatches:
    """This process's rows of each global training batch, as host NumPy arrays, from a grain pipeline.

    Random access: ``local(step)``. Iteration: ``next(batches)`` returns the batch at the current
    position and advances it; the position starts at ``start`` and is moved by :meth:`set_state`. The
    grain iterator (read threads, worker processes) starts on the first ``next`` after construction or
    ``set_state``; :meth:`close` stops it.

    Args:
      data: the dataset.
      batch_size: global batch size.
      seed: shuffling seed.
      rows: this process's rows of every global batch (``data.local_rows``).
      workers: grain worker processes (``mp_prefetch``); 0 reads in this process.
      prefetch: batches read ahead, and read threads (``grain.ReadOptions``), per process.
      start: the first step ``next`` returns.

    Raises:
      ConfigError: the batch is larger than the training set.
    """

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        seed: int,
        rows: slice,
        *,
        workers: int = 0,
        prefetch: int = 2,
        start: int = 0,
    ) -> None:
        if batch_size > len(data.x_train):
            raise ConfigError(
                f"train.batch_size={batch_size} exceeds the {len(data.x_train)} training images; use a "
                "smaller batch or more data"
            )
        if workers < 0 or prefetch < 1 or start < 0:
            raise ValueError(
                f"need workers >= 0, prefetch >= 1, start >= 0; got {workers}, {prefetch}, {start}"
            )
        self.batch_size, self.seed, self.rows = batch_size, seed, rows
        self.workers, self.prefetch = workers, prefetch
        self.step_rows = StepRows(data, batch_size, seed, rows)
        self.dataset = step_dataset(self.step_rows)
        self._step, self._iter = int(start), None

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (the remainder is dropped)."""
        return self.step_rows.steps_per_epoch

    @property
    def step(self) -> int:
        """The step the next ``next`` returns."""
        return self._step

    def indices(self, step: int) -> np.ndarray:
        """Training-set indices of this process's rows of global batch ``step`` (0-based)."""
        return self.step_rows.indices(step)

    def local(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of batch ``step``: normalised float32 images and int32 labels (read now,
        in this process; the position does not move)."""
        return self.dataset[step]

    def get_state(self) -> State:
        """The position, as a JSON-serialisable dict: ``{"step", "seed", "batch_size", "num_records"}``.

        ``step`` is the next step ``next`` returns; the rest identifies the pipeline. Nothing in it
        depends on the process, the process count or the workers.
        """
        return {
            "step": self._step,
            "seed": int(self.seed),
            "batch_size": int(self.batch_size),
            "num_records": int(self.step_rows.num),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves the position to ``state["step"]`` (a :meth:`get_state` of this or another run, with
        any process or worker count); the next ``next`` returns that step.

        Raises:
          ValueError: no ``step``, or a negative one.
          ConfigError: ``state`` was saved with another seed, batch size or training set (its batches
            would not be the ones an uninterrupted run sees).
        """
        if "step" not in state:
            raise ValueError(f"input pipeline state without a step: {state}")
        mine = self.get_state()
        other = {k: int(state[k]) for k in mine if k in state}  # the identity keys are checked if present
        diff = [
            f"{k}={other[k]} (now {mine[k]})"
            for k in ("seed", "batch_size", "num_records")
            if k in other and other[k] != mine[k]
        ]
        if diff:
            raise ConfigError(
                "the input pipeline's saved state does not fit this run: it has "
                + ", ".join(diff)
                + "; resume with the same seed, train.batch_size and data"
            )
        if other["step"] < 0:
            raise ValueError(f"negative step in input pipeline state: {state}")
        self.close()
        self._step = other["step"]

    def _open(self) -> grain.DatasetIterator:
        ds = self.dataset[self._step :].to_iter_dataset(
            grain.ReadOptions(num_threads=self.prefetch, prefetch_buffer_size=self.prefetch)
        )
        if self.workers > 0:
            _allow_worker_processes()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=self.prefetch)
            )
        return iter(ds)

    def __iter__(self) -> LocalBatches:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of the batch at the position; the position advances by one."""
        if self._iter is None:
            self._iter = self._open()
        x, y = next(self._iter)
        self._step += 1
        return x, y

    def close(self) -> None:
        """Stops the grain iterator (its threads and worker processes); ``next`` starts a new one."""
        if self._iter is not None:
            it, self._iter = self._iter, None
            it.close()

    def __enter__(self) -> LocalBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TrainBatches(LocalBatches):
    """Global training batches: this process's rows (:class:`LocalBatches`) assembled into sharded
    ``jax.Array`` s on ``mesh`` (batch over ``n``, replicated over the other axes).

    ``next(batches)`` returns global batch ``batches.step`` as ``(images, labels)`` and advances;
    ``batches(step)`` returns any step without moving; ``local(step)``, :meth:`get_state` and
    :meth:`set_state` are :class:`LocalBatches`' (the position is valid for any process count).

    Args:
      data: the dataset.
      batch_size: global batch size.
      seed: shuffling seed.
      mesh: the device mesh.
      workers: grain worker processes per process (0: read in this process).
      prefetch: batches read ahead, and read threads.
      start: the first step ``next`` returns.

    Raises:
      ConfigError: the batch is larger than the training set or does not divide over ``n``.
    """

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        seed: int,
        mesh: Mesh,
        *,
        workers: int = 0,
        prefetch: int = 2,
        start: int = 0,
    ) -> None:
        self.sharding = batch_sharding(mesh)
        rows = local_rows(self.sharding, batch_size)
        super().__init__(data, batch_size, seed, rows, workers=workers, prefetch=prefetch, start=start)

    def _global(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return to_global(self.sharding, x, self.batch_size), to_global(self.sharding, y, self.batch_size)

    def __call__(self, step: int) -> tuple[jax.Array, jax.Array]:
        """Global batch ``step`` as sharded ``jax.Array`` s, read now (an explicit host-to-device
        transfer; the position does not move)."""
        return self._global(*self.local(step))

    def __next__(self) -> tuple[jax.Array, jax.Array]:  # type: ignore[override]
        """Global batch ``step`` from the grain iterator (an explicit host-to-device transfer); the
        position advances by one."""
        return self._global(*super().__next__())


def eval_batches(
    data: Dataset, batch_size: int, mesh: Mesh
) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """The whole test split in order, as ``(images, labels, mask)`` global batches.

    The last batch is padded with zeros; ``mask`` is 1.0 for real rows and 0.0 for padding (one entry
    per row, also for per-voxel labels). Every
    batch has ``batch_size`` rows (one compiled eval step), sharded like the train batches (``P("n")``:
    ``batch_size`` must divide over ``n``); a ``batch_size`` larger than the test split is one padded
    batch.
    """
    sharding = batch_sharding(mesh)
    rows = local_rows(sharding, batch_size)
    num = len(data.x_test)
    for start in range(0, num, batch_size):
        idx = np.arange(start, start + batch_size)[rows]
        valid = idx < num
        x, y = data.read("test", np.where(valid, idx, 0))
        x = normalize(x, data.mean, data.std) * valid.reshape(-1, *(1,) * (x.ndim - 1))
        y = np.where(valid.reshape(-1, *(1,) * (np.ndim(y) - 1)), y, 0).astype(np.int32)
        yield tuple(
            to_global(sharding, a, batch_size) for a in (x.astype(np.float32), y, valid.astype(np.float32))
        )
