"""The ``cluster`` section of the run config: how a process joins a multi-process job (read by
:mod:`jaxcnn.runner.cluster`, the only caller of ``jax.distributed.initialize()``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from jaxcnn.runner.config.typed import Int, NonNegativeFloat, PositiveInt, Section, Str, fail

#: Environment variables (set by ``jaxcnn launch``) that override the ``cluster`` section.
ENV = {
    "coordinator_address": "JAXCNN_COORDINATOR_ADDRESS",
    "num_processes": "JAXCNN_NUM_PROCESSES",
    "process_id": "JAXCNN_PROCESS_ID",
}


class ClusterConfig(Section):
    """How this process joins a multi-process job (read only with ``distributed: true``)."""

    key_path: ClassVar[str] = "cluster"

    coordinator_address: Str = Field(
        "",
        description="host:port of process 0's coordinator service; empty: auto-detected (TPU, SLURM, "
        "Open MPI) or $JAXCNN_COORDINATOR_ADDRESS",
    )
    num_processes: Int = Field(
        0, ge=0, description="processes in the job; 0: auto-detected or $JAXCNN_NUM_PROCESSES"
    )
    process_id: Int = Field(
        -1,
        ge=-1,
        description="this process's id in [0, num_processes); -1: auto-detected or $JAXCNN_PROCESS_ID",
    )
    cluster_detection_method: Literal["", "slurm", "ompi", "gce_tpu", "gke_tpu", "mpi4py"] = Field(
        "", description="force one of JAX's cluster detectors; empty: try each"
    )
    initialization_timeout_s: PositiveInt = Field(
        120, description="seconds to wait for every process to connect to the coordinator"
    )
    heartbeat_timeout_s: PositiveInt = Field(
        30, description="a process that misses heartbeats this long is declared dead and the job stops"
    )
    shutdown_timeout_s: PositiveInt = Field(
        30, description="seconds the shutdown barrier waits for the other processes at exit"
    )
    dcn_cost_factor: NonNegativeFloat = Field(
        10.0,
        allow_inf_nan=False,
        description="how much dearer a byte over the data-center network (between hosts or slices) is "
        "than one over the chip interconnect; the planner weights bytes of collectives that cross "
        "hosts by it (1: all links equal)",
    )

    @field_validator("coordinator_address")
    @classmethod
    def _host_port(cls, address: str) -> str:
        if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
            fail(f"expected host:port (e.g. 10.0.0.1:1234), got {address!r}")
        return address
