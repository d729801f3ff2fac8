"""Side by side: bytes received per device by jaxcnn's planned convolution vs GSPMD, per layer.

    nice .venv/bin/python experiments/bench_comm.py            # full sweep (resumes from cached CSVs)
    .venv/bin/python experiments/bench_comm.py --quick         # 8 devices, 3 small layers, seconds
    .venv/bin/python experiments/bench_comm.py --P 64 --networks vgg16 --regimes hires   # a subset
    .venv/bin/python experiments/bench_comm.py --from-cache    # summary, tables, plot from the CSVs

For every distinct convolution of ResNet-50 and VGG-16 (identical shapes merged, weighted by their
repeat count), at P = 64 and P = 512 fake CPU devices (compile only; each P in its own subprocess),
in three regimes (``weak``: batch 1024 at 224², ``strong``: batch 32 at 224², ``hires``: batch 8 at
1024²), forward + backward bytes received per device (max over devices):

(a) ``planned``: ``jaxcnn.planner.plan_layer`` under ``--memory`` per device, metered with
    ``jaxcnn.measure.measure_conv`` (the prediction is stored next to it);
(b) ``alg:<name>``: every jaxcnn algorithm on its best even grid (``plan_layer(allowed=(name,))``),
    predicted by ``jaxcnn.cost.predict`` (exact for even splits, tests/test_cost.py) unless
    ``--meter-all``;
(c) ``gspmd:<family>``: ``jax.jit`` of ``lax.conv_general_dilated`` with in/out shardings
    (experiments/gspmd.py), metered with ``jaxcnn.measure.measure_fwd_bwd``.

The lower bound is ``jaxcnn.bounds.lower_bound`` (forward + backward, with the memory budget).
Rows are cached in ``experiments/results/comm_<network>_P<P>_<regime>.csv``; a rerun skips layers
already there. Afterwards ``comm_summary.csv``, ``comm_tables.md`` and ``comm_bytes.png`` are written
from every cached CSV in the folder (a subset run measures only its part, and leaves the others' rows in
the summary), and ``gspmd_numerics.json``. Stdout gets a table of the summed bytes per network, P and
regime. The written files are a function of the cached rows: a rerun rewrites them byte for byte (sorted
JSON keys, relative errors to 4 significant digits, no timestamps or machine paths; the CSVs' ``seconds``
column, compile wall time rounded to 0.01 s, is written once, when a layer is measured). Worker logs
(timings) go to the untracked ``logs/`` folder beside the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
REGIMES = {"weak": (1024, 224), "strong": (32, 224), "hires": (8, 1024)}
NETWORKS = ("resnet50", "vgg16")
FIELDS = (
    "network", "P", "regime", "batch", "image", "layer", "repeat", "shape", "method", "variant", "source",
    "fwd", "bwd", "bytes", "pred_fwd", "pred_bwd", "bound_fwd", "bound_bwd", "memory", "seconds", "note",
)  # fmt: skip
QUICK_LAYERS = 3


def csv_path(out: pathlib.Path, network: str, p: int, regime: str) -> pathlib.Path:
    return out / f"comm_{network}_P{p}_{regime}.csv"


def _read(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- worker (inside one P)


def _layer_rows(layer, p: int, memory: float, meter_all: bool, per_family: int, meta: dict) -> list[dict]:
    """All rows (planned, every algorithm, every GSPMD variant) of one layer."""
    import jaxcnn
    from experiments import gspmd
    from jaxcnn.bounds import lower_bound
    from jaxcnn.measure import measure_conv
    from jaxcnn.planner import NoPlanError, plan_layer
    from jaxcnn.planner.report import fmt_grid, fmt_shape

    geom = layer.geom
    bounds = [lower_bound(geom, p, memory, 4, ps).bytes for ps in ("forward", "backward")]
    base = meta | {
        "layer": layer.name,
        "repeat": layer.repeat,
        "shape": fmt_shape(layer),
        "bound_fwd": bounds[0],
        "bound_bwd": bounds[1],
    }
    rows = []

    def add(method, variant, source, fwd, bwd, pred=(None, None), memory_=None, seconds=0.0, note=""):
        total = None if fwd is None else fwd + bwd
        rows.append(
            base
            | dict(method=method, variant=variant, source=source, fwd=fwd, bwd=bwd, bytes=total)
            | dict(pred_fwd=pred[0], pred_bwd=pred[1], memory=memory_, seconds=round(seconds, 2), note=note)
        )

    def meter(cost):
        t = time.time()
        f, b = measure_conv(geom, mesh=jaxcnn.make_mesh(**cost.grid), algorithm=cost.algorithm)
        return f.max_bytes, b.max_bytes, time.time() - t

    try:
        candidates = plan_layer(layer, p, memory).candidates
    except (NoPlanError, ValueError) as err:
        candidates = ()
        add("planned", "", "infeasible", None, None, note=str(err).replace("\n", " "))
    if candidates:
        best = candidates[0]
        f, b, sec = meter(best)
        pred = (best.forward.max_bytes, best.backward.max_bytes)
        add(
            "planned", f"{best.algorithm}@{fmt_grid(best.grid)}", "metered", f, b, pred, best.memory.peak, sec
        )
    for alg in jaxcnn.ALGORITHMS:
        # the candidates are ranked, so an algorithm's first is plan_layer(allowed=(alg,)).best
        cost = next((c for c in candidates if c.algorithm == alg), None)
        if cost is None:
            add(f"alg:{alg}", "", "infeasible", None, None, note="no even grid fits the memory budget")
            continue
        pred = (cost.forward.max_bytes, cost.backward.max_bytes)
        if meter_all:
            f, b, sec = meter(cost)
            add(f"alg:{alg}", fmt_grid(cost.grid), "metered", f, b, pred, cost.memory.peak, sec)
        else:
            add(f"alg:{alg}", fmt_grid(cost.grid), "predicted", *pred, pred, cost.memory.peak)
    found, notes = gspmd.variants(geom, p, per_family)
    for var in found:
        t = time.time()
        f, b = gspmd.measure_variant(geom, var)
        spec = f"x={tuple(var.x)} w={tuple(var.kernel)} y={tuple(var.y)}"
        add(
            f"gspmd:{var.family}",
            var.label,
            "metered",
            f.max_bytes,
            b.max_bytes,
            seconds=time.time() - t,
            note=spec,
        )
    for note in notes:
        add(f"gspmd:{note.split(':')[0]}", "", "infeasible", None, None, note=note)
    return rows


def run_worker(
    p: int, networks: list[str], regimes: list[str], memory: float, out: pathlib.Path, args
) -> None:
    """Meters every (network, regime) at ``p`` devices, appending rows per layer to the cached CSVs."""
    import jax

    from jaxcnn.networks import dedupe, get_network

    assert len(jax.devices()) >= p, f"need {p} devices, have {len(jax.devices())}"
    for network in networks:
        for regime in regimes:
            batch, image = (args.quick_batch, args.quick_image) if args.quick else REGIMES[regime]
            layers = dedupe(get_network(network, batch, image))
            if args.quick:
                layers = layers[:QUICK_LAYERS]
            path = csv_path(out, network, p, regime)
            done = {r["layer"] for r in _read(path)}
            meta = {"network": network, "P": p, "regime": regime, "batch": batch, "image": image}
            for layer in layers:
                if layer.name in done:
                    continue
                t = time.time()
                rows = _layer_rows(layer, p, memory, args.meter_all, args.per_family, meta)
                new = not path.exists()
                with open(path, "a", newline="") as f:
                    writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
                    if new:
                        writer.writeheader()
                    writer.writerows(rows)
                print(f"[P={p} {network} {regime}] {layer.name}: {time.time() - t:.1f}s", flush=True)


NUMERICS_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jaxcnn
from jax.sharding import PartitionSpec as P
from experiments import gspmd
geom = jaxcnn.conv_geometry((8, 16, 16, 16), (3, 3, 16, 16))
vars_, _ = gspmd.variants(geom, 8)
specs = [(v.family, v.grid, v.x, v.kernel, v.y) for v in vars_]
g = lambda **s: {a: s.get(a, 1) for a in jaxcnn.AXES}
for y in (P(None, "n", "k"), P("n"), P()):
    for grid in (g(n=2, k=4), g(n=4, k=2)):
        label = "x P(None,'n','k') kernel P(None,None,'n')"
        specs.append((label, grid, P(None, "n", "k"), P(None, None, "n"), y))
print(json.dumps(gspmd.check_numerics(geom, specs)))
"""


