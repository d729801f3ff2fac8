"""Global batches from per-host data: deterministic shuffling by (seed, epoch), batch dim over mesh ``n``.

Every process computes the same permutation of the training set for each epoch (``seed``, ``epoch``),
cuts global batch ``i`` from it, and loads only the rows its devices hold (the grain pipeline of
:mod:`jaxcnn.runner.pipeline`); the global ``jax.Array`` is assembled with
``jax.make_array_from_process_local_data``. Global batch ``step`` depends only on the step number, so a
resumed run sees exactly the batches an uninterrupted run would.

Images are sharded ``P("n")`` (batch over the mesh's ``n`` axis, replicated over the others); each
convolution reshards to its algorithm's layout. ``n`` may be smaller than the device count (a batch
smaller than the device count, ``model.algorithms: auto``: see ``MeshConfig.resolve``): devices that
differ only in the other axes hold the same rows, and a process loads each row its devices hold once
(processes whose devices are replicas load identical rows, as ``make_array_from_process_local_data``
expects).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.runner.datasets import Dataset
from jaxcnn.runner.pipeline import LocalBatches, epoch_permutation, normalize
from jaxcnn.runner.typed import ConfigError

__all__ = [
    "TrainBatches",
    "batch_sharding",
    "epoch_permutation",
    "eval_batches",
    "local_rows",
    "normalize",
    "to_global",
]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of image / label batches: leading (batch) dim over ``n``, replicated over the other axes."""
    return NamedSharding(mesh, P("n"))


def local_rows(sharding: NamedSharding, global_batch: int) -> slice:
    """The contiguous rows of a global batch this process's devices hold (each row once, however many of
    its devices hold a replica of it).

    Raises:
      ConfigError: the batch does not divide over ``n`` (``MeshConfig.resolve`` normally catches this
        first, naming the config key).
      ValueError: this process's rows are not contiguous.
    """
    n = sharding.mesh.shape["n"]
    if global_batch % n:
        raise ConfigError(
            f"global batch {global_batch} is not divisible by mesh axis n={n}; train.batch_size and "
            "train.eval_batch_size must be multiples of mesh.n"
        )
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    spans = sorted(
        {(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop) for s in index_map.values()}
    )
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"this process holds non-contiguous batch rows {spans}; use a mesh with n outermost")
    return slice(start, stop)


def to_global(sharding: NamedSharding, local: np.ndarray, global_rows: int) -> jax.Array:
    """This process's rows ``local`` of a global batch of ``global_rows`` rows as one global array.

    The one host-to-device transfer of the input pipeline, allowed explicitly: the training loop runs
    under ``transfer_guard("disallow")``, and with more than one process
    ``make_array_from_process_local_data`` transfers through a path the guard counts as implicit.
    """
    with jax.transfer_guard_host_to_device("allow"):
        return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


class TrainBatches:
    """Global training batches: :class:`~jaxcnn.runner.pipeline.LocalBatches` (the grain pipeline of
    this process's rows) assembled into sharded ``jax.Array`` s.

    ``next(batches)`` returns global batch ``batches.step`` as ``(images, labels)`` and advances;
    ``batches(step)`` returns any step without moving. :meth:`get_state` / :meth:`set_state` save and
    restore the position (valid for any process count: see :mod:`jaxcnn.runner.pipeline`).

    Args:
      data: the dataset.
      batch_size: global batch size.
      seed: shuffling seed.
      mesh: the device mesh (batch over ``n``, replicated over the other axes).
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
        self.batch_size = batch_size
        self.local_batches = LocalBatches(
            data,
            batch_size,
            seed,
            local_rows(self.sharding, batch_size),
            workers=workers,
            prefetch=prefetch,
            start=start,
        )

    @property
    def rows(self) -> slice:
        """This process's rows of every global batch."""
        return self.local_batches.rows

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (the remainder is dropped)."""
        return self.local_batches.steps_per_epoch

    @property
    def step(self) -> int:
        """The step the next ``next`` returns."""
        return self.local_batches.step

    def indices(self, step: int) -> np.ndarray:
        """Training-set indices of this process's rows of global batch ``step`` (0-based)."""
        return self.local_batches.indices(step)

    def local(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of batch ``step``: normalised float32 images and int32 labels."""
        return self.local_batches.local(step)

    def get_state(self) -> dict[str, int]:
        """The position (JSON-serialisable; :meth:`.pipeline.LocalBatches.get_state`)."""
        return self.local_batches.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves the position to ``state["step"]`` (:meth:`.pipeline.LocalBatches.set_state`)."""
        self.local_batches.set_state(state)

    def _global(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return to_global(self.sharding, x, self.batch_size), to_global(self.sharding, y, self.batch_size)

    def __call__(self, step: int) -> tuple[jax.Array, jax.Array]:
        """Global batch ``step`` as sharded ``jax.Array`` s, read now (an explicit host-to-device
        transfer; the position does not move)."""
        return self._global(*self.local(step))

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> tuple[jax.Array, jax.Array]:
        """Global batch ``step`` from the grain iterator (an explicit host-to-device transfer); the
        position advances by one."""
        return self._global(*next(self.local_batches))

    def close(self) -> None:
        """Stops the grain iterator's threads and worker processes."""
        self.local_batches.close()


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
