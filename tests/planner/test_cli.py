"""``jaxcnn plan``: memory strings, configs, the printed plan, --measure on fake devices, clear errors."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import yaml

from jaxcnn.bounds import PASSES, lower_bound
from jaxcnn.networks import layers_from_yaml
from jaxcnn.planner import plan_layer, plan_network
from jaxcnn.planner.cli import PlanCliError, main, parse_memory, resolve_args
from jaxcnn.planner.report import fmt_grid, fmt_shape, make_plan
from tests.fake_devices import ROOT

NETWORK = str(ROOT / "configs" / "networks" / "small_cnn.yaml")
PLAN_CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "plan_*.yaml")))
NETWORK_CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "networks" / "*.yaml")))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16GiB", 16 * 2**30),
        ("512MiB", 512 * 2**20),
        ("2e9", 2e9),
        ("8GB", 8e9),
        ("1.5 kib", 1536),
        (4096, 4096),
    ],
)
def test_parse_memory(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["16 parsecs", "GiB", "-1GiB", "0", "", True])
def test_parse_memory_rejects(text):
    with pytest.raises(PlanCliError, match="memory must be"):
        parse_memory(text)


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _table_rows(out: str) -> dict[str, list[str]]:
    """layer name -> whitespace-split cells of its table row."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in ("stem", "block1", "down1", "block2", "dilated", "head", "deep"):
            rows[cells[0]] = cells
    return rows


def test_prints_the_network_plan(capsys):
    rc, out, _ = _run(["--network", NETWORK, "--batch", "32", "--devices", "8", "--memory", "64MiB"], capsys)
    assert rc == 0
    plan = plan_network(layers_from_yaml(NETWORK, 32), 8, 64 * 2**20)
    rows = _table_rows(out)
    assert list(rows) == [s.name for s in plan.steps]
    for step in plan.steps:
        cells = rows[step.name]
        assert step.choice.algorithm in cells and fmt_grid(step.choice.grid) in cells
    assert out.splitlines()[-1].startswith("total")


@pytest.mark.parametrize(
    "layers,shapes",
    [
        (
            "- {name: stem, input: [64, 4], k: 16, kernel: 7, stride: 2}\n"
            "- {name: block1, input: [32, 16], k: 16, kernel: 3, dilation: 2}\n",
            ["64x4 7/2 -> 32x16", "32x16 3/1 -> 32x16"],
        ),
        (
            "- {name: stem, input: [8, 16, 16, 2], k: 8, kernel: 3, stride: [1, 2, 2]}\n"
            "- {name: block1, input: [8, 8, 8, 8], k: 16, kernel: [1, 3, 3], padding: [0, 1, 1]}\n",
            ["8x16x16x2 3x3x3/1,2,2 -> 8x8x8x8", "8x8x8x8 1x3x3/1 -> 8x8x8x16"],
        ),
    ],
    ids=["1d", "3d"],
)
def test_plans_1d_and_3d_networks_with_their_bounds(layers, shapes, tmp_path, capsys):
    path = tmp_path / "net.yaml"
    path.write_text(layers)
    rc, out, _ = _run(["--network", str(path), "--batch", "8", "--devices", "8", "--memory", "64MiB"], capsys)
    assert rc == 0
    plan = make_plan(resolve_args(["--network", str(path), "--batch", "8", "--devices", "8"]),
                     layers_from_yaml(path, 8))  # fmt: skip
    for row, shape in zip(plan, shapes, strict=True):
        assert fmt_shape(row.layer) == shape and shape in out
        assert 0 < row.bound <= row.choice.bytes + row.transition
        assert row.bound == sum(lower_bound(row.layer.geom, 8, 16 * 2**30, 4, p).bytes for p in PASSES)
    assert out.splitlines()[-1].startswith("total")


def test_small_memory_picks_a_memory_saving_algorithm(capsys):
    """Below data parallelism's peak for the 18 MiB kernel of layer ``deep`` (replicated by data
    parallelism), the plan splits the kernel; the table shows plan_layer's choice."""
    deep = layers_from_yaml(NETWORK, 32)[-1]
    data_peak = plan_layer(deep, 8, allowed=("data",)).best.memory.peak
    budget = int(data_peak) - 1
    best = plan_layer(deep, 8, budget).best
    argv = [
        "--network",
        NETWORK,
        "--batch",
        "32",
        "--devices",
        "8",
        "--memory",
        str(budget),
        "--per-layer-only",
    ]
    rc, out, _ = _run(argv, capsys)
    assert rc == 0
    cells = _table_rows(out)["deep"]
    assert best.algorithm != "data"
    assert cells[cells.index("->") + 2 : cells.index("->") + 4] == [best.algorithm, fmt_grid(best.grid)]


