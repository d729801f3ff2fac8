"""The parts of a run's preparation: processes, mesh, model (put together by
:func:`jaxcnn.runner.prepare.prepare`; the run directory is :mod:`jaxcnn.runner.run_directory`'s).

Processes join a multi-process job through :mod:`jaxcnn.runner.cluster`; the mesh it builds is passed
explicitly to the model (no global mesh is set).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxcnn import models
from jaxcnn.mesh import host_count, make_mesh
from jaxcnn.runner import cluster
from jaxcnn.runner.autoplan import plan_algorithms
from jaxcnn.runner.config import Config, ConfigError
from jaxcnn.runner.config.typed import to_plain
from jaxcnn.timing.model import TimeModel, backend_time_model

ModelBuilder = Callable[..., nnx.Module]


def is_main_process() -> bool:
    """True on the process that logs, plots and prints (``jax.process_index() == 0``)."""
    return jax.process_index() == 0


def init_distributed(cfg: Config) -> None:
    """Joins the multi-process job (``jax.distributed.initialize``, see :mod:`jaxcnn.runner.cluster`)
    once, if ``distributed`` is set."""
    if cfg.distributed:
        cluster.initialize(cfg.cluster)


def time_model() -> tuple[TimeModel | None, str]:
    """The backend's time model (:func:`jaxcnn.timing.model.backend_time_model`), the same on every
    process: each host reads its own profile file, and processes that planned by different profiles
    would compile different programs. When they differ (or some lack one), every process goes without,
    with a note saying so."""
    model, note = backend_time_model()
    if jax.process_count() == 1:
        return model, note
    text = "" if model is None else json.dumps(model.profile.to_json(), sort_keys=True)
    # int32 words: an int64 digest would be cut to 32 bits on the devices (x64 off) and never match
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int32)
    if np.all(multihost_utils.process_allgather(digest) == digest):
        return model, note
    return None, "the processes have different timing profiles (jaxcnn calibrate on every host, or none)"


def build_mesh(cfg: Config) -> Mesh:
    """The run's mesh over all devices (``mesh`` sizes resolved against ``jax.device_count()`` and the
    train/eval batch sizes, see :meth:`Config.mesh_sizes`; input batches are sharded over its ``n``).

    Raises:
      ConfigError: the sizes do not fit the devices, or ``mesh.n`` does not divide a batch size (a
        one-line message naming the keys and a mesh that would work).
    """
    return make_mesh(**cfg.mesh_sizes(jax.device_count()))


def _algorithms(
    cfg: Config,
    mesh: Mesh,
    image_shape: tuple[int, ...],
    build: Callable[[Any], nnx.Module],
    time_model: TimeModel | None = None,
) -> Any:
    """``model.algorithms`` in the form ``jaxcnn.models.build`` takes (a str, dict or list).

    ``auto`` asks the planner (see :mod:`jaxcnn.runner.autoplan`), telling it how many hosts (TPU
    slices when there are several, else processes) the mesh's devices lie on and
    ``cluster.dcn_cost_factor``.
    """
    algs = cfg.model.algorithms
    if isinstance(algs, str) and algs == "auto":
        return plan_algorithms(
            build,
            mesh,
            cfg.train.batch_size,
            image_shape,
            cfg.model.plan_memory_bytes,
            cfg.model.dtypes,
            hosts=host_count(list(mesh.devices.flat)),
            dcn_cost_factor=cfg.cluster.dcn_cost_factor,
            # model.plan_objective: time where the backend has a profile, else bytes (prepare says so)
            time_model=time_model if cfg.model.plan_objective == "time" else None,
            optimizer=cfg.optimizer.name,
        )
    if isinstance(algs, Mapping):
        return dict(algs)
    if isinstance(algs, tuple):
        return list(algs)
    return algs


def model_builder(
    cfg: Config,
    mesh: Mesh,
    num_classes: int,
    image_shape: tuple[int, ...],
    builder: ModelBuilder | None = None,
    *,
    time_model: TimeModel | None = None,
) -> Callable[[], nnx.Module]:
    """A zero-argument function that builds the configured network on ``mesh`` with parameters from
    ``nnx.Rngs(cfg.seed)``: placements resolved (``auto`` planned) once, now; the model may then be
    built abstractly (``nnx.eval_shape``) and for real.

    Args:
      cfg: the run config (``model`` section and ``seed``).
      mesh: the run's mesh.
      num_classes: classifier width.
      image_shape: ``(H, W, C)`` of the inputs.
      builder: a function with ``jaxcnn.models.build``'s signature (default: ``jaxcnn.models.build``).
      time_model: the backend's time model; ``auto`` with ``model.plan_objective: time`` plans by it
        (None: by bytes).

    Raises:
      ConfigError: (here for ``auto``, else when the function is called) one line naming the key, for
        what the builder rejects: layer names in ``model.algorithms`` the network does not have, a list
        whose length differs from the number of conv layers (both listing the network's convolutions),
        a placement the mesh cannot take, a ``model.options`` key the model's constructor does not take.
    """
    builder = models.build if builder is None else builder

    def construct(algorithms: Any) -> nnx.Module:
        return builder(
            cfg.model.name,
            num_classes=num_classes,
            in_channels=image_shape[-1],
            mesh=mesh,
            algorithms=algorithms,
            dtype=jnp.dtype(cfg.model.dtype),
            reduce_dtype=jnp.dtype(cfg.model.reduce_dtype),
            rngs=nnx.Rngs(cfg.seed),
            **dict(cfg.model.options),
        )

    def conv_names() -> tuple[str, ...] | None:
        """The network's convolutions in list order (an abstract build with ``data``), if it says."""
        try:
            model = nnx.eval_shape(lambda: construct(f"data@n={mesh.devices.size}"))
            return tuple(model.conv_names)
        except Exception:
            return None

    def build(algorithms: Any) -> nnx.Module:
        try:
            return construct(algorithms)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            message = " ".join(str(e).split())
            if isinstance(e, TypeError):
                if "keyword argument" not in message:
                    raise
                raise ConfigError(
                    f"model.options={to_plain(cfg.model.options)}: model {cfg.model.name!r} rejects them: "
                    f"{message}"
                ) from None
            given = to_plain(cfg.model.algorithms)
            if "placement" not in message and "algorithm" not in message:
                raise ConfigError(
                    f"model.name={cfg.model.name!r} with model.options={to_plain(cfg.model.options)}: "
                    f"{message}"
                ) from None
            names = None if isinstance(given, str) else conv_names()
            listing = (
                f"; its {len(names)} convolutions, in list order: {', '.join(names)}"
                if names and not all(name in message for name in names)
                else ""
            )
            raise ConfigError(f"model.algorithms={given}: {message}{listing}") from None

    algorithms = _algorithms(cfg, mesh, image_shape, build, time_model)
    return lambda: build(algorithms)


def build_model(
    cfg: Config,
    mesh: Mesh,
    num_classes: int,
    image_shape: tuple[int, ...],
    builder: ModelBuilder | None = None,
) -> nnx.Module:
    """The configured network on ``mesh``, built now (:func:`model_builder`'s function, called)."""
    return model_builder(cfg, mesh, num_classes, image_shape, builder)()
