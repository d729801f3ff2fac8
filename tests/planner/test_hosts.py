"""Multi-host meshes and slow links: hosts outermost in the device order, DCN bytes, weighted planning."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn import links, redistribute
from jaxcnn.cost import predict
from jaxcnn.geometry import conv_geometry
from jaxcnn.mesh import device_order, host_count
from jaxcnn.planner import plan_layer, plan_network
from jaxcnn.planner.cli import main
from jaxcnn.planner.step import grid_key
from tests.fake_devices import ROOT

NETWORK = str(ROOT / "configs" / "networks" / "small_cnn.yaml")
LAYER = conv_geometry((32, 56, 56, 64), (3, 3, 64, 64), 1, "SAME")  # the docs/cost_model.md example


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int
    slice_index: int | None = None
    platform: str = "cpu"
    device_kind: str = "cpu"


@pytest.mark.parametrize("platform", ["cpu", "gpu"])  # gpu: through mesh_utils.create_hybrid_device_mesh
def test_device_order_puts_hosts_outermost(platform):
    # 2 processes x 4 devices, listed interleaved and out of id order
    devs = [FakeDevice(i, i % 2, platform=platform) for i in (7, 0, 5, 2, 3, 6, 1, 4)]
    order = device_order(devs)
    assert [d.process_index for d in order] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.id for d in order] == [0, 2, 4, 6, 1, 3, 5, 7]
    assert host_count(devs) == 2


def test_device_order_groups_tpu_slices_not_processes():
    # 2 slices of 2 processes each: the slice is the unit of the slow network
    devs = [FakeDevice(i, process_index=i // 2, slice_index=1 - i // 4) for i in range(8)]
    order = device_order(devs)
    assert [d.slice_index for d in order] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.id for d in order] == [4, 5, 6, 7, 0, 1, 2, 3]
    assert host_count(devs) == 2
    one_slice = [dataclasses.replace(d, slice_index=0) for d in devs]
    assert host_count(one_slice) == 4  # one slice: processes


def test_single_process_order_and_mesh_unchanged():
    devs = [FakeDevice(i, 0) for i in (3, 1, 2, 0)]
    assert device_order(devs) == devs  # one CPU process: as given
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()[:8]]
    assert host_count(list(mesh.devices.flat)) == 1


def test_batch_axis_crosses_hosts_and_k_c_stay_inside():
    # 2 hosts x 4 devices on n2 k2 c2: host = the n coordinate
    host = links.host_of(8, 2).reshape(2, 1, 1, 2, 2)
    assert (host == np.arange(2).reshape(2, 1, 1, 1, 1)).all()
    assert links.group_crosses([2, 1, 1, 2, 2], [0], 2).all()
    assert not links.group_crosses([2, 1, 1, 2, 2], [3, 4], 2).any()
    with pytest.raises(ValueError, match="must divide"):
        links.host_of(8, 3)


def test_dcn_bytes_by_hand():
    # 3d n2 k2 c2: only the kernel panel gathers run over n; one kernel panel is 3*3*32*32*4 bytes,
    # half of it is received (forward gather, backward reduce-scatter)
    one = predict(LAYER, "3d", {"n": 2, "k": 2, "c": 2})
    two = predict(LAYER, "3d", {"n": 2, "k": 2, "c": 2}, hosts=2)
    assert one.dcn_bytes == 0 and one.weighted(10) == one.bytes
    assert (two.forward.per_device == one.forward.per_device).all() and two.bytes == one.bytes
    panel = 3 * 3 * 32 * 32 * 4
    assert two.forward.dcn_max_bytes == two.backward.dcn_max_bytes == panel / 2
    assert two.weighted(10) == one.bytes + 9 * panel
    # data n8: the kernel-gradient all-reduce spans both hosts: all of it is DCN
    data = predict(LAYER, "data", {"n": 8}, hosts=2)
    assert data.dcn_bytes == data.bytes == 2 * (3 * 3 * 64 * 64 * 4) * 7 / 8
    # spatial n2 h2 w2 on 4 hosts of 2 (host = 2n + h): the h halo row crosses hosts, the w one not.
    # A device's block is (32/2, 56/2, 56/2, 64) = (16, 28, 28, 64); the 3x3 window needs one row from
    # its h neighbour, then one column from its w neighbour of the block already extended along h
    # (30 = 28 rows + the received row + the zero padding row at the image edge)
    spatial = predict(LAYER, "spatial", {"n": 2, "h": 2, "w": 2}, hosts=4)
    h_row = 16 * 28 * 64 * 4  # N/n images x W/w columns x C channels x 4 bytes (float32)
    w_column = 16 * 30 * 64 * 4  # N/n images x 30 extended rows x C channels x 4 bytes
    assert spatial.forward.max_bytes == h_row + w_column
    assert spatial.forward.dcn_max_bytes == h_row  # only the h row comes from another host
    assert predict(LAYER, "spatial", {"n": 2, "h": 2, "w": 2}, hosts=2).forward.dcn_max_bytes == 0


def test_permute_dcn_by_source_host():
    # n2 c4: blocks (n, c) -> (c, n) is one permute; device f needs block 2c + n, held by device 2c + n
    shape = (8, 2, 2, 4)
    grid = grid_key({"n": 2, "c": 4})
    r = redistribute.plan(shape, (P(("n", "c")), grid), (P(("c", "n")), grid))
    assert [s.kind for s in r.steps] == ["permute"]
    traffic = r.traffic(4)
    dcn = r.dcn_traffic(4, 2)
    assert (traffic > 0).tolist() == [False, True, True, True, True, True, True, False]
    assert (dcn > 0).tolist() == [False, False, True, True, True, True, False, False]
    assert (dcn[dcn > 0] == traffic[dcn > 0]).all()
    assert not r.dcn_traffic(4, 1).any()
    # an all-to-all over c stays inside a host
    inside = redistribute.plan(shape, (P(("n", "c")), grid), (P("n", None, None, "c"), grid))
    assert inside.traffic(4).any() and not inside.dcn_traffic(4, 2).any()


def test_planner_moves_traffic_off_the_slow_links():
    layer = conv_geometry((32, 28, 28, 128), (3, 3, 128, 128), 1, "SAME")
    flat = plan_layer(layer, 8).best
    unchanged = plan_layer(layer, 8, hosts=1, dcn_cost_factor=100).best
    assert (unchanged.algorithm, unchanged.grid, unchanged.bytes) == (flat.algorithm, flat.grid, flat.bytes)
    assert (flat.algorithm, flat.grid["n"]) == ("data", 8)
    same = plan_layer(layer, 8, hosts=2, dcn_cost_factor=1).best  # equal links: the same choice
    assert (same.algorithm, same.grid) == (flat.algorithm, flat.grid)
    slow = plan_layer(layer, 8, hosts=2, dcn_cost_factor=10).best
    assert (slow.algorithm, slow.grid) != (flat.algorithm, flat.grid)
    assert slow.grid["k"] * slow.grid["c"] > 1  # the big collectives over k / c, inside a host
    assert slow.dcn_bytes < same.dcn_bytes and slow.bytes > same.bytes
    assert slow.weighted(10) < same.weighted(10)


def test_plan_network_weights_layout_changes_and_reports_dcn():
    layers = [
        conv_geometry((32, 28, 28, 128), (3, 3, 128, 128), 1, "SAME"),
        conv_geometry((32, 28, 28, 128), (1, 1, 128, 512), 1, "SAME"),
    ]
    flat = plan_network(layers, 8, hosts=2, dcn_cost_factor=1)
    assert flat.bytes == plan_network(layers, 8).bytes
    slow = plan_network(layers, 8, hosts=2, dcn_cost_factor=10)
    assert slow.dcn_bytes < flat.dcn_bytes
    assert slow.hosts == 2 and all(s.choice.hosts == 2 for s in slow.steps)
    with pytest.raises(ValueError, match="must divide"):
        plan_network(layers, 8, hosts=3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--hosts", "3"], "hosts (3) must divide devices (8)"), (["--hosts", "0"], "hosts must be a positive")],
)
def test_cli_rejects_bad_hosts(flags, message, capsys):
    rc = main(["--network", NETWORK, "--batch", "16", "--devices", "8", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_prints_dcn_bytes(capsys):
    rc = main(["--network", NETWORK, "--batch", "16", "--devices", "8", "--hosts", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 hosts of 4 devices" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    columns = re.split(r"\s{2,}", lines[head])
    rows = {cells[0]: dict(zip(columns, cells, strict=True)) for cells in _table_rows(lines[head + 2 :])}

    def kib(nbytes: float) -> str:
        return f"{nbytes / 1024:.2f} KiB"

    # 8 devices, host = device // 4: the batch axis n of a grid (outermost) crosses hosts, k and c not.
    # stem, 3x3 stride-2 conv 3 -> 32 channels, data n8: the kernel-gradient all-reduce spans all 8
    # devices, both hosts: every byte of it (2 x kernel x 7/8, float32) is DCN
    stem = rows["stem"]
    assert (stem["algorithm"], stem["grid"]) == ("data", "n8")
    assert stem["dcn f+b"] == stem["bytes f+b"] == kib(2 * (3 * 3 * 3 * 32 * 4) * 7 / 8)
    # block2, 3x3 conv 128 -> 128 channels, 3d n2 k2 c2: only the kernel panel's all-gather (forward)
    # and reduce-scatter (backward) run over n; a panel is 3 x 3 x 128/c x 128/k floats, half received.
    # The layout change into it from data n8 stays inside a host (x's batch half n of the 3d grid is
    # held by the 4 devices of host n under data n8): no DCN bytes
    block2 = rows["block2 x2"]
    assert (block2["algorithm"], block2["grid"]) == ("3d", "n2·k2·c2")
    assert block2["dcn f+b"] == kib(2 * (3 * 3 * 64 * 64 * 4) / 2)
    # dilated, 3x3 conv 128 -> 256 channels, filter n2 k4 (no layout change into it): x's all-gather
    # and dx's reduce-scatter run over k inside a host; the kernel-gradient all-reduce over n
    # (2 x kernel block x 1/2) crosses hosts
    dilated = rows["dilated"]
    assert (dilated["algorithm"], dilated["grid"]) == ("filter", "n2·k4")
    assert dilated["dcn f+b"] == kib(2 * (3 * 3 * 128 * (256 // 4) * 4) / 2)
    assert main(["--network", NETWORK, "--batch", "16", "--devices", "8", "--dcn-cost-factor", "-1"]) == 2


def _table_rows(lines):
    """The cells of a planner table's layer rows, up to the rule above the totals."""
    for line in lines:
        if line.startswith("---"):
            return
        yield re.split(r"\s{2,}", line)