def test_config_file_and_flag_override(tmp_path, capsys):
    cfg = tmp_path / "plan.yaml"
    cfg.write_text(yaml.safe_dump({"network": NETWORK, "batch": 16, "devices": 4, "memory": "1GiB"}))
    args = resolve_args(["--config", str(cfg), "--devices", "8"])
    assert (args.batch, args.devices, args.memory_bytes, args.network) == (16, 8, 2**30, NETWORK)
    rc, out, _ = _run(["--config", str(cfg)], capsys)
    assert rc == 0 and "4 devices" in out.splitlines()[0]


@pytest.mark.parametrize("path", PLAN_CONFIGS + NETWORK_CONFIGS, ids=os.path.basename)
def test_shipped_configs_load_and_start_with_their_command(path, monkeypatch):
    """Every plan config and network file in configs/ starts with the command that runs it, and that
    command resolves to the file's values."""
    monkeypatch.chdir(ROOT)
    with open(path) as f:
        first = f.readline()
        data = yaml.safe_load(f)
    assert first.startswith("# jaxcnn plan "), first
    args = resolve_args(first[2:].split("(")[0].split()[2:])
    if path in PLAN_CONFIGS:
        for key, value in data.items():
            expected = parse_memory(value) if key == "memory" else value
            assert getattr(args, "memory_bytes" if key == "memory" else key) == expected, key
    else:
        assert os.path.samefile(args.network, path)
        layers = layers_from_yaml(path, args.batch)
        assert [layer.name for layer in layers] == [entry["name"] for entry in data["layers"]]
        assert all(layer.geom.batch == args.batch for layer in layers)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "alexnet"],
            "unknown model 'alexnet'; valid models are "
            "['mobilenet_v2', 'resnet18', 'resnet50', 'small_cnn', 'unet', 'vgg16']",
        ),
        (["--memory", "lots"], "memory must be a size"),
        (["--devices", "0"], "devices must be a positive integer"),
        (["--batch", "-3"], "batch must be a positive integer"),
        (["--dtype", "int8"], "unknown dtype 'int8'"),
        (["--network", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, capsys):
    rc, out, err = _run(argv, capsys)
    assert rc == 2 and out == ""
    assert message in err


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: resnet50\ndevice: 8\n")
    rc, _, err = _run(["--config", str(cfg)], capsys)
    assert rc == 2 and "unknown keys ['device']" in err and "'devices'" in err


def test_no_plan_names_the_smallest_memory_and_that_memory_works(capsys):
    base = ["--network", NETWORK, "--batch", "32", "--devices", "8"]
    rc, _, err = _run([*base, "--memory", "64KiB"], capsys)
    assert rc == 2 and "smallest per-device memory that fits every layer" in err
    need = int(err.split("(--memory ")[1].split(")")[0])
    rc, out, _ = _run([*base, "--memory", str(need)], capsys)
    assert rc == 0 and out.splitlines()[-1].startswith("total")
    rc, _, err = _run([*base, "--memory", str(need - 1)], capsys)
    assert rc == 2


MEASURE = ["--network", NETWORK, "--batch", "32", "--devices", "16", "--memory", "64MiB", "--measure"]


def _check_measured(out: str, rows: int = 7) -> None:
    table = _table_rows(out)
    assert len(table) == rows
    assert all(cells[-1] == "yes" for cells in table.values()), out  # metered == predicted
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[-1] == "yes"


@pytest.mark.slow
def test_measure_reruns_itself_when_the_backend_has_too_few_devices(capsys):
    """This test process already runs JAX on 8 devices; 16 are needed, so the CLI re-executes."""
    rc, out, _ = _run(MEASURE, capsys)
    assert rc == 0
    _check_measured(out)


@pytest.mark.slow
def test_measure_sets_the_device_count_before_jax_starts(tmp_path):
    """In a fresh process without XLA_FLAGS, the CLI sets them itself (no subprocess). One layer: what is
    under test is the device count (the measuring of every layer is the test above)."""
    network = tmp_path / "one.yaml"
    network.write_text("layers:\n  - {name: stem, h: 16, w: 16, c: 8, k: 16, r: 3}\n")
    script = (
        "import sys, jax; from jaxcnn.planner.cli import main; rc = main(sys.argv[1:]); "
        "print('DEVICES', len(jax.devices()), rc)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", script, *MEASURE[:1], str(network), *MEASURE[2:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "DEVICES 16 0"
    _check_measured(proc.stdout, rows=1)
