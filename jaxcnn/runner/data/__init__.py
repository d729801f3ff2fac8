"""The input pipeline: image sources, the grain pipeline, and global batches on the mesh.

- :mod:`.datasets`: image sources (digits, synthetic, npz, image folder, ArrayRecord, ellipsoids) as a
  :class:`Dataset`; :mod:`.records`: the ArrayRecord format; :mod:`.ellipsoids`: the generated
  segmentation task; :mod:`.cli`: ``jaxcnn data convert``;
- :mod:`.pipeline`: per-epoch shuffling by ``(seed, epoch)``, each process's rows of each global batch
  read by grain (:class:`LocalBatches`), assembled into sharded arrays (:class:`TrainBatches`), and
  the test split in padded, masked batches (:func:`eval_batches`);
- :mod:`.sharding`: which rows a process holds, and the one host-to-device transfer.
"""

from jaxcnn.runner.data.datasets import Dataset, image_spec, load_dataset
from jaxcnn.runner.data.pipeline import LocalBatches, TrainBatches, epoch_permutation, eval_batches, normalize
from jaxcnn.runner.data.sharding import batch_sharding, local_rows, to_global

__all__ = [
    "Dataset",
    "LocalBatches",
    "TrainBatches",
    "batch_sharding",
    "epoch_permutation",
    "eval_batches",
    "image_spec",
    "load_dataset",
    "local_rows",
    "normalize",
    "to_global",
]
