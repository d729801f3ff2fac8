"""A compiled program's metered collectives as the time model prices them.

:func:`metered_link` turns a :class:`jaxcnn.measure.CommReport` (collectives read from compiled HLO)
into the :class:`jaxcnn.links.LinkBytes` the cost model accumulates for a prediction: per device and
per collective kind, the bytes received, the latency terms (:func:`jaxcnn.cost.latency_steps` of each
collective's group, times its executions), the calls, and the part that crosses hosts. So any
program, jaxcnn's or another's (a GSPMD train step, ``experiments/project_step_time.py``), can be
priced by :meth:`jaxcnn.timing.model.TimeModel.comm_seconds` from what it really issues.

Conventions are the ledger's (:class:`jaxcnn.cost.Ledger`): every device takes part in a permute
(one call each), the receivers take one latency term; a group collective gives each member
``latency_steps(kind, len(group))`` terms; a collective crosses hosts when its group spans more than
one host of ``hosts`` equal consecutive groups of the flat device order (a permute: its source and
target on different hosts), and then all its bytes and terms count as crossing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jaxcnn import links
from jaxcnn.cost import latency_steps

if TYPE_CHECKING:  # measure/ and timing/ are one layer (docs/architecture.md): no runtime import
    from jaxcnn.measure.report import CommReport


def metered_link(report: CommReport, hosts: int = 1) -> links.LinkBytes:
    """Per-device bytes, latency terms, calls and cross-host parts of a metered program, by kind.

    Raises:
      ValueError: ``hosts`` does not divide the program's device count.
    """
    n = report.num_devices
    links.check_hosts(n, hosts)
    host = links.host_of(n, hosts)
    out = links.LinkBytes(dcn=np.zeros(n), dcn_steps=np.zeros(n))
    for op in report.ops:
        received = np.asarray(op.per_device, dtype=float)
        steps, crosses = np.zeros(n), np.zeros(n, dtype=bool)
        if op.kind == "collective-permute":
            calls = np.ones(n)
            for source, target in op.groups:
                steps[target] += 1.0
                crosses[target] |= host[source] != host[target]
        else:
            calls = np.zeros(n)
            for group in op.groups:
                members = list(group)
                calls[members] = 1.0
                steps[members] = latency_steps(op.kind, len(members))
                crosses[members] = len(set(host[members].tolist())) > 1
        steps, calls = steps * op.executions, calls * op.executions
        out.merge(
            links.LinkBytes(
                {op.kind: received},
                received * crosses,
                {op.kind: steps},
                steps * crosses,
                {op.kind: calls},
            )
        )
    return out