def _significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (relative errors: last-bit noise dropped)."""
    return float(f"{value:.{digits - 1}e}")


def check_numerics(out: pathlib.Path) -> list[dict]:
    """GSPMD numerics on 8 devices (subprocess); writes ``gspmd_numerics.json`` (sorted keys, errors to
    4 significant digits: the same bytes on every rerun)."""
    res = _subprocess(8, ["-c", NUMERICS_SCRIPT, str(ROOT)])
    rows = json.loads(res.strip().splitlines()[-1])
    rows = [{k: _significant(v) if k.startswith("err_") else v for k, v in r.items()} for r in rows]
    (out / "gspmd_numerics.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    return rows


# ----------------------------------------------------------------------------- orchestration


def _subprocess(devices: int, cmd: list[str], log=None) -> str:
    """Runs ``python *cmd`` on ``devices`` fake CPU devices; returns its stdout (or writes it to ``log``)."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, *cmd],
        env=env,
        cwd=ROOT,
        text=True,
        check=False,
        stdout=log or subprocess.PIPE,
        stderr=log,
    )
    if proc.returncode:
        raise RuntimeError(f"subprocess on {devices} devices failed ({proc.returncode}): {cmd[:3]}")
    return proc.stdout or ""


def cached_groups(out: pathlib.Path, ps: list[int], networks: list[str], regimes: list[str]) -> list[tuple]:
    """``(P, network, regime)`` of the given ones and of every cached CSV in ``out``, by P, then in
    ``NETWORKS`` and ``REGIMES`` order."""
    found = {(p, n, r) for p in ps for n in networks for r in regimes}
    for path in out.glob("comm_*_P*_*.csv"):
        network, _, rest = path.stem.removeprefix("comm_").partition("_P")
        p, _, regime = rest.partition("_")
        if network in NETWORKS and regime in REGIMES and p.isdigit():
            found.add((int(p), network, regime))
    return sorted(found, key=lambda g: (g[0], NETWORKS.index(g[1]), list(REGIMES).index(g[2])))


