"""Parsing compiled HLO text into a :class:`~jaxcnn.measure.report.CommReport` (see :mod:`jaxcnn.measure`)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from jaxcnn.measure.report import KINDS, CollectiveOp, CommReport, HloParseError

_UNSUPPORTED = ("send", "recv", "collective-broadcast", "ragged-all-to-all")
_ELEMENT_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16,
    "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64, "c64": 64, "c128": 128,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALL = re.compile(
    r"(?:^|[\s,])(condition|body|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
)
_CALL_LIST = re.compile(r"(?:^|[\s,])(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)"?')
_IOTA = re.compile(r"^\[([\d,]+)\](?:<=\[([\d,]+)\])?(?:T\(([\d,]+)\))?")

# ----------------------------------------------------------------------------- HLO text parsing


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise HloParseError(f"unbalanced brackets in {text[start : start + 80]!r}")


def _split_top(inner: str) -> list[str]:
    """Splits a tuple body at depth-0 commas."""
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(inner[last:i].strip())
            last = i + 1
    if inner[last:].strip():
        parts.append(inner[last:].strip())
    return parts


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string, tuples summed (``f32[2,3]{1,0}``, ``(bf16[4], s32[])``)."""
    bits = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _ELEMENT_BITS:
            if dtype == "token":
                continue
            if dtype.startswith("f8") or dtype.startswith("f4") or dtype.startswith("f6"):
                width = int(dtype[1])
            else:
                raise HloParseError(f"unknown element type {dtype!r} in shape {shape!r}")
        else:
            width = _ELEMENT_BITS[dtype]
        n = math.prod(int(d.replace("<=", "")) for d in dims.split(",") if d.strip())
        bits += n * width
    return -(-bits // 8)


def _parse_groups(attrs: str, num_devices: int) -> tuple[tuple[int, ...], ...]:
    key = "replica_groups="
    at = attrs.find(key)
    if at < 0:
        return (tuple(range(num_devices)),)
    body = attrs[at + len(key) :]
    iota = _IOTA.match(body)
    if iota:
        shape = [int(v) for v in iota.group(1).split(",")]
        return tuple(tuple(int(v) for v in row) for row in _iota(body).reshape(shape))
    if body.startswith(("mesh[", "maximal_mesh[")):
        return _mesh_groups(body)
    if not body.startswith("{"):
        raise HloParseError(f"cannot parse replica_groups in {body[:80]!r}")
    inner = body[1 : _balanced(body, 0) - 1]
    groups = tuple(tuple(int(v) for v in g.split(",") if v) for g in re.findall(r"\{([\d,]*)\}", inner))
    return groups or (tuple(range(num_devices)),)


def _iota(spec: str) -> np.ndarray:
    """Device ids of an iota list ``[a,b]<=[c,d]T(1,0)`` or ``[a,b,c]T(0,2,1)`` (flattened).

    Without ``<=[...]`` the iota is reshaped to the leading dims themselves before transposing.
    """
    iota = _IOTA.match(spec)
    if not iota:
        raise HloParseError(f"cannot parse iota device list {spec[:80]!r}")
    dims = [int(v) for v in (iota.group(2) or iota.group(1)).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota.group(3):
        ids = ids.transpose([int(v) for v in iota.group(3).split(",")])
    return ids.reshape(-1)


def _mesh_groups(body: str) -> tuple[tuple[int, ...], ...]:
    """Groups of the mesh-axes form ``mesh['a'=2,'b'=4], device_ids=(...) {'b','a':(1)2}``.

    The devices (iota, or ``device_ids``) are laid out on the named mesh; a group is the set of
    devices that differ only along the listed axes (``'a':(pre)size`` is the sub-axis of size
    ``size`` after ``pre`` major positions of axis ``a``).
    """
    if body.startswith("maximal_mesh["):
        return ((int(re.search(r"device_id=(\d+)", body).group(1)),),)
    close = body.index("]")
    axes = [re.fullmatch(r"'?([^'=]+)'?=(\d+)", a.strip()) for a in body[5:close].split(",")]
    if not all(axes):
        raise HloParseError(f"cannot parse mesh axes in {body[:120]!r}")
    names = [a.group(1) for a in axes]
    sizes = [int(a.group(2)) for a in axes]
    rest = body[close + 1 :].lstrip()
    ids = np.arange(math.prod(sizes))
    if rest.startswith(", device_ids=("):
        start = rest.index("(")
        end = _balanced(rest, start)
        inner = rest[start + 1 : end - 1].strip()
        ids = _iota(inner) if inner.startswith("[") else np.array([int(v) for v in re.findall(r"\d+", inner)])
        rest = rest[end:].lstrip()
    if not rest.startswith("{"):
        raise HloParseError(f"cannot parse mesh replica groups {body[:120]!r}")
    dims: list[int] = []
    where: dict[tuple[str, int, int], int] = {}  # (axis, pre, size) -> dim of the split array
    picked = [g.strip() for g in rest[1 : rest.index("}")].split(",") if g.strip()]
    subs: dict[str, list[tuple[int, int]]] = {name: [] for name in names}
    keys = []
    for g in picked:
        m = re.fullmatch(r"'?([^':]+)'?(?::\((\d+)\)(\d+))?", g)
        if not m or m.group(1) not in subs:
            raise HloParseError(f"unknown mesh axis {g!r} in {body[:120]!r}")
        if m.group(2):
            subs[m.group(1)].append((int(m.group(2)), int(m.group(3))))
            keys.append((m.group(1), int(m.group(2)), int(m.group(3))))
        else:
            keys.append((m.group(1), 1, sizes[names.index(m.group(1))]))
    for name, size in zip(names, sizes, strict=True):
        pos = 1
        for pre, sub in sorted(subs[name]):  # split the axis: major gap, sub-axis, ..., minor rest
            if pre > pos:
                dims.append(pre // pos)
            where[(name, pre, sub)] = len(dims)
            dims.append(sub)
            pos = pre * sub
        if not subs[name]:
            where[(name, 1, size)] = len(dims)
        dims.append(size // pos if subs[name] else size)
    group_dims = [where[key] for key in keys]
    arr = ids.reshape(dims)
    rest_dims = [d for d in range(len(dims)) if d not in group_dims]
    size = math.prod(dims[d] for d in group_dims)
    return tuple(
        tuple(int(v) for v in row) for row in arr.transpose(rest_dims + group_dims).reshape(-1, size)
    )


def _parse_pairs(attrs: str) -> tuple[tuple[int, int], ...]:
    at = attrs.find("source_target_pairs=")
    if at < 0:
        raise HloParseError(f"collective-permute without source_target_pairs: {attrs[:120]!r}")
    body = attrs[at + len("source_target_pairs=") :]
    inner = body[: _balanced(body, 0)]
    return tuple((int(a), int(b)) for a, b in re.findall(r"\{\s*(\d+)\s*,\s*(\d+)\s*\}", inner))


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    attrs: str


def _parse_instr(name: str, rest: str) -> _Instr:
    if rest.startswith("("):
        end = _balanced(rest, 0)
    else:
        end = rest.find(" ")
        end = len(rest) if end < 0 else end
    shape, tail = rest[:end], rest[end:].lstrip()
    m = re.match(r"([\w\-]+)\(", tail)
    if not m:
        return _Instr(name, shape, tail.split(" ")[0], "")
    close = _balanced(tail, m.end() - 1)
    return _Instr(name, shape, m.group(1), tail[close:])


def parse_computations(text: str) -> tuple[dict[str, list[_Instr]], str]:
    """HLO module text → ``({computation: [instructions]}, entry name)``."""
    comps: dict[str, list[_Instr]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.startswith("HloModule"):
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(_parse_instr(m.group(1), m.group(2)))
    if entry is None:
        raise HloParseError("no ENTRY computation in the HLO text")
    return comps, entry


def _result_shape(ins: _Instr, kind: str) -> str:
    """The result part of a (possibly async ``-start``) collective's shape."""
    if not ins.opcode.endswith("-start"):
        return ins.shape
    if not ins.shape.startswith("("):
        return ins.shape
    parts = _split_top(ins.shape[1:-1])
    if kind == "all-reduce" and not parts[0].startswith("("):
        return ins.shape  # all-reduce-start: shaped like its result
    return parts[1]  # (operands, result, context...) for every other -start form


def _charge(ins: _Instr, kind: str, num_devices: int, executions: int, comp: str) -> CollectiveOp:
    result = shape_bytes(_result_shape(ins, kind))
    vec = np.zeros(num_devices)
    permute = kind == "collective-permute"
    groups = _parse_pairs(ins.attrs) if permute else _parse_groups(ins.attrs, num_devices)
    if max((max(g) for g in groups if g), default=0) >= num_devices:
        raise HloParseError(f"{ins.name} names device ids beyond num_devices={num_devices}")
    if permute:
        for src, dst in groups:
            if src != dst:
                vec[dst] += result
        buffer = result
    else:
        p = max(len(g) for g in groups)
        buffer = result * p if kind == "reduce-scatter" else result
        factor = 2.0 if kind == "all-reduce" else 1.0
        for g in groups:
            if len(g) > 1:
                vec[list(g)] += factor * buffer * (len(g) - 1) / len(g)
    return CollectiveOp(ins.name, kind, comp, executions, buffer, groups, tuple(vec * executions))


def measure_hlo_text(text: str, num_devices: int | None = None) -> CommReport:
    """Meters HLO module text (e.g. ``compiled.as_text()``).

    Args:
      text: the post-partitioning HLO module.
      num_devices: devices of the program; default ``num_partitions * replica_count`` of the header.

    Raises:
      HloParseError: a while loop without a known trip count, an unsupported collective
        (send/recv, collective-broadcast, ragged-all-to-all), or malformed groups.
    """
    if num_devices is None:
        parts = re.search(r"num_partitions=(\d+)", text)
        reps = re.search(r"replica_count=(\d+)", text)
        num_devices = (int(parts.group(1)) if parts else 1) * (int(reps.group(1)) if reps else 1)
    comps, entry = parse_computations(text)
    ops: list[CollectiveOp] = []
    notes: list[str] = []

    def visit(comp: str, mult: int, depth: int) -> None:
        if comp not in comps:
            raise HloParseError(f"called computation {comp!r} is not defined in the HLO text")
        if depth > 64:
            raise HloParseError(f"call graph deeper than 64 at {comp!r}")
        for ins in comps[comp]:
            base = ins.opcode.removesuffix("-start")
            if base in _UNSUPPORTED:
                raise HloParseError(f"unsupported collective {ins.opcode} ({ins.name}); cannot meter it")
            if base in KINDS:
                ops.append(_charge(ins, base, num_devices, mult, comp))
                continue  # an async wrapper's called computation holds the same op: not again
            if ins.opcode in ("async-update", "async-done") or ins.opcode.endswith("-done"):
                continue
            factor = 1
            if ins.opcode == "while":
                trip = _TRIP.search(ins.attrs)
                if trip is None:
                    raise HloParseError(
                        f"while loop {ins.name} in {comp} has no known_trip_count in its backend_config; "
                        "the meter cannot tell how often its body's collectives run"
                    )
                factor = int(trip.group(1))
            if ins.opcode == "conditional" and ins.attrs:
                notes.append(f"conditional {ins.name}: every branch charged (upper bound)")
            for key, callee in _CALL.findall(ins.attrs):
                visit(callee, mult * (factor + 1 if key == "condition" else factor), depth + 1)
            for _, callees in _CALL_LIST.findall(ins.attrs):
                for callee in callees.split(","):
                    visit(callee.strip().lstrip("%"), mult * factor, depth + 1)

    visit(entry, 1, 0)
    return CommReport(num_devices=num_devices, ops=tuple(ops), notes=tuple(dict.fromkeys(notes)))
