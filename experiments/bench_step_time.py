"""Predicted against measured step time on 8 CPU devices (issue 17's validation; ``make bench-step-time``).

For each (model, placement) case it prepares the run as ``jaxcnn train`` does
(:func:`jaxcnn.runner.prepare.prepare`: the same compiled, donated train step and the same
``predicted_step_time_s``), then times the step on one real batch: ``--rounds`` rounds over all cases
in turn (so slow phases of a shared machine spread over every case), ``--steps`` timed calls per case
per round after two warm-up calls, each waited for. A case's measured time is the median of its round
medians.

Figures (``docs/step_time.md``, between the ``bench-step-time`` markers, and a scatter plot):

- MAPE: mean over cases of ``|predicted - measured| / measured``;
- ordering: of the pairs of cases of one model whose measured times differ by more than 15%, the
  share the prediction orders the same way;
- auto by time against the fastest measured case of its model.

The time model is the backend's profile (``jaxcnn calibrate --cpu-devices 8``); without one the
script calibrates first (``--recalibrate`` always does). Run from the repository root:

    python experiments/bench_step_time.py [--rounds 5] [--steps 10] [--cases small_cnn-data,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

# Issue 17's validation is on 8 CPU devices by definition (make bench-accelerator measures an accelerator);
# JAX_PLATFORMS=gpu python experiments/bench_step_time.py runs the same cases on 8 GPUs.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxcnn.measure.compile import meter_compiled  # noqa: E402
from jaxcnn.runner.config import load_config  # noqa: E402
from jaxcnn.runner.data import TrainBatches  # noqa: E402
from jaxcnn.runner.prepare import prepare  # noqa: E402
from jaxcnn.timing.calibrate import calibrate  # noqa: E402
from jaxcnn.timing.metered import metered_link  # noqa: E402
from jaxcnn.timing.model import backend_time_model  # noqa: E402
from jaxcnn.timing.profile import save_profile  # noqa: E402

DOC = os.path.join(ROOT, "docs", "step_time.md")
PLOT = os.path.join(ROOT, "docs", "step_time_scatter.png")
RESULTS = os.path.join(ROOT, "experiments", "results", "step_time.json")
START, END = "<!-- bench-step-time:start -->", "<!-- bench-step-time:end -->"

SMALL_CNN = ["model.name=small_cnn", "train.batch_size=64"]
RESNET18 = [
    "model.name=resnet18",
    "model.options={width: 0.25, small_images: true}",
    "data.source=synthetic",
    "data.image_size=[32, 32]",
    "data.num_train=256",
    "data.num_test=64",
    "train.batch_size=32",
    "train.eval_batch_size=32",
]
UNET = [
    "model.name=unet",
    "model.options={width: 0.5, depth: 2, spatial_dims: 2}",
    "data.source=ellipsoids",
    "data.image_size=[32, 32]",
    "data.num_train=64",
    "data.num_test=16",
    "train.batch_size=16",
    "train.eval_batch_size=16",
]
AUTO_BYTES = ["model.algorithms=auto", "model.plan_objective=bytes", "mesh.n=-1"]
AUTO_TIME = ["model.algorithms=auto", "model.plan_objective=time", "mesh.n=-1"]

#: name: (model, overrides of configs/default.yaml)
CASES: dict[str, tuple[str, list[str]]] = {
    "small_cnn-data": ("small_cnn", [*SMALL_CNN, "model.algorithms=data"]),
    "small_cnn-spatial": ("small_cnn", [*SMALL_CNN, "model.algorithms=spatial@n=2,h=2,w=2"]),
    "small_cnn-filter": ("small_cnn", [*SMALL_CNN, "model.algorithms=filter@n=2,k=4"]),
    "small_cnn-channel": ("small_cnn", [*SMALL_CNN, "model.algorithms=channel@n=2,c=4"]),
    "small_cnn-2d": ("small_cnn", [*SMALL_CNN, "model.algorithms=2d@n=2,h=2,k=2"]),
    "small_cnn-3d": ("small_cnn", [*SMALL_CNN, "model.algorithms=3d@n=2,k=2,c=2"]),
    "small_cnn-mixed": ("small_cnn", list(SMALL_CNN)),  # configs/default.yaml's hand placement
    "small_cnn-auto-bytes": ("small_cnn", [*SMALL_CNN, *AUTO_BYTES]),
    "small_cnn-auto-time": ("small_cnn", [*SMALL_CNN, *AUTO_TIME]),
    "resnet18-data": ("resnet18", [*RESNET18, "model.algorithms=data"]),
    "resnet18-3d": ("resnet18", [*RESNET18, "model.algorithms=3d@n=2,k=2,c=2"]),
    "resnet18-auto-bytes": ("resnet18", [*RESNET18, *AUTO_BYTES]),
    "resnet18-auto-time": ("resnet18", [*RESNET18, *AUTO_TIME]),
    "unet-data": ("unet", [*UNET, "model.algorithms=data"]),
    "unet-spatial": ("unet", [*UNET, "model.algorithms=spatial@n=2,h=2,w=2"]),
    "unet-auto-bytes": ("unet", [*UNET, *AUTO_BYTES]),
    "unet-auto-time": ("unet", [*UNET, *AUTO_TIME]),
}


@dataclasses.dataclass
class Case:
    name: str
    model: str
    predicted_s: float
    components: dict[str, float]
    placements: dict[str, str]
    #: collective executions per device in the compiled step (the busiest device; loops unrolled)
    executions: float = 0.0
    rounds: list[float] = dataclasses.field(default_factory=list)

    @property
    def measured_s(self) -> float:
        return float(np.median(self.rounds))


class Runner:
    """A prepared case: its compiled step, live state and one batch."""

    def __init__(self, name: str, overrides: list[str]):
        cfg = load_config(os.path.join(ROOT, "configs", "default.yaml"), [*overrides, f"name=bench-{name}"])
        run = prepare(cfg)
        if run.predicted_time is None:
            raise SystemExit(f"{name}: no predicted step time ({run.time_note})")
        self.run, self.state = run, run.state
        batches = TrainBatches(run.data, cfg.train.batch_size, cfg.seed, run.mesh, workers=0)
        self.batch = next(batches)  # one global batch, reused: the step's time does not depend on it
        batches.close()
        self.predicted = run.predicted_time
        self.placements = _placements(run)
        self.executions = collective_executions(run.compiled)

    def time(self, steps: int) -> float:
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            self.state, metrics = self.run.compiled(self.state, *self.batch)
            jax.block_until_ready((self.state, metrics))
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return float(np.median(times))


def _placements(run) -> dict[str, str]:
    from flax import nnx

    from jaxcnn.models.trace import named_convs
    from jaxcnn.nn.placement import format_placement

    model = nnx.merge(run.graphs.train, run.state["params"], run.state["rest"])
    return {
        name: format_placement(c.algorithm, dict(c.mesh.shape)) for name, c in named_convs(model).values()
    }


def collective_executions(compiled) -> float:
    """Collectives the busiest device takes part in per step, each execution of one in a loop counted
    (the calls of :func:`jaxcnn.timing.metered.metered_link`, the ledger's convention)."""
    calls = metered_link(meter_compiled(compiled)).calls.values()
    return float(np.max(sum(np.asarray(c) for c in calls), initial=0.0))


def refit(cases: list[Case]) -> tuple[dict[str, float], float]:
    """The weights of the model's compute and collective seconds, and of a fixed cost per collective
    execution, that minimise the relative squared error over ``cases`` (fitted on the measurements
    themselves: a bound on what reweighting those three terms can reach, not a prediction); and the
    MAPE they reach."""
    terms = ("compute", "collectives")
    a = np.array([[c.components[t] for t in terms] + [c.executions] for c in cases])
    measured = np.array([c.measured_s for c in cases])
    coef, *_ = np.linalg.lstsq(a / measured[:, None], np.ones(len(cases)), rcond=None)
    mape = float(np.mean(np.abs(a @ coef - measured) / measured))
    return dict(zip((*terms, "per_execution_s"), (float(x) for x in coef), strict=True)), mape


def same_program_spread(cases: list[Case]) -> list[tuple[str, str, float]]:
    """Pairs of cases that compile the same placements: (name, name, relative difference measured)."""
    pairs = []
    for i, a in enumerate(cases):
        for b in cases[i + 1 :]:
            if a.model == b.model and a.placements == b.placements:
                lo, hi = sorted((a.measured_s, b.measured_s))
                pairs.append((a.name, b.name, hi / lo - 1))
    return pairs


def ordering(cases: list[Case], threshold: float = 0.15) -> tuple[int, int]:
    """(pairs ordered correctly, pairs) among each model's cases whose measured times differ > threshold."""
    right = total = 0
    for i, a in enumerate(cases):
        for b in cases[i + 1 :]:
            if a.model != b.model:
                continue
            lo, hi = sorted((a.measured_s, b.measured_s))
            if hi / lo - 1 <= threshold:
                continue
            total += 1
            right += (a.measured_s < b.measured_s) == (a.predicted_s < b.predicted_s)
    return right, total


def report(cases: list[Case], profile_note: str, command: str) -> str:
    errors = [abs(c.predicted_s - c.measured_s) / c.measured_s for c in cases]
    right, pairs = ordering(cases)
    lines = [
        START,
        f"Measured {time.strftime('%Y-%m-%d')} on 8 virtual CPU devices (2 shared cores), jax "
        f"{jax.__version__}: `{command}`. {profile_note}",
        "",
        "| case | measured ms | predicted ms | error | compute | collectives | memory | straggle | launch "
        "| collective executions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, e in zip(cases, errors, strict=True):
        comp = c.components
        lines.append(
            f"| {c.name} | {c.measured_s * 1e3:.2f} | {c.predicted_s * 1e3:.2f} | {e:.0%} | "
            + " | ".join(
                f"{comp[k] * 1e3:.2f}" for k in ("compute", "collectives", "memory", "straggle", "launch")
            )
            + f" | {c.executions:.0f} |"
        )
    lines += [
        "",
        f"- **MAPE: {np.mean(errors):.1%}** over {len(cases)} cases (median error {np.median(errors):.1%}, "
        f"max {max(errors):.1%}).",
        f"- **Ordering: {right}/{pairs}** pairs of one model whose measured times differ by more than 15% "
        f"are ordered correctly ({right / max(pairs, 1):.0%}).",
    ]
    for model in sorted({c.model for c in cases}):
        mine = [c for c in cases if c.model == model]
        auto = next((c for c in mine if c.name.endswith("auto-time")), None)
        if auto is not None:
            best = min(mine, key=lambda c: c.measured_s)
            lines.append(
                f"- {model}: auto by time {auto.measured_s * 1e3:.2f} ms, the fastest measured "
                f"({best.name}) {best.measured_s * 1e3:.2f} ms: **{auto.measured_s / best.measured_s:.2f}x**."
            )
    weights, refit_mape = refit(cases)
    lines.append(
        "- Diagnosis: the best reweighting of the model's compute and collective seconds plus a fixed cost "
        "per collective execution, fitted on these measurements themselves, reaches a MAPE of "
        f"{refit_mape:.1%} "
        f"(compute x{weights['compute']:.2f}, collectives x{weights['collectives']:.2f}, "
        f"{weights['per_execution_s'] * 1e3:.3f} ms per execution)."
    )
    for a, b, spread in same_program_spread(cases):
        lines.append(f"- Same placements, measured {spread:.0%} apart: {a} and {b}.")
    lines += ["", "![predicted against measured step time](step_time_scatter.png)", END]
    return "\n".join(lines)


def plot(cases: list[Case]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for model, marker in zip(sorted({c.model for c in cases}), "osD^v", strict=False):
        mine = [c for c in cases if c.model == model]
        ax.scatter(
            [c.measured_s * 1e3 for c in mine],
            [c.predicted_s * 1e3 for c in mine],
            marker=marker,
            label=model,
        )
    lo = min(min(c.measured_s, c.predicted_s) for c in cases) * 1e3 * 0.8
    hi = max(max(c.measured_s, c.predicted_s) for c in cases) * 1e3 * 1.25
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.fill_between(
        [lo, hi], [lo * 0.88, hi * 0.88], [lo * 1.12, hi * 1.12], color="grey", alpha=0.15, label="±12%"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured step time (ms, median)")
    ax.set_ylabel("predicted step time (ms)")
    ax.set_title("jaxcnn step-time model, 8 CPU devices", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)


def write_doc(text: str) -> None:
    with open(DOC) as f:
        doc = f.read()
    if START in doc:
        doc = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: text, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n## Validation: predicted against measured steps\n\n" + text + "\n"
    with open(DOC, "w") as f:
        f.write(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cases", help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--recalibrate", action="store_true")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    args = p.parse_args()
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    model, note = backend_time_model()
    if model is None or args.recalibrate:
        print(f"calibrating ({note or '--recalibrate'}) ...", flush=True)
        print("profile:", save_profile(calibrate()), flush=True)
        model, note = backend_time_model()
        assert model is not None, note
    prof = model.profile
    profile_note = (
        f"Profile: {prof.key.file_name()}, calibrated {prof.created} in {prof.calibration_s:.0f} s."
    )
    runners, cases = {}, []
    for name in names:
        t0 = time.perf_counter()
        runners[name] = Runner(name, CASES[name][1])
        r = runners[name]
        cases.append(
            Case(
                name,
                CASES[name][0],
                r.predicted.seconds,
                dict(r.predicted.components),
                r.placements,
                r.executions,
            )
        )
        print(
            f"{name}: prepared in {time.perf_counter() - t0:.1f} s, "
            f"predicted {r.predicted.seconds * 1e3:.2f} ms",
            flush=True,
        )
    for rnd in range(args.rounds):
        for case in cases:
            case.rounds.append(runners[case.name].time(args.steps))
        print(
            f"round {rnd + 1}: " + ", ".join(f"{c.name} {c.rounds[-1] * 1e3:.1f}" for c in cases), flush=True
        )
    command = "python experiments/bench_step_time.py " + " ".join(sys.argv[1:])
    text = report(cases, profile_note, command.strip())
    print(text)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump([dataclasses.asdict(c) | {"measured_s": c.measured_s} for c in cases], f, indent=1)
    if not args.no_write:
        write_doc(text)
        plot(cases)


if __name__ == "__main__":
    main()
