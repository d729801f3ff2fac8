"""Explicit layout changes: moving an array between two shardings with collectives jaxcnn chooses.

A *layout* is a ``PartitionSpec`` on a mesh. Consecutive layers of a jaxcnn model run on differently
shaped meshes over the same devices (``data@n=64`` then ``3d@n=16,k=2,c=2``), so an activation must
change layout between them. Left to XLA's SPMD partitioner (a sharding constraint), such changes are
sometimes lowered as "replicate, then re-partition" (the compile log's *Involuntary full
rematerialization*). :func:`redistribute` never leaves them to XLA: it plans a short sequence of
collectives and runs it in one ``shard_map``.

**Common refinement.** Two meshes over the same devices in the same (row-major) order are both
coarsenings of one *fine* mesh ``F`` whose axes ``f0, f1, ...`` are the merged radices of both
(for 64 devices as ``n=64`` and ``n=16,k=2,c=2``: ``F = (16, 2, 2)``; ``n`` of the first mesh is
``("f0", "f1", "f2")``). Both layouts become specs on ``F``; when the device counts have no common
refinement (e.g. 12 devices as 3x4 and 4x3) the change falls back to a full all-gather on the source
mesh and a local slice on the target.

**Steps** (greedy, cheapest first; each a single collective over a tuple of fine axes):

==============  ============================================  =========================================
step            when                                          bytes received per device
==============  ============================================  =========================================
slice           an axis the target splits a dimension over    0 (``dynamic_slice`` by ``axis_index``)
                is free (replicated) in the current layout
permute         same blocks per dimension, other device order  |local| (devices whose block changes)
all-to-all      tail axes of one dimension move to the tails   |local|·(G-1)/G
                of others
all-gather      tail axes of a dimension that cannot move      |local|·(G-1)
==============  ============================================  =========================================

(``|local|`` is the local block before the step, ``G`` the product of the step's axis sizes.) The
planner prices a change with exactly these steps (:meth:`Redistribution.traffic`), and
``tests/test_redistribute.py`` checks them against the compiled HLO. On several hosts,
:meth:`Redistribution.dcn_traffic` gives the part of those bytes that crosses hosts
(:mod:`jaxcnn.links`); the steps themselves are chosen by bytes alone.

**Backward pass.** A layout change is the identity on the logical (global) array, so its VJP is the
identity on the cotangent, moved back from the target layout to the source: :func:`redistribute` is
a ``jax.custom_vjp`` whose backward is the planned change ``dst → src`` (all-gather ↔ slice, not the
all-reduce that differentiating through a slice of a replicated value would give).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn import common_mesh, links
from jaxcnn.dtypes import as_bits, from_bits
from jaxcnn.padding import crop_to, pad_to

Entries = tuple[tuple[str, ...], ...]


def _entry_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def spec_entries(spec: P, ndim: int) -> Entries:
    """A PartitionSpec as one tuple of mesh-axis names per array dimension."""
    entries = tuple(spec)
    if len(entries) > ndim:
        raise ValueError(f"PartitionSpec {spec} has {len(entries)} entries for a rank-{ndim} array")
    return tuple(_entry_axes(e) for e in entries) + ((),) * (ndim - len(entries))


def as_spec(entries: Sequence[Sequence[str]]) -> P:
    """A PartitionSpec from axis-name tuples (``()`` → ``None``, one name → that name)."""
    return P(*(None if not e else e[0] if len(e) == 1 else tuple(e) for e in entries))


# ----------------------------------------------------------------------------- the fine mesh


def _boundaries(sizes: Sequence[int]) -> list[int]:
    """Suffix products ``prod(sizes[j:])`` of a row-major mesh, plus 1."""
    return [math.prod(sizes[j:]) for j in range(len(sizes))] + [1]


def refine(sizes_a: Sequence[int], sizes_b: Sequence[int]) -> tuple[int, ...] | None:
    """Radices of the coarsest mesh both row-major meshes coarsen, or None if there is none."""
    marks = sorted(set(_boundaries(sizes_a)) | set(_boundaries(sizes_b)), reverse=True)
    if any(hi % lo for hi, lo in itertools.pairwise(marks)):
        return None
    return tuple(hi // lo for hi, lo in itertools.pairwise(marks))


def _axis_runs(names: Sequence[str], sizes: Sequence[int], fine: Sequence[int]) -> dict[str, tuple[str, ...]]:
    """Each mesh axis as the run of fine axes (major to minor) that it is made of."""
    marks = [math.prod(fine[i:]) for i in range(len(fine))] + [1]
    runs = {}
    for j, name in enumerate(names):
        hi, lo = math.prod(sizes[j:]), math.prod(sizes[j + 1 :])
        runs[name] = tuple(f"f{i}" for i in range(len(fine)) if marks[i] <= hi and marks[i + 1] >= lo)
    return runs


def _to_fine(entries: Entries, runs: dict[str, tuple[str, ...]]) -> Entries:
    return tuple(tuple(f for a in entry for f in runs[a]) for entry in entries)


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class Step:
    """One collective (or local slice) of a layout change, on the fine mesh.

    Attributes:
      kind: ``"slice"``, ``"permute"``, ``"all-to-all"``, ``"all-gather"`` or ``"gather-all"`` (the
        fallback without a common refinement).
      axes: fine axes it runs over (major to minor).
      dim: array dimension sliced / gathered.
      src_groups, dst_groups: all-to-all only: ``((dim, axes major to minor), ...)``: the axes that leave
        the tail of each source dimension and those appended to each target dimension.
      perm: permute only: ``(source, target)`` pairs of linear indices over ``axes`` (all devices).
      local_before: elements of the local block before the step.
    """

    kind: str
    axes: tuple[str, ...]
    dim: int = -1
    src_groups: tuple[tuple[int, tuple[str, ...]], ...] = ()
    dst_groups: tuple[tuple[int, tuple[str, ...]], ...] = ()
    perm: tuple[tuple[int, int], ...] = ()
    local_before: int = 0


#: The HLO collective each step kind compiles to (slices are local).
_HLO_KIND = {
    "permute": "collective-permute",
    "gather-all": "all-gather",
    "all-gather": "all-gather",
    "all-to-all": "all-to-all",
}


@dataclasses.dataclass(frozen=True)
class Redistribution:
    """A planned layout change of an array of ``shape`` (padded so every split divides it).

    Attributes:
      shape: the array's global shape.
      padded: ``shape`` rounded up per dimension to a multiple of both layouts' block counts.
      fine: ``((name, size), ...)`` of the fine mesh (``()`` for the gather-all fallback).
      src, dst: the two layouts as fine-axis entries per dimension.
      steps: what runs, in order (empty: the layouts already agree; nothing moves).
    """

    shape: tuple[int, ...]
    padded: tuple[int, ...]
    fine: tuple[tuple[str, int], ...]
    src: Entries
    dst: Entries
    steps: tuple[Step, ...]

    @property
    def num_devices(self) -> int:
        return math.prod(s for _, s in self.fine)

    def traffic(self, itemsize: int) -> np.ndarray:
        """Bytes each device receives (a vector over devices, row-major over the fine mesh)."""
        return sum(self.traffic_by_kind(itemsize).values(), np.zeros(max(1, self.num_devices)))

    def traffic_by_kind(self, itemsize: int) -> dict[str, np.ndarray]:
        """:meth:`traffic` split by HLO collective kind."""
        kinds: dict[str, np.ndarray] = {}
        for step in self.steps:
            if step.kind != "slice":
                out = kinds.setdefault(_HLO_KIND[step.kind], np.zeros(max(1, self.num_devices)))
                out += self._received(step, itemsize)
        return kinds

    def dcn_traffic(self, itemsize: int, hosts: int) -> np.ndarray:
        """The part of :meth:`traffic` that crosses hosts when the devices (in this flat order) are split
        over ``hosts`` hosts (:mod:`jaxcnn.links`: all of a step whose group spans hosts; of a permute,
        what comes from another host)."""
        return self.link_bytes(itemsize, hosts).dcn

    def _crosses(self, step: Step, hosts: int) -> np.ndarray:
        """Per device, whether ``step`` moves its bytes over the DCN (:mod:`jaxcnn.links`)."""
        if hosts == 1:
            return np.zeros(max(1, self.num_devices), bool)
        if step.kind == "permute":
            return links.source_crosses(self._sources(step), hosts)
        names = [a for a, _ in self.fine]
        return links.group_crosses([s for _, s in self.fine], [names.index(a) for a in step.axes], hosts)

    def _latency(self, step: Step) -> np.ndarray | float:
        """Latency terms per device of one (non-slice) step (:func:`jaxcnn.cost.latency_steps`)."""
        if step.kind == "permute":
            moved = {t for s, t in step.perm if s != t}
            return np.isin(self._linear(step.axes), list(moved)).astype(float)
        sizes = dict(self.fine)
        group = math.prod(sizes[a] for a in step.axes) if step.kind != "gather-all" else self.num_devices
        return float(group - 1)  # all-gather and all-to-all: a ring of g - 1 steps

    def link_bytes(self, itemsize: int, hosts: int = 1) -> links.LinkBytes:
        """Bytes received per device by HLO kind, the part over the DCN (``hosts`` hosts), the latency
        terms and the calls of the steps (:class:`jaxcnn.links.LinkBytes`)."""
        num = max(1, self.num_devices)
        out = links.LinkBytes(dcn=np.zeros(num), dcn_steps=np.zeros(num))
        for step in self.steps:
            if step.kind == "slice":
                continue
            kind = _HLO_KIND[step.kind]
            received, latency = self._received(step, itemsize), self._latency(step) + np.zeros(num)
            crosses = self._crosses(step, hosts)
            out.kinds[kind] = out.kinds.get(kind, np.zeros(num)) + received
            out.steps[kind] = out.steps.get(kind, np.zeros(num)) + latency
            out.calls[kind] = out.calls.get(kind, np.zeros(num)) + (latency > 0)
            out.dcn = out.dcn + received * crosses
            out.dcn_steps = out.dcn_steps + latency * crosses
        return out

    def _received(self, step: Step, itemsize: int) -> np.ndarray | float:
        """Bytes each device receives in one (non-slice) step (a scalar where all receive the same)."""
        sizes = dict(self.fine)
        group = math.prod(sizes[a] for a in step.axes) if step.kind != "gather-all" else self.num_devices
        if step.kind in ("all-gather", "gather-all"):
            return step.local_before * (group - 1) * itemsize
        if step.kind == "all-to-all":
            return step.local_before * (group - 1) / group * itemsize
        moved = {t for s, t in step.perm if s != t}
        return np.isin(self._linear(step.axes), list(moved)) * step.local_before * itemsize

    def _linear(self, axes: Sequence[str]) -> np.ndarray:
        """Each device's linear index over the fine ``axes`` (major to minor)."""
        sizes = dict(self.fine)
        names = [a for a, _ in self.fine]
        coords = np.indices([sizes[a] for a in names]).reshape(len(names), -1)
        lin = np.zeros(coords.shape[1], np.int64)
        for a in axes:
            lin = lin * sizes[a] + coords[names.index(a)]
        return lin

    def _sources(self, step: Step) -> np.ndarray:
        """For a permute step, the flat index of the device each device receives from (-1: none)."""
        sizes = dict(self.fine)
        names = [a for a, _ in self.fine]
        strides = {a: math.prod(s for _, s in self.fine[names.index(a) + 1 :]) for a in names}
        source_of = np.full(math.prod(sizes[a] for a in step.axes), -1, np.int64)
        for s, t in step.perm:
            if s != t:
                source_of[t] = s
        lin = self._linear(step.axes)
        src = source_of[lin]
        offset = np.zeros_like(lin)
        for a, here, there in zip(
            step.axes,
            np.unravel_index(lin, [sizes[a] for a in step.axes]),
            np.unravel_index(np.maximum(src, 0), [sizes[a] for a in step.axes]),
            strict=True,
        ):
            offset += (there - here) * strides[a]
        return np.where(src >= 0, np.arange(len(lin)) + offset, -1)

    def bytes(self, itemsize: int) -> float:
        """Max over devices of the bytes received."""
        return float(self.traffic(itemsize).max()) if self.steps else 0.0

    def counts(self) -> dict[str, int]:
        """Collectives by HLO kind (slices are local and not counted)."""
        out: dict[str, int] = {}
        for step in self.steps:
            if step.kind != "slice":
                out[_HLO_KIND[step.kind]] = out.get(_HLO_KIND[step.kind], 0) + 1
        return out