def summarise(out: pathlib.Path, ps: list[int], networks: list[str], regimes: list[str]) -> list[dict]:
    """Per layer: planned, GSPMD best, best single algorithm, bound and the ratios; written to
    ``comm_summary.csv`` (every cached group in ``out``, not only the given ones)."""
    summary = []
    for p, network, regime in cached_groups(out, ps, networks, regimes):
        rows = _read(csv_path(out, network, p, regime))
        for layer in dict.fromkeys(r["layer"] for r in rows):
            mine = [r for r in rows if r["layer"] == layer]
            planned = next(r for r in mine if r["method"] == "planned")
            gsp = [r for r in mine if r["method"].startswith("gspmd:") and r["source"] == "metered"]
            algs = [r for r in mine if r["method"].startswith("alg:") and r["source"] != "infeasible"]
            g_best = min(gsp, key=lambda r: float(r["bytes"]), default=None)
            a_best = min(algs, key=lambda r: float(r["bytes"]), default=None)
            bound = float(planned["bound_fwd"]) + float(planned["bound_bwd"])
            pb = float(planned["bytes"]) if planned["bytes"] else math.nan
            gb = float(g_best["bytes"]) if g_best else math.nan
            summary.append(
                {
                    "network": network, "P": p, "regime": regime, "layer": layer,
                    "repeat": int(planned["repeat"]), "shape": planned["shape"],
                    "planned": planned["variant"], "planned_bytes": pb,
                    "planned_equals_prediction": planned["pred_fwd"] != ""
                    and float(planned["fwd"]) == float(planned["pred_fwd"])
                    and float(planned["bwd"]) == float(planned["pred_bwd"]),
                    "gspmd_best": f"{g_best['method'][6:]}@{g_best['variant']}" if g_best else "none",
                    "gspmd_bytes": gb,
                    "best_alg": f"{a_best['method'][4:]}@{a_best['variant']}" if a_best else "none",
                    "best_alg_bytes": float(a_best["bytes"]) if a_best else math.nan,
                    "bound": bound,
                    "vs_gspmd": pb / gb if gb else (math.inf if pb else 1.0),
                    "vs_bound": pb / bound if bound else math.inf,
                }
            )  # fmt: skip
    with open(out / "comm_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(summary[0]) if summary else ["network"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(summary)
    return summary


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (0 B)" if a else "1.00 (0 B)"
    return f"{a / b:.2f}"


def tables(summary: list[dict]) -> str:
    """Markdown: summed ratios per (network, P, regime), then one per-layer table per group."""
    groups: dict[tuple, list[dict]] = {}
    for r in summary:
        groups.setdefault((r["network"], r["P"], r["regime"]), []).append(r)
    lines = [
        "| network | P | regime | layers | Σ planned | Σ GSPMD best | Σ bound | planned/GSPMD "
        "| planned/bound | layers planned > GSPMD | layers planned > 2x bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (net, p, regime), rows in groups.items():
        w = [r["repeat"] for r in rows]
        sp = sum(x * r["planned_bytes"] for x, r in zip(w, rows, strict=True))
        sg = sum(x * r["gspmd_bytes"] for x, r in zip(w, rows, strict=True))
        sb = sum(x * r["bound"] for x, r in zip(w, rows, strict=True))
        worse = sum(r["planned_bytes"] > r["gspmd_bytes"] for r in rows)
        far = sum(r["planned_bytes"] > 2 * r["bound"] for r in rows)
        lines.append(
            f"| {net} | {p} | {regime} | {len(rows)} ({sum(w)}) | {_fmt(sp)} | {_fmt(sg)} | {_fmt(sb)} "
            f"| {_ratio(sp, sg)} | {_ratio(sp, sb)} | {worse} | {far} |"
        )
    for (net, p, regime), rows in groups.items():
        lines += [
            "",
            f"#### {net}, P = {p}, {regime} (batch {REGIMES.get(regime, ('?', '?'))[0]})",
            "",
            "| layer | x | shape | planned | bytes | GSPMD best | bytes | best algorithm (pred.) | bound "
            "| /GSPMD | /bound |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['layer']} | {r['repeat']} | {r['shape']} | {r['planned']} "
                f"| {_fmt(r['planned_bytes'])} | {r['gspmd_best']} | {_fmt(r['gspmd_bytes'])} "
                f"| {r['best_alg']} "
                f"| {_fmt(r['bound'])} | {_ratio(r['planned_bytes'], r['gspmd_bytes'])} "
                f"| {_ratio(r['planned_bytes'], r['bound'])} |"
            )
    return "\n".join(lines) + "\n"


def totals(summary: list[dict]) -> list[dict]:
    """Per (network, P, regime): layers, bytes summed over layers (weighted by repeats) and ratios."""
    groups: dict[tuple, list[dict]] = {}
    for r in summary:
        groups.setdefault((r["network"], r["P"], r["regime"]), []).append(r)
    out = []
    for (net, p, regime), rows in groups.items():
        w = [r["repeat"] for r in rows]
        sp, sg, sb = (sum(x * r[f] for x, r in zip(w, rows, strict=True)) for f in FIELDS_SUMMED)
        out.append(
            dict(network=net, P=p, regime=regime, layers=len(rows), convs=sum(w), planned=sp, gspmd=sg)
            | dict(bound=sb, worse=sum(r["planned_bytes"] > r["gspmd_bytes"] for r in rows))
        )
    return out


FIELDS_SUMMED = ("planned_bytes", "gspmd_bytes", "bound")


def stdout_table(summary: list[dict]) -> str:
    """The readable summary ``main`` prints: one line per (network, P, regime)."""
    head = ("network", "P", "regime", "layers", "Σ jaxcnn", "Σ best GSPMD", "Σ bound", "jaxcnn/GSPMD")
    head += ("jaxcnn/bound", "layers jaxcnn > GSPMD")

    def cells(t: dict) -> tuple[str, ...]:
        sums = (_fmt(t["planned"]), _fmt(t["gspmd"]), _fmt(t["bound"]))
        ratios = (_ratio(t["planned"], t["gspmd"]), _ratio(t["planned"], t["bound"]))
        return (
            t["network"],
            str(t["P"]),
            t["regime"],
            f"{t['layers']} ({t['convs']})",
            *sums,
            *ratios,
            str(t["worse"]),
        )

    body = [cells(t) for t in totals(summary)]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    left = 3  # network, P, regime: left-aligned; numbers right-aligned

    def line(row: tuple) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = (c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in pairs)
        return "  ".join(cells).rstrip()

    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, body)])


