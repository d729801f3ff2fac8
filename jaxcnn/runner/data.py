"""Global batches from per-host data: deterministic shuffling by (seed, epoch), batch dim over mesh ``n``.

Every process computes the same permutation of the training set for each epoch (``seed``, ``epoch``),
cuts global batch ``i`` from it, and loads only the rows its devices hold; the global ``jax.Array`` is
assembled with ``jax.make_array_from_process_local_data``. Global batch ``step`` depends only on the
step number, so a resumed run sees exactly the batches an uninterrupted run would.

Images are sharded ``P("n")`` (batch over the mesh's ``n`` axis, replicated over the others); each
convolution reshards to its algorithm's layout. ``n`` may be smaller than the device count (a batch
smaller than the device count, ``model.algorithms: auto``: see ``MeshConfig.resolve``): devices that
differ only in the other axes hold the same rows, and a process loads each row its devices hold once
(processes whose devices are replicas load identical rows, as ``make_array_from_process_local_data``
expects).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.runner.datasets import Dataset
from jaxcnn.runner.typed import ConfigError


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


def epoch_permutation(num: int, seed: int, epoch: int) -> np.ndarray:
    """The training-set order of ``epoch`` (same on every host, independent of the process count)."""
    return np.random.default_rng([seed, epoch]).permutation(num)


def to_global(sharding: NamedSharding, local: np.ndarray, global_rows: int) -> jax.Array:
    """This process's rows ``local`` of a global batch of ``global_rows`` rows as one global array.

    The one host-to-device transfer of the input pipeline, allowed explicitly: the training loop runs
    under ``transfer_guard("disallow")``, and with more than one process
    ``make_array_from_process_local_data`` transfers through a path the guard counts as implicit.
    """
    with jax.transfer_guard_host_to_device("allow"):
        return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


def normalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(x - mean) / std`` as float32."""
    return ((x.astype(np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


class TrainBatches:
    """Global training batch number ``step``: an epoch-shuffled, drop-remainder slice of the train split.

    Args:
      data: the dataset.
      batch_size: global batch size.
      seed: shuffling seed.
      mesh: the device mesh (batch over ``n``, replicated over the other axes).

    Raises:
      ConfigError: the batch is larger than the training set or does not divide over ``n``.
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, mesh: Mesh) -> None:
        if batch_size > len(data.x_train):
            raise ConfigError(
                f"train.batch_size={batch_size} exceeds the {len(data.x_train)} training images; use a "
                "smaller batch or more data"
            )
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.sharding = batch_sharding(mesh)
        self.rows = local_rows(self.sharding, batch_size)
        self.steps_per_epoch = len(data.x_train) // batch_size
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def indices(self, step: int) -> np.ndarray:
        """Training-set indices of this process's rows of global batch ``step`` (0-based)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(len(self.data.x_train), self.seed, epoch)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size][self.rows]

    def local(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of batch ``step``: normalised float32 images and int32 labels."""
        idx = self.indices(step)
        return normalize(self.data.x_train[idx], self.data.mean, self.data.std), self.data.y_train[idx]

    def __call__(self, step: int) -> tuple[jax.Array, jax.Array]:
        """Global batch ``step`` as sharded ``jax.Array`` s (an explicit host-to-device transfer)."""
        x, y = self.local(step)
        return to_global(self.sharding, x, self.batch_size), to_global(self.sharding, y, self.batch_size)


def eval_batches(
    data: Dataset, batch_size: int, mesh: Mesh
) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """The whole test split in order, as ``(images, labels, mask)`` global batches.

    The last batch is padded with zeros; ``mask`` is 1.0 for real rows and 0.0 for padding. Every
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
        idx = np.where(valid, idx, 0)
        x = normalize(data.x_test[idx], data.mean, data.std) * valid[:, None, None, None]
        y = np.where(valid, data.y_test[idx], 0).astype(np.int32)
        yield tuple(to_global(sharding, a, batch_size) for a in (x.astype(np.float32), y, valid.astype(np.float32)))
