"""The ``mesh`` section of the run config: device mesh sizes, resolved against the devices and batches."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, Strict, model_validator

from jaxcnn.mesh import AXES, batch_mesh_sizes
from jaxcnn.runner.config.typed import ConfigError, Section, check, fail


def _mesh_size(size: int) -> int:
    if size != -1 and size < 1:
        fail(f"must be a positive int or -1, got {size}")
    return size


MeshSize = Annotated[int, Strict(), AfterValidator(_mesh_size)]


class MeshConfig(Section):
    """Device mesh sizes, one per jaxcnn mesh axis (see :mod:`jaxcnn.mesh`).

    Exactly the product of the sizes must equal the number of devices; one size may be ``-1``, meaning
    "the rest of the devices".

    The run's input batches (train and eval) are sharded ``P("n")`` on this mesh: split over ``n``,
    replicated over the other axes, so ``n`` must divide ``train.batch_size`` and
    ``train.eval_batch_size`` (an explicit ``n`` is checked when the config loads,
    :meth:`check_batches`; ``-1`` once the devices are known, :meth:`resolve`). With
    ``model.algorithms: auto`` and ``n: -1`` a batch smaller than (or not divisible by) the device count
    still works: ``n`` becomes the largest divisor of the rest of the devices that divides the batches,
    and the remaining factor goes to ``c`` (see :meth:`resolve`).
    """

    key_path: ClassVar[str] = "mesh"

    n: MeshSize = Field(-1, description="batch axis")
    d: MeshSize = Field(1, description="output-depth axis (3-D convolutions only)")
    h: MeshSize = Field(1, description="output-row axis")
    w: MeshSize = Field(1, description="output-column axis")
    k: MeshSize = Field(1, description="output-channel axis")
    c: MeshSize = Field(1, description="input-channel axis (the 2.5d replication depth)")

    @model_validator(mode="after")
    def _one_wildcard(self) -> MeshConfig:
        wild = [a for a, s in self.sizes().items() if s == -1]
        if len(wild) > 1:
            fail(f"at most one axis may be -1, got -1 for {', '.join(wild)}")
        return self

    def sizes(self) -> dict[str, int]:
        """``{axis: size}`` as configured (may contain one -1)."""
        return {a: getattr(self, a) for a in AXES}

    def resolve(
        self,
        num_devices: int,
        batch_size: int | None = None,
        *,
        auto: bool = False,
        eval_batch_size: int | None = None,
    ) -> dict[str, int]:
        """Concrete axis sizes for ``num_devices`` devices (and, if given, the global batch sizes).

        Args:
          num_devices: devices of the run (``jax.device_count()``).
          batch_size: ``train.batch_size``; None skips the batch checks.
          auto: ``model.algorithms`` is ``auto``.
          eval_batch_size: ``train.eval_batch_size``; None skips its check.

        With ``n: -1`` and ``auto``, when the batches do not divide over the rest of the devices ``R``,
        ``n`` becomes ``gcd(R, batch_size, eval_batch_size)`` and the factor ``R / n`` multiplies ``c``
        (e.g. batch 32 on 64 devices: ``n=32, c=2``). This is free for ``auto``: every convolution gets
        its own arrangement of all the devices (a ``"alg@n=..,c=.."`` placement), so the run mesh only
        decides how the input batch is laid out - split over ``n``, replicated over the rest - before the
        first convolution reshards it to its own layout (as it does for any run mesh).

        Raises:
          ConfigError: the product does not equal ``num_devices``, the fixed sizes do not divide it, or
            (not ``auto``, or an explicit ``n``) ``n`` does not divide a batch size; the message says
            which mesh would work.
        """
        sizes = self.sizes()
        fixed = math.prod(s for s in sizes.values() if s != -1)
        wild = [a for a, s in sizes.items() if s == -1]
        if wild:
            check(
                num_devices % fixed == 0,
                f"mesh {sizes}: the fixed sizes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices, so mesh.{wild[0]}=-1 has no valid size",
            )
            sizes[wild[0]] = num_devices // fixed
        check(
            math.prod(sizes.values()) == num_devices,
            f"mesh {sizes}: product {math.prod(sizes.values())} != {num_devices} available devices; "
            "make the sizes multiply to the device count or set one axis to -1 (on a CPU-only machine, "
            "`jaxcnn train --cpu-devices N ...` gives the CPU N virtual devices)",
        )
        if batch_size is None:
            return sizes
        n = sizes["n"]
        batches = {"train.batch_size": batch_size}
        if eval_batch_size is not None:
            batches["train.eval_batch_size"] = eval_batch_size
        if all(b % n == 0 for b in batches.values()):
            return sizes
        if auto and self.n == -1:
            return batch_mesh_sizes(sizes, *batches.values())
        key, bad = next((k, b) for k, b in batches.items() if b % n)
        if self.n != -1:
            where = f"{num_devices} devices"
        elif fixed == 1:
            where = f"mesh.n=-1: all {num_devices} devices"
        else:
            where = f"mesh.n=-1: the {n} of {num_devices} devices the other axes leave"
        auto_hint = "model.algorithms=auto" if self.n == -1 else "mesh.n=-1 with model.algorithms=auto"
        if key == "train.eval_batch_size":
            raise ConfigError(
                f"train.eval_batch_size={bad} does not divide over mesh.n={n} ({where}); eval batches are "
                f"split over mesh.n like train batches: use a multiple of {n} (the last eval batch is "
                f"padded and masked), or {auto_hint}"
            )
        mesh = self._mesh_hint(n, sizes["c"], math.gcd(n, *batches.values()))
        raise ConfigError(
            f"{key}={bad} does not divide over mesh.n={n} ({where}); the input batch is split over "
            f"mesh.n, so use {mesh}, or {auto_hint}, or a batch divisible by {n}"
        )

    def _mesh_hint(self, n: int, c: int, fit: int) -> str:
        """A mesh whose ``n`` is ``fit`` (a divisor of ``n`` that divides the batches), same devices."""
        other = next((a for a, s in self.sizes().items() if s == -1 and a != "n"), None)
        if other:
            return f"mesh.n={fit} (mesh.{other}=-1 takes the rest) and placements that use {other}"
        return f"mesh.n={fit} with mesh.c={c * (n // fit)} and a placement that uses c"

    def check_batches(self, batch_size: int, eval_batch_size: int) -> None:
        """The load-time half of :meth:`resolve`'s batch check: an explicit ``mesh.n`` must divide both
        batch sizes, whatever the device count (``-1`` is checked by :meth:`resolve`, once the devices
        are known).

        Raises:
          PydanticCustomError: (inside validation) naming the batch key, ``mesh.n``, the nearest valid
            batches and a mesh that would work.
        """
        n = self.n
        if n == -1:
            return
        for key, bad in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if bad % n == 0:
                continue
            near = " or ".join(str(b) for b in (bad // n * n, bad // n * n + n) if b > 0)
            if key == "eval_batch_size":
                why = "eval batches are split over mesh.n like train batches (the last is padded and masked)"
                hint = f"use {near}, or mesh.n=-1 with model.algorithms=auto"
            else:
                why = "the input batch is split over mesh.n (each process loads the rows its devices hold)"
                mesh = self._mesh_hint(n, max(self.c, 1), math.gcd(n, batch_size, eval_batch_size))
                hint = f"use {near}, or {mesh}, or mesh.n=-1 with model.algorithms=auto"
            fail(f"must be a multiple of mesh.n={n}, got {bad}: {why}; {hint}", f"train.{key}")