def plot(summary: list[dict], path: pathlib.Path) -> None:
    """Per-layer bytes (log scale): planned vs GSPMD best vs bound, one panel per (network, P, regime)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in summary:
        groups.setdefault((r["network"], r["P"], r["regime"]), []).append(r)
    keys = sorted(groups)
    cols = 3
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 3.2 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        rows = groups[key]
        xs = range(len(rows))
        for field, label, style in (
            ("gspmd_bytes", "GSPMD best", "s-"),
            ("planned_bytes", "jaxcnn planned", "o-"),
            ("bound", "lower bound", "k--"),
        ):
            ax.plot(xs, [max(r[field], 1.0) for r in rows], style, ms=3, lw=1, label=label)
        ax.set_yscale("log")
        batch, image = REGIMES.get(key[2], ("?", "?"))
        ax.set_title(f"{key[0]}, P={key[1]} devices, {key[2]} (batch {batch} at {image}²)", fontsize=9)
        ax.set_xlabel("convolution layer (deduplicated, forward order; index)", fontsize=8)
        ax.set_ylabel("bytes received per device, fwd+bwd (B, log)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        "make bench-comm: per-layer convolution communication, jaxcnn planned vs best GSPMD vs lower bound\n"
        "bytes received per device, forward + backward, max over devices (compiled HLO, fake CPU devices)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no matplotlib version: same bytes
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="8 devices, first 3 ResNet-50 layers, batch 16 at 32²"
    )
    ap.add_argument("--P", type=int, nargs="+", default=None, help="device counts (default 64 512)")
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--memory", default="16GiB", help="per-device memory budget of the planner")
    ap.add_argument("--meter-all", action="store_true", help="meter (b) too instead of predicting it")
    ap.add_argument(
        "--per-family",
        type=int,
        default=None,
        help="GSPMD splits per family (default: 2 for P <= 64, 1 above (compile budget); quick: 1)",
    )
    ap.add_argument(
        "--from-cache",
        action="store_true",
        help="measure nothing: rewrite the summary, tables, numerics and plot from the cached CSVs",
    )
    ap.add_argument("--out", default=None, help="results folder (default experiments/results)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick-batch", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--quick-image", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from jaxcnn.planner.cli import parse_memory

    memory = parse_memory(args.memory)
    ps = args.P or ([8] if args.quick else [64, 512])
    if args.quick:
        args.networks, args.regimes = ["resnet50"], ["weak"]
    out = (
        pathlib.Path(args.out)
        if args.out
        else (RESULTS if not args.quick else ROOT / "build" / "bench_quick")
    )
    out.mkdir(parents=True, exist_ok=True)
    if args.worker is not None:
        args.per_family = args.per_family or 1
        run_worker(args.worker, args.networks, args.regimes, memory, out, args)
        return 0
    logs = out / "logs"  # timings: untracked (.gitignore)
    logs.mkdir(exist_ok=True)
    for p in [] if args.from_cache else ps:
        t = time.time()
        cmd = [
            str(pathlib.Path(__file__).resolve()),
            "--worker",
            str(p),
            "--memory",
            args.memory,
            "--out",
            str(out),
        ]
        cmd += ["--networks", *args.networks, "--regimes", *args.regimes]
        cmd += (
            ["--quick"] * args.quick
            + ["--meter-all"] * args.meter_all
            + ["--per-family", str(args.per_family or (1 if args.quick or p > 64 else 2))]
        )
        with open(logs / f"bench_P{p}.log", "a") as log:
            _subprocess(p, cmd, log)
        print(f"P={p}: {time.time() - t:.0f}s", flush=True)
    summary = summarise(out, ps, args.networks, args.regimes)
    (out / "comm_tables.md").write_text(tables(summary))
    written = ["comm_summary.csv", "comm_tables.md"]
    if not args.quick:
        check_numerics(out)
        plot(summary, out / "comm_bytes.png")
        written += ["gspmd_numerics.json", "comm_bytes.png"]
    print("\nper-layer convolution communication, bytes received per device (fwd + bwd, max over devices),")
    print("summed over each network's layers x repeats; jaxcnn = planned, GSPMD = best sharding per layer\n")
    print(stdout_table(summary))
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"\nwrote {', '.join(written)} in {where}/ (per-layer tables: comm_tables.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
