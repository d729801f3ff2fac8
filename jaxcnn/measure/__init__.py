"""Communication meter: bytes each device receives, read from the compiled (post-SPMD) HLO.

Programs are lowered and compiled with abstract inputs (``jax.ShapeDtypeStruct`` with a
``NamedSharding``), never executed, so a 512-device mesh of fake CPU devices is enough to meter a
layer. Every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute of
``compiled.as_text()`` is charged by the rule of ``docs/conventions.md`` ("Counting communication";
group size ``p``, ``S`` the full gathered / unreduced buffer):

| op | bytes received per device in a group |
|---|---|
| all-gather (result S) | S·(p-1)/p |
| reduce-scatter (operand S = p·result) | S·(p-1)/p |
| all-reduce (S) | 2·S·(p-1)/p |
| all-to-all (S) | S·(p-1)/p |
| collective-permute (S) | S for each target of a pair |

Async ``-start``/``-done`` pairs are charged once (at the start); tuple-shaped collectives sum their
buffers. Ops inside ``while`` bodies are multiplied by the loop's ``known_trip_count`` (and by the
multiplicity of every computation on the call path); a loop without a known trip count is an error,
never a silent undercount. Both branches of a ``conditional`` are charged (an upper bound, noted in
:attr:`CommReport.notes`). Replica-group ids are read as device ids (partition ids of an SPMD
program, replica ids of a replicated one); groups come in explicit (``{{0,1},{2,3}}``), empty
(``{}``: all devices), iota (``[2,4]<=[4,2]T(1,0)``) or mesh-axes (``mesh['a'=2,'b'=4] {'b'}``) form.
"""

from jaxcnn.measure.compile import measure, measure_conv, measure_fwd_bwd, meter_compiled
from jaxcnn.measure.hlo import measure_hlo_text, parse_computations, shape_bytes
from jaxcnn.measure.report import KINDS, CollectiveOp, CommReport, HloParseError, KindStats, MemoryStats

__all__ = [
    "KINDS",
    "CollectiveOp",
    "CommReport",
    "HloParseError",
    "KindStats",
    "MemoryStats",
    "measure",
    "measure_conv",
    "measure_fwd_bwd",
    "measure_hlo_text",
    "meter_compiled",
    "parse_computations",
    "shape_bytes",
]