def _parts(entry: Sequence[str], sizes: dict[str, int]) -> int:
    return math.prod(sizes[a] for a in entry)


def _local(shape: Sequence[int], entries: Entries, sizes: dict[str, int]) -> int:
    return math.prod(s // _parts(e, sizes) for s, e in zip(shape, entries, strict=True))


def _is_prefix(a: Sequence[str], b: Sequence[str]) -> bool:
    return tuple(b[: len(a)]) == tuple(a)


def _permutation(cur: Entries, dst: Entries, sizes: dict[str, int]) -> tuple[tuple[str, ...], tuple]:
    """Axes and ``(source, target)`` pairs of the permute that turns layout ``cur`` into ``dst``."""
    axes = tuple(a for e in cur for a in e)
    coords = np.indices([sizes[a] for a in axes]).reshape(len(axes), -1)
    pos = {a: i for i, a in enumerate(axes)}

    def blocks(entries: Entries) -> np.ndarray:
        """Each device's block index, linearised over all dimensions (one integer per device)."""
        out = np.zeros(coords.shape[1], np.int64)
        for e in entries:
            index = np.zeros(coords.shape[1], np.int64)
            for a in e:
                index = index * sizes[a] + coords[pos[a]]
            out = out * _parts(e, sizes) + index
        return out

    holder = np.empty(coords.shape[1], np.int64)
    holder[blocks(cur)] = np.arange(coords.shape[1])
    sources = holder[blocks(dst)]
    return axes, tuple(zip(sources.tolist(), range(coords.shape[1]), strict=True))


def _greedy(shape: Sequence[int], src: Entries, dst: Entries, sizes: dict[str, int]) -> tuple[Step, ...]:
    cur = [tuple(e) for e in src]
    steps: list[Step] = []
    ndim = len(shape)

    def used() -> set[str]:
        return {a for e in cur for a in e}

    def local() -> int:
        return _local(shape, tuple(cur), sizes)

    for _ in range(8 * (len(sizes) + ndim) + 8):
        # 1. free slices: the target's next axis of a dimension is replicated now.
        for d in range(ndim):
            while (
                _is_prefix(cur[d], dst[d]) and len(cur[d]) < len(dst[d]) and dst[d][len(cur[d])] not in used()
            ):
                take = []
                for a in dst[d][len(cur[d]) :]:
                    if a in used() or a in take:
                        break
                    take.append(a)
                steps.append(Step("slice", tuple(take), dim=d, local_before=local()))
                cur[d] = cur[d] + tuple(take)
        if tuple(cur) == tuple(dst):
            return tuple(steps)
        # 2. one permute finishes when every dimension has its target block count over the same axes.
        if used() == {a for e in dst for a in e} and all(
            _parts(c, sizes) == _parts(t, sizes) for c, t in zip(cur, dst, strict=True)
        ):
            axes, pairs = _permutation(tuple(cur), dst, sizes)
            steps.append(Step("permute", axes, perm=pairs, local_before=local()))
            return tuple(steps)
        # 3. all-to-all: tail axes of dimensions move to the ends of the dimensions that want them next.
        sources = [d for d in range(ndim) if not _is_prefix(cur[d], dst[d])]
        grown = {e: cur[e] for e in range(ndim) if e not in sources}
        rest = {d: cur[d] for d in sources}
        moves: list[tuple[str, int, int]] = []
        progress = True
        while progress:
            progress = False
            for d in sources:
                if not rest[d] or _is_prefix(rest[d], dst[d]):
                    continue
                a = rest[d][-1]
                target = next(
                    (e for e in grown if len(grown[e]) < len(dst[e]) and dst[e][len(grown[e])] == a), None
                )
                if target is not None:
                    moves.append((a, d, target))
                    grown[target] = grown[target] + (a,)
                    rest[d] = rest[d][:-1]
                    progress = True
        if moves:
            src_groups = tuple((d, cur[d][len(rest[d]) :]) for d in sources if cur[d] != rest[d])
            dst_groups = tuple((e, grown[e][len(cur[e]) :]) for e in grown if grown[e] != cur[e])
            steps.append(
                Step(
                    "all-to-all",
                    tuple(a for a, _, _ in moves),
                    src_groups=src_groups,
                    dst_groups=dst_groups,
                    local_before=local(),
                )
            )
            for d in sources:
                cur[d] = rest[d]
            for e in grown:
                cur[e] = grown[e]
            continue
        # 4. all-gather the tail of a dimension that is not a prefix of its target.
        candidates = [d for d in range(ndim) if not _is_prefix(cur[d], dst[d])]
        if not candidates:  # every entry is a prefix, but the next target axis is still in use
            candidates = [d for d in range(ndim) if cur[d] != dst[d]]

        def common(d: int) -> int:
            i = 0
            while i < min(len(cur[d]), len(dst[d])) and cur[d][i] == dst[d][i]:
                i += 1
            return i

        d = min(candidates, key=lambda d: _parts(cur[d][common(d) :], sizes))
        keep = common(d)
        steps.append(Step("all-gather", cur[d][keep:], dim=d, local_before=local()))
        cur[d] = cur[d][:keep]
    raise AssertionError(f"no redistribution plan from {src} to {dst}")  # unreachable: each step progresses


def _reordered(src: Entries, dst: Entries) -> Entries:
    """``src`` with each dimension's axes reordered: those the target keeps there first (in the target's
    order), the leaving ones after them; the same blocks per dimension on other devices (a permute)."""
    out = []
    for s, t in zip(src, dst, strict=True):
        stay = tuple(a for a in t if a in s)
        out.append(stay + tuple(a for a in s if a not in stay))
    return tuple(out)


def _plan_steps(shape: Sequence[int], src: Entries, dst: Entries, sizes: dict[str, int]) -> tuple[Step, ...]:
    """The cheaper (max bytes per device) of the greedy sequence and "permute, then greedy"."""
    options = [_greedy(shape, src, dst, sizes)]
    mid = _reordered(src, dst)
    if mid != tuple(src) and mid != tuple(dst):
        axes, pairs = _permutation(tuple(src), mid, sizes)
        first = Step("permute", axes, perm=pairs, local_before=_local(shape, src, sizes))
        options.append((first, *_greedy(shape, mid, dst, sizes)))

    def price(steps: tuple[Step, ...]) -> tuple[float, int]:
        r = Redistribution(tuple(shape), tuple(shape), tuple(sizes.items()), src, dst, steps)
        return r.bytes(1), len(steps)

    return min(options, key=price)


@functools.lru_cache(maxsize=4096)
def plan(
    shape: tuple[int, ...],
    src: tuple[P, tuple[tuple[str, int], ...]],
    dst: tuple[P, tuple[tuple[str, int], ...]],
) -> Redistribution:
    """Plans the change of an array of ``shape`` from layout ``src`` to ``dst``.

    Args:
      shape: global shape.
      src, dst: ``(spec, ((axis, size), ...))``: a PartitionSpec and its mesh's axes in order. Both
        meshes lay the same devices out row-major (as :func:`jaxcnn.make_mesh` does).

    Raises:
      ValueError: the meshes have different device counts, or a spec names an unknown axis.
    """
    (spec_a, mesh_a), (spec_b, mesh_b) = src, dst
    names_a, sizes_a = tuple(a for a, _ in mesh_a), tuple(s for _, s in mesh_a)
    names_b, sizes_b = tuple(a for a, _ in mesh_b), tuple(s for _, s in mesh_b)
    if math.prod(sizes_a) != math.prod(sizes_b):
        raise ValueError(f"layouts on meshes of {math.prod(sizes_a)} and {math.prod(sizes_b)} devices")
    ent_a, ent_b = spec_entries(spec_a, len(shape)), spec_entries(spec_b, len(shape))
    for entries, names in ((ent_a, names_a), (ent_b, names_b)):
        unknown = sorted({a for e in entries for a in e} - set(names))
        if unknown:
            raise ValueError(f"PartitionSpec names axes {unknown} that its mesh {names} does not have")
    fine = refine(sizes_a, sizes_b)
    if fine is None:
        parts_a = [math.prod(dict(mesh_a)[a] for a in e) for e in ent_a]
        parts_b = [math.prod(dict(mesh_b)[a] for a in e) for e in ent_b]
        padded = tuple(
            -(-s // math.lcm(p, q)) * math.lcm(p, q) for s, p, q in zip(shape, parts_a, parts_b, strict=True)
        )
        local = _local(padded, ent_a, dict(mesh_a))
        flat = (("f0", math.prod(sizes_a)),)
        step = Step("gather-all", ("f0",), local_before=local)
        return Redistribution(tuple(shape), padded, flat, ent_a, ent_b, (step,))
    fine_names = tuple(f"f{i}" for i in range(len(fine)))
    sizes = dict(zip(fine_names, fine, strict=True))
    src_f = _to_fine(ent_a, _axis_runs(names_a, sizes_a, fine))
    dst_f = _to_fine(ent_b, _axis_runs(names_b, sizes_b, fine))
    padded = tuple(
        -(-s // math.lcm(_parts(a, sizes), _parts(b, sizes))) * math.lcm(_parts(a, sizes), _parts(b, sizes))
        for s, a, b in zip(shape, src_f, dst_f, strict=True)
    )
    steps = _plan_steps(padded, src_f, dst_f, sizes)
    return Redistribution(tuple(shape), padded, tuple(sizes.items()), src_f, dst_f, steps)


def _layout_key(sharding: NamedSharding) -> tuple[P, tuple[tuple[str, int], ...]]:
    mesh = sharding.mesh
    return sharding.spec, tuple((a, int(mesh.shape[a])) for a in mesh.axis_names)


def plan_for(shape: Sequence[int], src: NamedSharding, dst: NamedSharding) -> Redistribution:
    """:func:`plan` for two NamedShardings (their meshes must hold the same devices in the same order)."""
    a = [d.id for d in src.mesh.devices.flat]
    b = [d.id for d in dst.mesh.devices.flat]
    if a != b:
        raise ValueError(
            "redistribute needs both meshes over the same devices in the same order "
            "(build them with jaxcnn.make_mesh(..., devices=list(mesh.devices.flat)))"
        )
    return plan(tuple(int(s) for s in shape), _layout_key(src), _layout_key(dst))


def moves_nothing(shape: Sequence[int], src: NamedSharding, dst: NamedSharding) -> bool:
    """Whether :func:`redistribute` of an array of ``shape`` from ``src`` to ``dst`` is the identity: both
    lay the same blocks on the same devices (on meshes of different axes, ``P("n", "h", None, "k")`` with
    ``k=2`` and ``P("n", "h", None, "c")`` with ``c=2`` on meshes that put ``k`` and ``c`` on the same
    devices), so the planned change has no step."""
    return not plan_for(shape, src, dst).steps


# ----------------------------------------------------------------------------- execution


def _slice(x: jax.Array, axes: tuple[str, ...], dim: int) -> jax.Array:
    block = x.shape[dim] // math.prod(lax.axis_size(a) for a in axes)
    index = 0
    for a in axes:
        index = index * lax.axis_size(a) + lax.axis_index(a)
    return lax.dynamic_slice_in_dim(x, index * block, block, axis=dim)


def _all_to_all(x: jax.Array, step: Step) -> jax.Array:
    """One all-to-all over ``step.axes``: each source tail leaves its dimension, each target grows."""
    size = {a: lax.axis_size(a) for a in step.axes}
    splits = dict(step.dst_groups)
    # Split every target dimension into (its new axes..., rest); rest dims keep their order.
    shape: list[int] = []
    labels: list[object] = []
    for e in range(x.ndim):
        new = splits.get(e, ())
        for a in new:
            shape.append(size[a])
            labels.append(a)
        shape.append(x.shape[e] // math.prod(size[a] for a in new))
        labels.append(e)
    order = [labels.index(a) for a in step.axes] + [labels.index(e) for e in range(x.ndim)]
    rest = [shape[labels.index(e)] for e in range(x.ndim)]
    group = math.prod(size.values())
    y = jnp.transpose(x.reshape(shape), order).reshape(group, *rest)
    y = lax.all_to_all(y, step.axes if len(step.axes) > 1 else step.axes[0], 0, 0, tiled=True)
    # Leading dim: the source device's index over ``step.axes``; each axis joins its source dimension
    # as the major part of the received blocks, in the order it had there.
    y = y.reshape(*[size[a] for a in step.axes], *rest)
    merges = dict(step.src_groups)
    order, out_shape = [], []
    k = len(step.axes)
    for d in range(x.ndim):
        for a in merges.get(d, ()):
            order.append(step.axes.index(a))
        order.append(k + d)
        out_shape.append(rest[d] * math.prod(size[a] for a in merges.get(d, ())))
    return jnp.transpose(y, order).reshape(out_shape)


def _permute(x: jax.Array, axes: tuple[str, ...], perm: tuple[tuple[int, int], ...]) -> jax.Array:
    return lax.ppermute(x, axes if len(axes) > 1 else axes[0], list(perm))


def _gather(x: jax.Array, axes: tuple[str, ...], dim: int) -> jax.Array:
    return lax.all_gather(x, axes if len(axes) > 1 else axes[0], axis=dim, tiled=True)


def _body(steps: tuple[Step, ...]):
    def run(x: jax.Array) -> jax.Array:
        for step in steps:
            if step.kind == "slice":
                x = _slice(x, step.axes, step.dim)
            elif step.kind == "all-to-all":
                x = _all_to_all(x, step)
            elif step.kind == "permute":
                x = _permute(x, step.axes, step.perm)
            elif step.kind == "all-gather":
                x = _gather(x, step.axes, step.dim)
            else:
                raise AssertionError(step.kind)
        return x

    return run


def _gather_all_then_slice(x: jax.Array, src: NamedSharding, dst: NamedSharding) -> jax.Array:
    ent_a = spec_entries(src.spec, x.ndim)
    ent_b = spec_entries(dst.spec, x.ndim)

    def gather(xb: jax.Array) -> jax.Array:
        for d in range(xb.ndim):
            if ent_a[d]:
                xb = _gather(xb, ent_a[d], d)
        return xb

    def cut(xb: jax.Array) -> jax.Array:
        for d in range(xb.ndim):
            if ent_b[d]:
                xb = _slice(xb, ent_b[d], d)
        return xb

    full = common_mesh.shard_map(gather, mesh=src.mesh, in_specs=(src.spec,), out_specs=P(), check_vma=False)(
        x
    )
    return common_mesh.shard_map(cut, mesh=dst.mesh, in_specs=(P(),), out_specs=dst.spec, check_vma=False)(
        full
    )


def _fine_mesh(mesh: Mesh, fine: tuple[tuple[str, int], ...]) -> Mesh:
    devices = np.asarray(mesh.devices).reshape([s for _, s in fine])
    return Mesh(devices, tuple(a for a, _ in fine), axis_types=(jax.sharding.AxisType.Auto,) * len(fine))


def _move(x: jax.Array, src: NamedSharding, dst: NamedSharding) -> jax.Array:
    r = plan_for(x.shape, src, dst)
    if not r.steps:
        return x
    xp = as_bits(pad_to(x, r.padded))  # 16-bit floats move as 2-byte words on every backend
    if r.steps[0].kind == "gather-all":
        y = _gather_all_then_slice(xp, src, dst)
    else:
        fine = _fine_mesh(src.mesh, r.fine)
        y = common_mesh.shard_map(
            _body(r.steps),
            mesh=fine,
            in_specs=(as_spec(r.src),),
            out_specs=as_spec(r.dst),
            check_vma=False,
        )(xp)
    return crop_to(from_bits(y, x.dtype), r.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _redistribute(x: jax.Array, src: NamedSharding, dst: NamedSharding) -> jax.Array:
    return _move(x, src, dst)


def _fwd(x, src, dst):
    return _move(x, src, dst), None


def _bwd(src, dst, _, ct):
    return (_move(ct, dst, src),)


_redistribute.defvjp(_fwd, _bwd)


def redistribute(x: jax.Array, src: NamedSharding, dst: NamedSharding) -> jax.Array:
    """Moves ``x`` from layout ``src`` to layout ``dst`` with explicit collectives (see module docs).

    Works eagerly, under ``jit`` and under ``grad`` (the cotangent moves ``dst → src`` by its own
    planned sequence). Integer arrays (labels) move the same way, without a VJP.

    Args:
      x: the array, laid out as ``src`` (under ``jit`` this is what the caller asserts).
      src, dst: NamedShardings whose meshes hold the same devices in the same order.

    Returns:
      ``x`` laid out as ``dst`` (values unchanged).
    """
    if not isinstance(src, NamedSharding) or not isinstance(dst, NamedSharding):
        raise TypeError(f"redistribute takes NamedShardings, got {type(src).__name__}, {type(dst).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return _move(x, src, dst)
    return _redistribute(x, src, dst)


def cost(shape: Sequence[int], src: NamedSharding, dst: NamedSharding, itemsize: int) -> tuple[float, float]:
    """Max bytes received per device by :func:`redistribute` (forward, backward)."""
    return plan_for(shape, src, dst).bytes(itemsize), plan_for(shape, dst, src).bytes(itemsize)
