"""Whole-training-step communication: jaxcnn ``auto`` vs GSPMD programs vs the lower bound.

    nice .venv/bin/python experiments/bench_step_comm.py                 # = make bench-step-comm
    .venv/bin/python experiments/bench_step_comm.py --models resnet50 --devices 64 --regimes strong
    .venv/bin/python experiments/bench_step_comm.py --force              # recompute cached rows

For ResNet-50 and VGG-16-BN, P = 64 and 512 fake CPU devices, and three regimes (sizes in
:data:`SIZES`; ``weak``: batch grows with P, ``strong``: batch ≤ P at 224², ``hires``: large images,
batch 8), it compiles (never runs) one whole train step (forward, backward, optimizer update, BatchNorm
statistics) and reports the bytes received per device per step, max over devices, metered from the
compiled HLO by ``jaxcnn.measure``:

1. ``auto``: ``jaxcnn train configs/base.yaml --compile-only model.algorithms=auto ...`` (synthetic data,
   SGD-momentum), in a subprocess; its ``comm_bytes_per_step_max_device`` (and
   ``predicted_comm_bytes_per_step_max_device`` when the runner prints it), ``temp_bytes``,
   ``compile_time_s`` and the number of XLA "Involuntary full rematerialization" warnings.
2. ``gspmd:<strategy>``: the plain Flax NNX model and train step of ``experiments/gspmd_step.py`` under
   data parallelism (``dp``), ZeRO-3 (``fsdp``), batch × spatial (``spatial``) and Megatron-style
   batch × channel (``channel``); ``spatial`` / ``channel`` try their first ``--max-meshes`` (2) even
   factorizations, largest data axis first, and keep the best; one subprocess per strategy.
3. ``bound``: Σ over the network's convolutions (``jaxcnn.networks.get_network``) of
   ``jaxcnn.bounds.lower_bound`` forward + backward (memory-independent, fully distributed arrays).

Every subprocess gets its own ``XLA_FLAGS=--xla_force_host_platform_device_count=P`` (plus
:data:`FAST_COMPILE_FLAGS` unless ``--full-codegen``) and a timeout (``--timeout``).
Results are cached per (model, P, regime, method) in ``experiments/results/whole_step.json``; a rerun
skips finished entries unless ``--force``. Outputs: ``experiments/results/whole_step.csv``,
``experiments/results/whole_step.png``, ``docs/whole_step.md`` and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CACHE = RESULTS / "whole_step.json"
CSV_PATH = RESULTS / "whole_step.csv"
PNG_PATH = RESULTS / "whole_step.png"
DOC_PATH = ROOT / "docs" / "whole_step.md"

MODELS = ("resnet50", "vgg16")
DEVICES = (64, 512)
REGIMES = ("weak", "strong", "hires")
STRATEGIES = ("dp", "fsdp", "spatial", "channel")
METHODS = ("auto", *(f"gspmd:{s}" for s in STRATEGIES))
REMAT = "Involuntary full rematerialization"

#: (regime, P) -> (global batch, image side). docs/gspmd_comparison.md: weak 1024 @ 224², strong 32 @
#: 224², hires 8 @ 1024². Weak scaling keeps 16 images per device (1024 at P = 64, 8192 at P = 512).
SIZES: dict[tuple[str, int], tuple[int, int]] = {
    ("weak", 64): (1024, 224),
    ("weak", 512): (8192, 224),
    ("strong", 64): (32, 224),
    ("strong", 512): (32, 224),
    ("hires", 64): (8, 1024),
    ("hires", 512): (8, 1024),
}
TARGETS = {"weak": 1.0, "strong": 0.5, "hires": 0.5}  # auto / best GSPMD
BOUND_TARGET = 1.3  # auto / bound


def _relative(cmd: list[str]) -> str:
    """A command as recorded in the results: paths relative to the repository (no machine's paths)."""
    return " ".join(os.path.relpath(a, ROOT) if os.path.isabs(a) else a for a in cmd)


def sizes(regime: str, p: int) -> tuple[int, int]:
    return SIZES[(regime, p)]


NUM_CLASSES = [1000]  # --num-classes


def row_key(model: str, p: int, regime: str) -> str:
    batch, image = sizes(regime, p)
    classes = "" if NUM_CLASSES[0] == 1000 else f"/C{NUM_CLASSES[0]}"
    return f"{model}/P{p}/{regime}/B{batch}/I{image}{classes}"


# ----------------------------------------------------------------------------- subprocesses


#: LLVM-only XLA:CPU flags: they shorten compiles 2-3x and leave the HLO (collectives, memory analysis)
#: unchanged (checked: identical metered bytes and temp bytes, jaxcnn auto and GSPMD, 8 devices).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_fast_compile = True


def _env(p: int) -> dict[str, str]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if _fast_compile:
        flags += [f for f in FAST_COMPILE_FLAGS if f not in flags]
    return dict(
        os.environ,
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={p}"]),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )


def _run(cmd: list[str], p: int, timeout: float) -> tuple[int | None, str, str, float]:
    """(return code or None on timeout, stdout, stderr, seconds)."""
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd, env=_env(p), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        return proc.returncode, proc.stdout, proc.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err, time.time() - t0


def jaxcnn_cmd(model: str, p: int, batch: int, image: int) -> list[str]:
    """The ``jaxcnn train --compile-only`` command of the ``auto`` row."""
    n = math.gcd(batch, p)  # the batch must divide over mesh.n; the other devices go to c
    exe = ROOT / ".venv" / "bin" / "jaxcnn"
    return [
        str(exe) if exe.exists() else "jaxcnn",
        "train",
        "configs/base.yaml",
        "--compile-only",
        f"model.name={model}",
        "model.algorithms=auto",
        f"mesh={{n: {n}, h: 1, w: 1, k: 1, c: {p // n}}}",
        f"train.batch_size={batch}",
        f"train.eval_batch_size={batch}",
        "data.source=synthetic",
        f"data.image_size=[{image},{image}]",
        f"data.num_classes={NUM_CLASSES[0]}",
        "optimizer.name=momentum",
        "checkpoint.enabled=false",
    ]


def parse_key_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+): (.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _num(value: str | None) -> float | None:
    try:
        return None if value in (None, "None", "") else float(value)
    except ValueError:
        return None


def _literal(value: str | None) -> Any:
    try:
        return None if value is None else ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None


def run_auto(model: str, p: int, regime: str, timeout: float) -> dict[str, Any]:
    batch, image = sizes(regime, p)
    cmd = jaxcnn_cmd(model, p, batch, image)
    code, out, err, seconds = _run(cmd, p, timeout)
    kv = parse_key_values(out)
    entry: dict[str, Any] = {
        "method": "auto",
        "mesh": kv.get("mesh", ""),
        "bytes": _num(kv.get("comm_bytes_per_step_max_device")),
        "predicted_bytes": _num(kv.get("predicted_comm_bytes_per_step_max_device")),
        "temp_bytes": _num(kv.get("temp_bytes")),
        "memory_bytes": _num(kv.get("memory_compiled_bytes_per_device")),
        "predicted_memory_bytes": _num(kv.get("predicted_memory_bytes_per_device")),
        "compile_time_s": _num(kv.get("compile_time_s")),
        "predicted_components": _literal(kv.get("predicted_components")),
        "remat_warnings": (out + err).count(REMAT),
        "wall_s": round(seconds, 1),
        "command": _relative(cmd),
    }
    if code is None:
        entry |= {"status": "timeout", "note": f"timed out after {timeout:.0f} s"}
    elif code != 0 or entry["bytes"] is None:
        tail = " | ".join(line for line in err.strip().splitlines()[-3:] if not line.startswith("W"))
        entry |= {"status": "error", "note": f"exit {code}: {tail[-400:]}"}
    else:
        entry |= {"status": "ok", "note": ""}
    return entry


#: At most this many meshes per strategy, largest data axis first (0: all; ``--max-meshes``). In the
#: ResNet-50 P = 64 strong row with every mesh tried, both strategies moved more the more they split:
#: ``spatial`` 280, 323, 341 MiB at spatial 2, 4, 8 (the gradient all-reduce spans all P devices whatever
#: the split; halos and GSPMD's all-reduces around rows it cannot split grow with it), ``channel`` 162,
#: 240, 468, 955, 1941, 3549 MiB at model 2 ... 64 (activation all-reduces/gathers grow with the split).
MAX_MESHES = {"dp": 0, "fsdp": 0, "spatial": 2, "channel": 2}


def run_gspmd(model: str, p: int, regime: str, strategy: str, timeout: float) -> dict[str, Any]:
    """One strategy, its mesh candidates, in one subprocess; the best mesh's figures."""
    batch, image = sizes(regime, p)
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "gspmd_step.py"),
        f"--devices={p}",
        f"--model={model}",
        f"--batch={batch}",
        f"--image={image}",
        f"--strategy={strategy}",
        f"--num-classes={NUM_CLASSES[0]}",
        f"--max-meshes={MAX_MESHES[strategy]}",
    ]
    code, out, err, seconds = _run(cmd, p, timeout)
    meshes = [json.loads(line[len("RESULT ") :]) for line in out.splitlines() if line.startswith("RESULT ")]
    # remat warnings per mesh: the worker writes "#MARK <mesh>" to stderr before each compile
    chunks = re.split(r"^#MARK (\S+)$", err, flags=re.M)
    remat = {chunks[i]: chunks[i + 1].count(REMAT) for i in range(1, len(chunks) - 1, 2)}
    for m in meshes:
        m["remat_warnings"] = remat.get(m.get("mesh"), 0)
    ok = [m for m in meshes if m.get("bytes") is not None]
    entry: dict[str, Any] = {
        "method": f"gspmd:{strategy}",
        "meshes": meshes,
        "wall_s": round(seconds, 1),
        "command": _relative(cmd[1:]),
    }
    notes = [f"{m['mesh']}: {m['error']}" for m in meshes if m.get("error")]
    if code is None:
        notes.append(f"timed out after {timeout:.0f} s ({len(meshes)} mesh(es) done)")
    elif code != 0:
        notes.append(f"exit {code}: {err.strip().splitlines()[-1][-300:] if err.strip() else ''}")
    if ok:
        best = min(ok, key=lambda m: m["bytes"])
        entry |= {k: best.get(k) for k in ("mesh", "bytes", "temp_bytes", "compile_time_s", "remat_warnings")}
        entry["param_bytes"] = best.get("param_bytes")
        entry["collectives"] = best.get("collectives")
        entry["status"] = "ok" if code == 0 else "partial"
    else:
        entry |= {"mesh": "", "bytes": None, "status": "timeout" if code is None else "infeasible"}
    entry["note"] = "; ".join(notes)
    return entry


