"""Mixed precision: the bytes a bfloat16 step moves, the error of each reduce dtype, and accuracy and
step time in bfloat16 against float32 (docs/mixed_precision.md).

    .venv/bin/python experiments/mixed_precision.py bytes      # compile-only steps, metered and predicted
    .venv/bin/python experiments/mixed_precision.py reduce     # the sums' error in float32 and bfloat16
    .venv/bin/python experiments/mixed_precision.py accuracy   # training runs, float32 against bfloat16
    .venv/bin/python experiments/mixed_precision.py report     # docs/mixed_precision.md from the cache

Each part caches its results in ``experiments/results/mixed_precision.json`` and rewrites its table
in ``docs/mixed_precision.md`` (between ``<!-- mixed-precision:<part>:start/end -->`` markers).

- ``bytes``: ``jaxcnn train --compile-only`` of ``configs/default.yaml`` (8 CPU devices) and of
  ResNet-50 (batch 32, 224², ``auto``, 64 CPU devices; the whole-step report's strong-scaling row) in
  float32, in bfloat16 (sums in float32, the default) and in bfloat16 with bfloat16 sums: the bytes
  the busiest device receives, metered from the compiled HLO and predicted, and the compiled and
  predicted peak memory. XLA:CPU carries a 16-bit sum as float32 (``jaxcnn.dtypes.Dtypes.on``), so
  for bfloat16 sums the GPU / TPU figure is the prediction for those platforms.
- ``reduce``: the sums of a reduce-scatter (the partial outputs of a layer whose input channels are
  split over ``c`` devices) and of an all-reduce (a data-parallel kernel gradient over P devices),
  computed from real per-device partials of ResNet-style layers on random data: exactly (float64),
  in float32 (``reduce_dtype: float32``), and in bfloat16 as a ring does it on GPU / TPU (each of
  the P-1 hops rounds its partial sum to bfloat16) and as XLA:CPU does it (bfloat16 partials summed
  in float32, rounded once). Relative error (Frobenius norm) of each against the float64 sum.
- ``accuracy``: ``jaxcnn train`` in float32 and in bfloat16: ``configs/default.yaml`` (digits, test
  accuracy), ``configs/unet.yaml`` (held-out Dice), a ResNet-18 (width 0.25, 32², 256 synthetic
  images, 150 steps: the training loss curve) and each run's mean step time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / "experiments" / "results" / "mixed_precision.json"
DOC = ROOT / "docs" / "mixed_precision.md"
EXE = str(ROOT / ".venv" / "bin" / "jaxcnn") if (ROOT / ".venv" / "bin" / "jaxcnn").exists() else "jaxcnn"

#: (label, overrides) of the three dtype settings.
SETTINGS = (
    ("float32", ["model.dtype=float32"]),
    ("bfloat16", ["model.dtype=bfloat16", "model.reduce_dtype=float32"]),
    ("bfloat16, bf16 sums", ["model.dtype=bfloat16", "model.reduce_dtype=bfloat16"]),
)


def _env(devices: int) -> dict[str, str]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return dict(
        os.environ,
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )


def _key_values(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([a-z_]+): (.*)$", text, re.M))


def _num(value: str | None) -> float | None:
    try:
        return None if value in (None, "None") else float(value)
    except ValueError:
        return None


def _load() -> dict[str, Any]:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def _save(cache: dict[str, Any]) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")


def _run(cmd: list[str], devices: int, timeout: float = 3600) -> tuple[int, str, str, float]:
    t0 = time.time()
    proc = subprocess.run(
        cmd, env=_env(devices), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr, time.time() - t0


# ----------------------------------------------------------------------------- bytes

#: (case, devices, config, overrides)
BYTES_CASES = (
    ("default config (small CNN, 8 devices)", 8, "configs/default.yaml", []),
    (
        "ResNet-50, batch 32, 224², auto, 64 devices",
        64,
        "configs/base.yaml",
        [
            "model.name=resnet50", "model.algorithms=auto", "model.plan_objective=bytes",
            "mesh={n: 32, h: 1, w: 1, k: 1, c: 2}", "train.batch_size=32", "train.eval_batch_size=32",
            "data.source=synthetic", "data.image_size=[224,224]", "data.num_classes=1000",
            "optimizer.name=momentum", "checkpoint.enabled=false",
        ],
    ),
)  # fmt: skip


def part_bytes(cache: dict[str, Any]) -> None:
    from jaxcnn.runner.aot import parse_placements  # the placements table of --compile-only

    rows = []
    for case, devices, config, overrides in BYTES_CASES:
        for label, dtype in SETTINGS:
            cmd = [EXE, "train", config, "--compile-only", *overrides, *dtype]
            print(f"[bytes] {case} / {label} ...", flush=True)
            code, out, err, seconds = _run(cmd, devices)
            kv = _key_values(out)
            if code != 0:
                raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
            rows.append(
                {
                    "case": case,
                    "setting": label,
                    "metered": _num(kv.get("comm_bytes_per_step_max_device")),
                    "predicted": _num(kv.get("predicted_comm_bytes_per_step_max_device")),
                    "memory_compiled": _num(kv.get("memory_compiled_bytes_per_device")),
                    "memory_predicted": _num(kv.get("predicted_memory_bytes_per_device")),
                    "placements": str(parse_placements(out)),
                    "seconds": round(seconds, 1),
                    "command": " ".join(os.path.relpath(a, ROOT) if os.path.isabs(a) else a for a in cmd),
                }
            )
    # bfloat16 sums as GPU / TPU carry them (XLA:CPU widens them): predicted in this process
    rows += _bf16_sums_off_cpu()
    cache["bytes"] = {"date": _today(), "rows": rows}


def _bf16_sums_off_cpu() -> list[dict[str, Any]]:
    """The default config's bytes with bfloat16 sums, priced for GPU / TPU (2-byte sums)."""
    code = (
        "import json,jax\n"
        "from jaxcnn.dtypes import Dtypes\n"
        "from jaxcnn.runner.config import load_config\n"
        "from jaxcnn.runner.prepare import prepare\n"
        "from jaxcnn.runner.predict import model_for_prediction\n"
        "from jaxcnn.planner.model import predict_model\n"
        "from jaxcnn.mesh import mesh_sizes\n"
        "cfg = load_config('configs/default.yaml', ['model.dtype=bfloat16', 'model.reduce_dtype=bfloat16'])\n"
        "p = prepare(cfg, compile_only=True)\n"
        "m = model_for_prediction(p.graphs, p.state)\n"
        "out = {}\n"
        "for platform in ('gpu', 'tpu'):\n"
        "    f = predict_model(m, cfg.train.batch_size, p.image_shape, mesh_sizes(p.mesh),\n"
        "                      dtype=Dtypes('bfloat16', 'bfloat16'), platform=platform)\n"
        "    out[platform] = f.cost.max_bytes\n"
        "print(json.dumps(out))\n"
    )
    rc, out, err, _ = _run([sys.executable, "-c", code], 8)
    if rc != 0:
        raise SystemExit(f"pricing bfloat16 sums failed:\n{err[-2000:]}")
    figures = json.loads(out.strip().splitlines()[-1])
    case = BYTES_CASES[0][0]
    return [
        {"case": case, "setting": f"bfloat16, bf16 sums, priced for {p.upper()}", "predicted": b}
        for p, b in figures.items()
    ]


