"""``experiments/bench_comm.py --quick``: on 8 fake devices, jaxcnn's planned convolution moves no more
bytes than the best GSPMD sharding on the first ResNet-50 layers, and the meter equals the prediction."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.fake_devices import ROOT


@pytest.mark.slow
def test_bench_comm_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, "experiments/bench_comm.py", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + (tmp_path / "bench_P8.log").read_text()[-3000:]
    assert "jaxcnn/GSPMD" in proc.stdout and "wrote " in proc.stdout  # a readable table, not JSON
    with open(tmp_path / "comm_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["layer"] for r in summary] == ["stem", "layer1.0.proj", "layer1.0.conv1"]
    for row in summary:
        planned, gspmd, best, bound = (
            float(row[k]) for k in ("planned_bytes", "gspmd_bytes", "best_alg_bytes", "bound")
        )
        assert row["planned_equals_prediction"] == "True", row
        assert planned <= gspmd, row
        assert planned == best, row  # the plan is the best algorithm
        assert planned >= 0.999 * bound, row  # nothing beats the lower bound
    # every GSPMD row of the cache was metered from compiled HLO
    with open(tmp_path / "comm_resnet50_P8_weak.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gspmd = [r for r in rows if r["method"].startswith("gspmd:")]
    assert gspmd and all(r["source"] in ("metered", "infeasible") for r in gspmd)
    assert any(r["source"] == "metered" and float(r["bytes"]) > 0 for r in gspmd)