def bound_entry(model: str, p: int, regime: str) -> dict[str, Any]:
    """Σ over the model's convolutions of the forward + backward lower bound."""
    from jaxcnn.bounds import lower_bound
    from jaxcnn.networks import get_network

    batch, image = sizes(regime, p)
    layers = get_network(model, batch, image)
    fwd = sum(lower_bound(la.geom, p, pass_="forward").bytes * la.repeat for la in layers)
    bwd = sum(lower_bound(la.geom, p, pass_="backward").bytes * la.repeat for la in layers)
    return {
        "method": "bound",
        "bytes": fwd + bwd,
        "forward": fwd,
        "backward": bwd,
        "layers": sum(la.repeat for la in layers),
        "status": "ok",
    }


# ----------------------------------------------------------------------------- cache


def load_cache() -> dict[str, Any]:
    if CACHE.exists():
        return json.loads(CACHE.read_text())
    return {}


def save_cache(cache: dict[str, Any]) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(CACHE)


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    cache = load_cache()
    for model in args.models:
        for p in args.devices:
            for regime in args.regimes:
                key = row_key(model, p, regime)
                batch, image = sizes(regime, p)
                row = cache.setdefault(
                    key,
                    {
                        "model": model,
                        "P": p,
                        "regime": regime,
                        "batch": batch,
                        "image": image,
                        "num_classes": NUM_CLASSES[0],
                    },
                )
                row.setdefault("methods", {})
                row["methods"]["bound"] = bound_entry(model, p, regime)
                for method in args.methods:
                    done = row["methods"].get(method)
                    if done and done.get("status") in ("ok", "infeasible") and not args.force:
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {key} {method} ...", flush=True)
                    if method == "auto":
                        entry = run_auto(model, p, regime, args.timeout)
                    else:
                        entry = run_gspmd(model, p, regime, method.split(":")[1], args.timeout)
                    entry["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"
                    )
                    row["methods"][method] = entry
                    save_cache(cache)
                    print(
                        f"    {entry['status']}: {fmt_bytes(entry.get('bytes'))} mesh {entry.get('mesh')} "
                        f"({entry.get('wall_s')} s) {entry.get('note', '')[:200]}",
                        flush=True,
                    )
                save_cache(cache)
    return cache


