"""Input batches on the mesh: which rows of a global batch a process loads, and the global array.

Every process loads only the rows its devices hold (:func:`local_rows`; the grain pipeline of
:mod:`jaxcnn.runner.data.pipeline` reads them); the global ``jax.Array`` is assembled with
``jax.make_array_from_process_local_data`` (:func:`to_global`).

Images are sharded ``P("n")`` (batch over the mesh's ``n`` axis, replicated over the others); each
convolution reshards to its algorithm's layout. ``n`` may be smaller than the device count (a batch
smaller than the device count, ``model.algorithms: auto``: see ``MeshConfig.resolve``): devices that
differ only in the other axes hold the same rows, and a process loads each row its devices hold once
(processes whose devices are replicas load identical rows, as ``make_array_from_process_local_data``
expects).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.runner.config.typed import ConfigError


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
