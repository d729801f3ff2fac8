"""Layout chaining: reshard moves values unchanged; transition_bytes matches docs/conventions.md and
the bytes of the collective XLA actually emits (parsed from compiled HLO)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn

BYTES = {"f32": 4, "bf16": 2}


def _permute_bytes_received(hlo: str) -> dict[int, int]:
    """Per target device, bytes received by the collective-permutes of ``hlo`` (self-pairs excluded)."""
    received: dict[int, int] = {}
    pattern = r"= (\w+)\[([\d,]*)\][^ ]* collective-permute\(.*source_target_pairs=\{([\d,{}]*)\}"
    for dtype, dims, pairs in re.findall(pattern, hlo):
        size = BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
        for src, dst in re.findall(r"\{(\d+),(\d+)\}", pairs):
            if src != dst:
                received[int(dst)] = received.get(int(dst), 0) + size
    return received


def test_3d_to_3d_is_one_collective_permute_of_the_counted_bytes():
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    placement = jnn.Placement("3d", mesh)
    y_spec, x_spec = placement.y_spec, placement.x_spec
    assert y_spec == P("n", None, None, ("k", "c")) and x_spec == P("n", None, None, ("c", "k"))
    shape = (4, 6, 6, 16)
    x = jax.device_put(
        jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape), NamedSharding(mesh, y_spec)
    )
    move = jax.jit(lambda a: jnn.reshard(a, x_spec, mesh=mesh))
    hlo = move.lower(x).compile().as_text()
    kinds = re.findall(r"(all-gather|all-to-all|all-reduce|reduce-scatter|collective-permute)\(", hlo)
    assert kinds == ["collective-permute"]
    traffic = jnn.transition_traffic(y_spec, x_spec, shape, mesh)
    block = 4 * np.prod(shape) // 8
    # Devices whose channel block index is the same in (k, c) and (c, k) order (k == c: i == j) keep theirs.
    assert sorted(traffic.per_device) == [0, 0, 0, 0, block, block, block, block]
    measured = _permute_bytes_received(hlo)
    assert max(measured.values()) == traffic.max_bytes == jnn.transition_bytes(y_spec, x_spec, shape, mesh)
    assert sum(measured.values()) == traffic.total_bytes
    out = move(x)
    assert out.sharding.spec == x_spec
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


@pytest.mark.parametrize(
    "from_spec,to_spec,expected",
    [
        (P("n"), P(), lambda s, p: s * (p - 1) // p),  # all-gather: S(p-1)/p
        (P(None, None, None, "n"), P("n"), lambda s, p: (s // p) * (p - 1) // p),  # all-to-all, S = s/p
        (P(), P("n"), lambda s, p: 0),  # a slice of what a device holds
        (P("n"), P("n"), lambda s, p: 0),
    ],
)
def test_transition_bytes_follow_the_conventions(from_spec, to_spec, expected):
    mesh = jaxcnn.make_mesh(n=8)
    shape = (8, 4, 4, 16)
    size = 2 * int(np.prod(shape))  # bfloat16
    assert jnn.transition_bytes(from_spec, to_spec, shape, mesh, jnp.bfloat16) == expected(size, 8)


def test_transition_bytes_on_a_fake_512_device_mesh_and_across_meshes():
    abstract = AbstractMesh((8, 1, 1, 1, 8, 8), jaxcnn.AXES)
    shape = (64, 14, 14, 512)
    y_spec, x_spec = P("n", None, None, ("k", "c")), P("n", None, None, ("c", "k"))
    traffic = jnn.transition_traffic(y_spec, x_spec, shape, abstract)
    block = 4 * int(np.prod(shape)) // 512
    assert traffic.max_bytes == block
    assert traffic.total_bytes == block * (512 - 8 * 8)  # 8 fixed points (i == j) per batch group
    # data (n=8) → spatial (n=2, h=2, w=2) over the same 8 devices: each keeps 1/4 of its new block.
    data = jaxcnn.make_mesh(n=8)
    spatial = jnn.parse_placement("spatial@n=2,h=2,w=2", data).mesh
    shape = (8, 8, 8, 4)
    got = jnn.transition_traffic(NamedSharding(data, P("n")), NamedSharding(spatial, P("n", "h", "w")), shape)
    new_block = 4 * int(np.prod(shape)) // 8
    assert got.per_device == (new_block * 3 // 4,) * 8


def test_placement_strings():
    mesh = jaxcnn.make_mesh(n=8)
    p = jnn.parse_placement("3d@n=2,k=2,c=2", mesh)
    assert (p.algorithm, dict(p.mesh.shape)) == ("3d", {"n": 2, "d": 1, "h": 1, "w": 1, "k": 2, "c": 2})
    assert list(p.mesh.devices.flat) == list(mesh.devices.flat)
    with pytest.raises(ValueError, match="multiply to 8"):
        jnn.parse_placement("3d@n=2,k=2", mesh)
    with pytest.raises(ValueError, match="valid algorithms"):
        jnn.parse_placement("4d", mesh)
    with pytest.raises(ValueError, match="does not use mesh axis 'k'"):
        jnn.parse_placement("data@n=4,k=2", mesh)