# ----------------------------------------------------------------------------- reporting


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}"


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """One summary line per (model, P, regime)."""
    m = row["methods"]
    auto = m.get("auto", {})
    gs = {s: m.get(f"gspmd:{s}", {}) for s in STRATEGIES}
    ok = {s: e for s, e in gs.items() if e.get("bytes") is not None}
    best = min(ok, key=lambda s: ok[s]["bytes"]) if ok else None
    a = auto.get("bytes")
    bound = m.get("bound", {}).get("bytes")
    return {
        "model": row["model"],
        "P": row["P"],
        "regime": row["regime"],
        "batch": row["batch"],
        "image": row["image"],
        "auto": a,
        "auto_predicted": auto.get("predicted_bytes"),
        "auto_remat": None if a is None else auto.get("remat_warnings"),
        "auto_compile_s": auto.get("compile_time_s"),
        "best_gspmd": ok[best]["bytes"] if best else None,
        "best_gspmd_name": f"{best}@{ok[best]['mesh']}" if best else "-",
        "dp": gs["dp"].get("bytes"),
        "bound": bound,
        "auto_over_best": _ratio(a, ok[best]["bytes"] if best else None),
        "auto_over_dp": _ratio(a, gs["dp"].get("bytes")),
        "auto_over_bound": _ratio(a, bound),
        "target": TARGETS[row["regime"]],
    }