def bytes_table(data: dict[str, Any]) -> str:
    rows = data["rows"]
    base = {r["case"]: r["metered"] for r in rows if r["setting"] == "float32"}
    lines = [
        f"Measured {data['date']}: `python experiments/mixed_precision.py bytes` (compile only, XLA:CPU).",
        "",
        "| step | dtypes | metered bytes | predicted bytes | vs float32 | compiled memory "
        "| predicted memory |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        moved = r.get("metered") or r.get("predicted")
        ratio = f"{moved / base[r['case']]:.3f}x" if moved and base.get(r["case"]) else ""
        mem_c, mem_p = r.get("memory_compiled"), r.get("memory_predicted")
        mem_err = f" ({mem_p / mem_c - 1:+.1%})" if mem_c and mem_p else ""
        lines.append(
            f"| {r['case']} | {r['setting']} | {_fmt(r.get('metered'))} | {_fmt(r.get('predicted'))} | "
            f"{ratio} | {_fmt(mem_c)} | {_fmt(mem_p)}{mem_err} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reduce


#: (name, batch, H=W, C, K, R) ResNet-style layers, small enough to run in float64 on one CPU.
REDUCE_LAYERS = (
    ("3x3, 64 -> 64, 56²", 8, 28, 64, 64, 3),
    ("1x1, 256 -> 64, 28²", 8, 14, 256, 64, 1),
    ("3x3, 256 -> 256, 14²", 8, 7, 256, 256, 3),
)
REDUCE_P = (8, 64)


def part_reduce(cache: dict[str, Any]) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax

    bf16 = jnp.bfloat16
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, k, dtype):
        return lax.conv_general_dilated(
            x.astype(dtype), k.astype(dtype), (1, 1), "SAME", dimension_numbers=dn,
            preferred_element_type=jnp.float32 if dtype == bf16 else dtype,
        )  # fmt: skip

    def ring(partials):
        """A ring's sum in bfloat16: the running sum is rounded to bfloat16 at each of the P-1 hops."""
        acc = partials[0].astype(bf16)
        for p in partials[1:]:
            acc = (acc.astype(jnp.float32) + p.astype(bf16).astype(jnp.float32)).astype(bf16)
        return acc.astype(jnp.float64)

    def errors(partials, exact):
        def rel(v):
            return float(jnp.linalg.norm((v - exact).ravel()) / jnp.linalg.norm(exact.ravel()))

        f32 = sum(p.astype(jnp.float32) for p in partials)
        return {
            "float32 sums": rel(f32.astype(bf16).astype(jnp.float64)),  # then the output's rounding
            "bfloat16 sums, XLA:CPU": rel(
                sum(p.astype(bf16).astype(jnp.float32) for p in partials).astype(bf16).astype(jnp.float64)
            ),
            "bfloat16 sums, ring (GPU/TPU)": rel(ring(partials)),
        }

    rows = []
    key = jax.random.key(0)
    for name, n, hw, c, k, r in REDUCE_LAYERS:
        kx, kk, key = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, hw, hw, c), jnp.float64)
        w = jax.random.normal(kk, (r, r, c, k), jnp.float64) * (2.0 / (r * r * c)) ** 0.5
        for p in REDUCE_P:
            if c % p == 0:  # a reduce-scatter over c: each device's partial output over its C/P channels
                parts = [
                    conv(x[..., i * c // p : (i + 1) * c // p], w[:, :, i * c // p : (i + 1) * c // p], bf16)
                    for i in range(p)
                ]
                exact = conv(x, w, jnp.float64)
                rows.append({"layer": name, "sum": f"output over c={p}", **errors(parts, exact)})
            # a data-parallel kernel gradient: one image per device, P devices
            kx, kd, key = jax.random.split(key, 3)
            xs = jax.random.normal(kx, (p, hw, hw, c), jnp.float64)
            dys = jax.random.normal(kd, (p, hw, hw, k), jnp.float64)
            parts = [kernel_grad(conv, xs[i : i + 1], dys[i : i + 1], w, bf16) for i in range(p)]
            exact = kernel_grad(conv, xs, dys, w, jnp.float64)
            rows.append({"layer": name, "sum": f"kernel gradient over n={p}", **errors(parts, exact)})
            print(f"[reduce] {name}, P={p}: {rows[-1]}", flush=True)
    cache["reduce"] = {"date": _today(), "rows": rows}


def kernel_grad(conv, x, dy, w, dtype):
    """The kernel gradient of ``conv(x, w)`` for output cotangent ``dy``, computed in ``dtype``."""
    import jax

    _, vjp = jax.vjp(lambda k: conv(x, k, dtype).astype(dtype), w.astype(dtype))
    return vjp(dy.astype(dtype))[0]


def reduce_table(data: dict[str, Any]) -> str:
    cols = ("float32 sums", "bfloat16 sums, XLA:CPU", "bfloat16 sums, ring (GPU/TPU)")
    lines = [
        f"Measured {data['date']}: `python experiments/mixed_precision.py reduce` "
        "(bfloat16 operands, float32 "
        "accumulation in each device's convolution; relative error of the summed result against float64).",
        "",
        "| layer | sum | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for r in data["rows"]:
        lines.append(f"| {r['layer']} | {r['sum']} | " + " | ".join(f"{r[c]:.2e}" for c in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- accuracy

RESNET18 = [
    "model.name=resnet18", "model.algorithms=auto", "model.options={width: 0.25, small_images: true}",
    "mesh={n: 8}", "data.source=synthetic", "data.image_size=[32,32]", "data.num_classes=10",
    "data.num_train=256", "data.num_test=64", "train.steps=150", "train.batch_size=32",
    "train.eval_batch_size=64", "train.log_every=10", "train.eval_every=0", "optimizer.name=adam",
    "optimizer.learning_rate=0.003", "checkpoint.enabled=false",
]  # fmt: skip
ACCURACY_CASES = (
    ("digits (configs/default.yaml)", "configs/default.yaml", ["checkpoint.enabled=false"]),
    ("2-D U-Net (configs/unet.yaml)", "configs/unet.yaml", []),
    ("ResNet-18, synthetic", "configs/base.yaml", RESNET18),
)


def part_accuracy(cache: dict[str, Any]) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for case, config, overrides in ACCURACY_CASES:
            for label, dtype in SETTINGS[:2]:
                name = re.sub(r"\W+", "-", f"{case}-{label}").strip("-")
                cmd = [EXE, "train", config, "--cpu-devices", "8", *overrides, *dtype]
                cmd += [f"output_dir={out}", f"name={name}"]
                print(f"[accuracy] {case} / {label} ...", flush=True)
                code, _, err, seconds = _run(cmd, 8)
                if code != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
                run = pathlib.Path(out) / name
                summary = json.loads((run / "summary.json").read_text())
                records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                rows.append(
                    {
                        "case": case,
                        "setting": label,
                        "eval_accuracy": summary.get("final_eval_accuracy"),
                        "eval_dice": summary.get("final_eval_dice"),
                        "train_loss": summary.get("final_train_loss"),
                        "mean_step_time_s": summary.get("mean_step_time_s"),
                        "losses": {r["step"]: r["loss"] for r in records if "loss" in r},
                        "seconds": round(seconds, 1),
                    }
                )
    cache["accuracy"] = {"date": _today(), "rows": rows}


#: The loss-curve band's split: relative deviation where float32's loss is at least this, absolute below.
BAND_SPLIT = 0.1


def loss_band(losses: dict[Any, float], reference: dict[Any, float]) -> tuple[float, float]:
    """(max |Δ| / loss over the logged steps where the reference loss ≥ BAND_SPLIT, max |Δ| over the
    others): a memorising run's loss falls to ~1e-3, where relative deviations say nothing."""
    common = [s for s in losses if s in reference]
    high = [abs(losses[s] - reference[s]) / reference[s] for s in common if reference[s] >= BAND_SPLIT]
    low = [abs(losses[s] - reference[s]) for s in common if reference[s] < BAND_SPLIT]
    return max(high, default=0.0), max(low, default=0.0)


def accuracy_table(data: dict[str, Any]) -> str:
    rows = data["rows"]
    lines = [
        f"Measured {data['date']}: `python experiments/mixed_precision.py accuracy` (8 virtual CPU devices "
        "on 2 shared cores; each run once).",
        "",
        "| run | dtype | test accuracy | test Dice | final train loss "
        f"| loss vs float32: max relative (loss ≥ {BAND_SPLIT}) / max absolute (below) | mean step time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    f32 = {r["case"]: r for r in rows if r["setting"] == "float32"}
    for r in rows:
        ref = f32[r["case"]]
        rel, absolute = loss_band(r["losses"], ref["losses"])
        slower = r["mean_step_time_s"] / ref["mean_step_time_s"]
        lines.append(
            f"| {r['case']} | {r['setting']} | {_fmt4(r['eval_accuracy'])} | {_fmt4(r['eval_dice'])} | "
            f"{r['train_loss']:.4f} | {rel:.1%} / {absolute:.4f} | "
            f"{r['mean_step_time_s'] * 1e3:.1f} ms ({slower:.2f}x) |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def _today() -> str:
    return datetime.date.today().isoformat()


def _fmt(b: float | None) -> str:
    return "" if b is None else f"{b:,.0f}"


def _fmt4(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


TABLES = {"bytes": bytes_table, "reduce": reduce_table, "accuracy": accuracy_table}


def write_doc(cache: dict[str, Any]) -> None:
    text = DOC.read_text()
    for part, table in TABLES.items():
        if part not in cache:
            continue
        start, end = f"<!-- mixed-precision:{part}:start -->", f"<!-- mixed-precision:{part}:end -->"
        if start not in text:
            raise SystemExit(f"{DOC} has no {start} marker")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{table(cache[part])}\n{end}{tail}"
    DOC.write_text(text)


PARTS = {"bytes": part_bytes, "reduce": part_reduce, "accuracy": part_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=[*PARTS, "report"])
    args = parser.parse_args()
    cache = _load()
    if args.part != "report":
        t0 = time.time()
        PARTS[args.part](cache)
        _save(cache)
        print(f"[{args.part}] {time.time() - t0:.0f} s", flush=True)
    write_doc(cache)
    for part, table in TABLES.items():
        if part in cache:
            print(table(cache[part]), end="\n\n")


if __name__ == "__main__":
    main()