def test_plan_graph_and_step_cost_on_hosts():
    from jaxcnn.planner.whole_step import whole_step

    def run(hosts: int, factor: float) -> dict:
        return whole_step(
            "small_cnn", 32, 8, 32, float("inf"), "float32", 10, hosts=hosts, dcn_cost_factor=factor
        )

    flat, even, slow = run(1, 10.0), run(2, 1.0), run(2, 10.0)
    assert flat["predicted_dcn_bytes_per_step_max_device"] == 0
    assert even["placements"] == flat["placements"]
    same = "predicted_comm_bytes_per_step_max_device"
    assert even[same] == flat[same]
    assert slow["placements"] != flat["placements"]
    dcn = "predicted_dcn_bytes_per_step_max_device"
    assert 0 < slow[dcn] < even[dcn] and slow[same] + 9 * slow[dcn] < even[same] + 9 * even[dcn]


def test_step_cost_rejects_choices_for_other_hosts():
    from jaxcnn.models.graph import Conv
    from jaxcnn.planner.step import step_cost

    layer = conv_geometry((8, 8, 8, 8), (3, 3, 8, 8), 1, "SAME")
    choice = predict(layer, "data", {"n": 8}, hosts=2)
    source = (P("n"), grid_key({"n": 8}))
    cost = step_cost([Conv("conv")], {"conv": layer}, {"conv": choice}, source, hosts=2)
    assert cost.dcn_max_bytes == cost.max_bytes > 0 and cost.weighted(10) == 10 * cost.max_bytes
    with pytest.raises(ValueError, match="other than 1 hosts"):
        step_cost([Conv("conv")], {"conv": layer}, {"conv": choice}, source)