def selected_rows(cache: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        for p in DEVICES:
            for regime in REGIMES:
                key = row_key(model, p, regime)
                if key in cache and any(k != "bound" for k in cache[key]["methods"]):
                    rows.append(cache[key])
    return rows


def write_csv(rows: list[dict[str, Any]]) -> None:
    fields = (
        "model",
        "P",
        "regime",
        "batch",
        "image",
        "method",
        "status",
        "mesh",
        "bytes",
        "predicted_bytes",
        "temp_bytes",
        "memory_bytes",
        "predicted_memory_bytes",
        "compile_time_s",
        "remat_warnings",
        "wall_s",
        "collectives",
        "meshes_tried",
        "note",
    )
    with open(CSV_PATH, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            for method in (*METHODS, "bound"):
                e = row["methods"].get(method)
                if e is None:
                    continue
                meshes = e.get("meshes") or []
                best = next((x for x in meshes if x.get("mesh") == e.get("mesh")), {})
                collectives = e.get("collectives") or best.get("collectives") or {}
                tried = " ".join(
                    f"{x['mesh']}={x['bytes']:.0f}" if x.get("bytes") is not None else f"{x['mesh']}=error"
                    for x in meshes
                )
                w.writerow(
                    {k: row[k] for k in ("model", "P", "regime", "batch", "image")}
                    | {k: e.get(k) for k in fields[5:14]}
                    | {
                        "collectives": " ".join(
                            f"{kind}:{n}x={b:.0f}" for kind, (n, b) in collectives.items()
                        ),
                        "meshes_tried": tried,
                        "note": e.get("note", ""),
                    }
                )


def write_png(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series = [
        ("auto", "jaxcnn auto"),
        ("best", "best GSPMD"),
        ("dp", "GSPMD data parallel"),
        ("bound", "bound"),
    ]
    fig, axes = plt.subplots(1, len(MODELS), figsize=(13, 5.2), squeeze=False)
    fields = {"auto": "auto", "best": "best_gspmd", "dp": "dp", "bound": "bound"}
    for ax, model in zip(axes[0], MODELS, strict=True):
        sums = [summarize(r) for r in rows if r["model"] == model]
        labels = [f"P={s['P']}\n{s['regime']}\nB{s['batch']} {s['image']}²" for s in sums]
        width = 0.2
        present = [s[f] for s in sums for f in fields.values() if s[f]]
        floor = min(present) / 2**20 / 2 if present else 1.0
        for i, (key, _) in enumerate(series):
            for j, s in enumerate(sums):
                x = j + (i - 1.5) * width
                if s[fields[key]]:
                    ax.bar(x, s[fields[key]] / 2**20 - floor, width, bottom=floor, color=f"C{i}")
                else:
                    ax.text(
                        x,
                        floor * 1.1,
                        "failed" if key == "auto" else "n/a",
                        rotation=90,
                        fontsize=7,
                        ha="center",
                        va="bottom",
                    )
        ax.set_xticks(range(len(sums)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_xlim(-0.6, max(len(sums), 1) - 0.4)
        ax.set_title(model)
        ax.set_ylabel("MiB received per device per train step (max over devices)", fontsize=9)
        ax.set_xlabel("device count P, regime, global batch and image size (pixels²)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if not sums:
            ax.text(0.5, 0.5, "no rows", ha="center", transform=ax.transAxes)
    handles = [Patch(color=f"C{i}", label=name) for i, (_, name) in enumerate(series)]
    axes[0][0].legend(handles=handles, fontsize=8)
    fig.suptitle(
        "make bench-step-comm: whole-train-step communication, jaxcnn auto vs GSPMD vs lower bound\n"
        "bytes received per device per step, max over devices (compiled HLO, fake CPU devices, float32)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=120)
    plt.close(fig)


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "model",
        "P",
        "regime",
        "batch",
        "image",
        "auto",
        "best GSPMD",
        "(strategy@mesh)",
        "GSPMD dp",
        "bound",
        "auto/best",
        "target",
        "auto/dp",
        "auto/bound",
        "remat",
    )
    body = []
    for r in rows:
        s = summarize(r)
        body.append(
            (
                s["model"],
                str(s["P"]),
                s["regime"],
                str(s["batch"]),
                f"{s['image']}²",
                fmt_bytes(s["auto"]),
                fmt_bytes(s["best_gspmd"]),
                s["best_gspmd_name"],
                fmt_bytes(s["dp"]),
                fmt_bytes(s["bound"]),
                _fmt_ratio(s["auto_over_best"]),
                f"<= {s['target']:.1f}",
                _fmt_ratio(s["auto_over_dp"]),
                _fmt_ratio(s["auto_over_bound"]),
                "-" if s["auto_remat"] is None else str(s["auto_remat"]),
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def _verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "- (no auto figure)"
    return f"{ratio:.3f} (≤ {target}: {'met' if ratio <= target else 'missed'})"


def _md_table(head: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(out)


def write_doc(rows: list[dict[str, Any]]) -> None:
    sizes_body = [
        [
            regime,
            str(p),
            str(b),
            f"{i}²",
            "grows with P" if regime == "weak" else f"{b} ≤ P" if b <= p else "",
        ]
        for (regime, p), (b, i) in SIZES.items()
    ]
    main_body, strat_body, auto_body, cost_body, failures = [], [], [], [], []
    for r in rows:
        s = summarize(r)
        for method in METHODS:
            e = r["methods"].get(method)
            if e and e.get("status") != "ok":
                failures.append(
                    f"- {s['model']} P={s['P']} {s['regime']} `{method}`: {e.get('status')}: "
                    f"{(e.get('note') or '').split(' | --')[0][:300]}"
                )
        walls = {m: r["methods"].get(m, {}).get("wall_s") for m in METHODS}
        cost_body.append(
            [s["model"], str(s["P"]), s["regime"]]
            + ["-" if walls[m] is None else f"{walls[m]:.0f}" for m in METHODS]
            + [f"{sum(w for w in walls.values() if w):.0f}"]
        )
        main_body.append(
            [
                s["model"],
                str(s["P"]),
                s["regime"],
                f"{s['batch']} @ {s['image']}²",
                fmt_bytes(s["auto"]),
                fmt_bytes(s["best_gspmd"]),
                s["best_gspmd_name"],
                fmt_bytes(s["dp"]),
                fmt_bytes(s["bound"]),
                _verdict(s["auto_over_best"], s["target"]),
                _fmt_ratio(s["auto_over_dp"]),
                _verdict(s["auto_over_bound"], BOUND_TARGET),
            ]
        )
        for strat in STRATEGIES:
            e = r["methods"].get(f"gspmd:{strat}")
            if e is None:
                continue
            tried = ", ".join(
                f"{x['mesh']}: {fmt_bytes(x['bytes'])}"
                if x.get("bytes") is not None
                else f"{x['mesh']}: failed"
                for x in e.get("meshes") or []
            )
            strat_body.append(
                [
                    s["model"],
                    str(s["P"]),
                    s["regime"],
                    strat,
                    e.get("status", ""),
                    e.get("mesh") or "-",
                    fmt_bytes(e.get("bytes")),
                    fmt_bytes(e.get("temp_bytes")),
                    "-" if e.get("compile_time_s") is None else f"{e['compile_time_s']:.0f}",
                    str(e.get("remat_warnings", "-")),
                    tried or "-",
                    (e.get("note") or "")[:160],
                ]
            )
        a = r["methods"].get("auto", {})
        auto_body.append(
            [
                s["model"],
                str(s["P"]),
                s["regime"],
                a.get("status", "-"),
                a.get("mesh", "-"),
                fmt_bytes(a.get("bytes")),
                fmt_bytes(a.get("predicted_bytes")),
                fmt_bytes(a.get("temp_bytes")),
                fmt_bytes(a.get("memory_bytes")),
                fmt_bytes(a.get("predicted_memory_bytes")),
                "-" if a.get("compile_time_s") is None else f"{a['compile_time_s']:.0f}",
                str(a.get("remat_warnings", "-")),
                ", ".join(f"{k} {fmt_bytes(v)}" for k, v in (a.get("predicted_components") or {}).items())
                or "-",
                (a.get("note") or "")[:160],
            ]
        )
    text = DOC_TEMPLATE.format(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        sizes=_md_table(["regime", "P", "batch", "image", "note"], sizes_body),
        main=_md_table(
            [
                "model",
                "P",
                "regime",
                "batch @ image",
                "auto",
                "best GSPMD",
                "strategy@mesh",
                "GSPMD dp",
                "bound",
                "auto / best GSPMD",
                "auto / dp",
                "auto / bound",
            ],
            main_body,
        ),
        strategies=_md_table(
            [
                "model",
                "P",
                "regime",
                "strategy",
                "status",
                "best mesh",
                "bytes",
                "temp",
                "compile s",
                "remat",
                "meshes tried",
                "note",
            ],
            strat_body,
        ),
        auto=_md_table(
            [
                "model",
                "P",
                "regime",
                "status",
                "run mesh",
                "metered",
                "predicted",
                "temp",
                "memory (XLA)",
                "memory predicted",
                "compile s",
                "remat",
                "predicted by component",
                "note",
            ],
            auto_body,
        ),
        failures="\n".join(failures) or "None.",
        cost=_md_table(["model", "P", "regime", *METHODS, "total"], cost_body),
        max_meshes=MAX_MESHES["spatial"] or "all",
        num_classes=NUM_CLASSES[0],
        fast_flags=" ".join(FAST_COMPILE_FLAGS) if _fast_compile else "(no extra flags)",
        rows=len(rows),
        total=len(MODELS) * len(DEVICES) * len(REGIMES),
    )
    DOC_PATH.write_text(text)


DOC_TEMPLATE = """\
# Whole-training-step communication: jaxcnn `auto` vs GSPMD vs the lower bound

Generated by `make bench-step-comm` (`experiments/bench_step_comm.py`) on {date}; {rows} of the
{total} (model, P, regime) rows are in the cache. Every number is **bytes received per device per
train step, max over devices**, metered by `jaxcnn.measure` from compiled HLO (compile only, never
run, fake CPU devices `--xla_force_host_platform_device_count=P`, float32). Outputs:
`experiments/results/whole_step.csv` (one line per row × method, every mesh tried),
`experiments/results/whole_step.json` (cache), `experiments/results/whole_step.png`.

## What is compared

- **auto** — `jaxcnn train configs/base.yaml --compile-only model.name=<model> model.algorithms=auto`
  with synthetic data ({num_classes} classes), SGD-momentum, mesh `{{n: gcd(B, P), c: P / n}}` (the batch
  must divide over `n`; the planner re-arranges the devices per layer anyway). The whole jitted train
  step (forward, backward, BatchNorm statistics, momentum update) of jaxcnn's ResNet-50 v1.5 /
  VGG-16-BN (GAP + dense head). `remat` counts XLA's "Involuntary full rematerialization" warnings.
- **GSPMD** (`experiments/gspmd_step.py`) — what a JAX user writes without jaxcnn: the same
  architectures as plain Flax NNX modules (`nnx.Conv`, `nnx.BatchNorm` in train mode,
  `nnx.max_pool`, global average pool + `nnx.Linear`), softmax cross-entropy, `optax.sgd` with
  momentum 0.9, `jax.jit` with in/out shardings on a `jax.make_mesh` mesh (Auto axes) and
  `with_sharding_constraint` on every conv output:
  - `dp`: batch over gcd(B, P) devices, parameters replicated (gradient all-reduce);
  - `fsdp` (ZeRO-3): batch over gcd(B, P) devices, every parameter with a dimension divisible by P
    sharded over all P devices along its largest such dimension, optimizer state alike;
  - `spatial`: mesh (data, spatial), images and conv outputs `P('data', 'spatial')` (rows split)
    where the rows divide; factorizations with data | B and spatial | image;
  - `channel` (Megatron-style): mesh (data, model); along the main path convs alternate between
    output channels split (kernel `P(.,.,.,'model')`, output `P('data',.,.,'model')`) and input
    channels split (kernel `P(.,.,'model',.)`, output all-reduced to `P('data')`); a ResNet
    projection shortcut takes its block's last conv's mode; factorizations with data | B and
    2 ≤ model ≤ 64.
  `spatial` and `channel` try their first {max_meshes} factorizations, largest data axis first
  (`--max-meshes 0`: all of them): in the ResNet-50 P = 64 strong row with every mesh tried, both
  moved more the more they split (`spatial` 280 / 323 / 341 MiB at spatial 2 / 4 / 8; `channel`
  162 / 240 / 468 / 955 / 1941 / 3549 MiB at model 2 … 64). "best GSPMD" is the minimum over the
  four strategies and the meshes tried.
- **bound** — Σ over the 53 (ResNet-50) / 13 (VGG-16) convolutions of
  `jaxcnn.bounds.lower_bound(geom, P, pass_="forward").bytes + lower_bound(..., pass_="backward").bytes`
  (memory-independent bound, arrays evenly distributed at the start and end of each layer; geometry
  from `jaxcnn.networks.get_network(model, B, image)`). It covers the convolutions' forward and
  backward passes only: no BatchNorm statistics, no pooling or residual-add traffic, no dense head,
  no optimizer, and no layout changes between layers (each layer may start from its own preferred
  layout). A whole step cannot move less than this sum, but the sum is not attainable in general.

Every subprocess compiles with `{fast_flags}` (LLVM-only
flags: 2-3× shorter compiles; the compiled HLO is unchanged — identical metered bytes and temp bytes
with and without them for jaxcnn auto and GSPMD on 8 devices; `--full-codegen` drops them).

Targets: auto ≤ 0.5 × best GSPMD in `strong` and `hires`, ≤ 1.0 × in `weak`; auto ≤ {bound_target} × bound.

## Sizes

{sizes}

## Results

{main}

Wall time of the subprocesses (s, including planning and compiling every mesh tried):

{cost}

![whole-step bytes](../experiments/results/whole_step.png)

### GSPMD strategies (best mesh per strategy; the meshes tried)

{strategies}

### jaxcnn auto

`metered` / `predicted`: bytes per device per step. `memory (XLA)`: the step's per-device memory from
`memory_analysis()` (arguments + outputs - donated + temporaries); `memory predicted`: the whole-step
memory model's peak (`jaxcnn.planner.step_memory`, `docs/step_memory.md`).

{auto}

## Failures and partial entries

{failures}

## Limits

- Fake CPU devices: XLA:CPU's SPMD partitioner and collective choices; float32. In particular
  XLA:CPU all-reduces `fsdp`'s gradients in full and then slices them (its all-reduce bytes equal
  `dp`'s; see `collectives` in the CSV), so `fsdp` = `dp` + the parameter all-gathers here; a
  pipeline that turns all-reduce + slice into a reduce-scatter would move about half that all-reduce.
- GSPMD was given one natural sharding per strategy (constraints on conv outputs only); a
  cleverer hand-placed program could move less.
- The bound is per-layer (see above); ratios to it include everything the bound does not cover.
""".replace("{bound_target}", str(BOUND_TARGET))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--devices", nargs="+", type=int, choices=DEVICES, default=list(DEVICES))
    p.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--force", action="store_true", help="recompute cached entries")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (both sides)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per subprocess")
    p.add_argument("--report-only", action="store_true", help="only rewrite CSV / PNG / doc from the cache")
    p.add_argument(
        "--bound-only",
        action="store_true",
        help="recompute the cached rows' lower bounds (no subprocess), then rewrite CSV / PNG / doc",
    )
    p.add_argument(
        "--full-codegen", action="store_true", help=f"compile without {' '.join(FAST_COMPILE_FLAGS)}"
    )
    p.add_argument(
        "--max-meshes",
        type=int,
        default=2,
        help="meshes tried per spatial / channel strategy, largest data axis first (0: all factorizations)",
    )
    args = p.parse_args(argv)
    global _fast_compile
    _fast_compile = not args.full_codegen
    MAX_MESHES["spatial"] = MAX_MESHES["channel"] = args.max_meshes
    NUM_CLASSES[0] = args.num_classes
    sys.path.insert(0, str(ROOT))
    if args.bound_only:
        cache = load_cache()
        for row in cache.values():
            row.setdefault("methods", {})["bound"] = bound_entry(row["model"], row["P"], row["regime"])
        save_cache(cache)
    else:
        cache = load_cache() if args.report_only else sweep(args)
    rows = selected_rows(cache, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(rows)
    write_png(rows)
    write_doc(rows)
    print()
    print("whole-train-step bytes received per device per step (max over devices)")
    print(summary_table(rows))
    print(f"\nwrote {CSV_PATH.relative_to(ROOT)}, {PNG_PATH.relative_to(ROOT)}, {DOC_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
