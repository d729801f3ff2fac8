"""The spread that reduction order alone puts between runs the tests compare, over many seeds.

The tests that compare training across process counts, meshes or placements after more than one step
(``tests/runner/test_train.py``, ``tests/runner/test_small_batch.py``, ``tests/multiprocess/test_launch.py``)
compare each tensor as a whole (``‖a − b‖ / ‖b‖``, :func:`tests.utils.relative_errors`) against a
tolerance set from the spread this script measures: the same comparison the test makes, for seeds
``0..N-1``, in both directions (``‖a − b‖ / ‖b‖`` and ``‖b − a‖ / ‖a‖``). It prints, per part, the
largest error over seeds and leaves for the losses and for the state, and the seed and leaf where it
falls.

Usage (from the repository root)::

    .venv/bin/python experiments/reduction_spread.py train --seeds 10
    .venv/bin/python experiments/reduction_spread.py small-batch --seeds 10
    .venv/bin/python experiments/reduction_spread.py launch --seeds 5      # ~2 min a seed on 2 cores
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The tests' device setup (8 virtual CPU devices, fast compilation), before JAX starts.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def _both_ways(a, b) -> dict[str, float]:
    from tests.utils import relative_errors

    forward, backward = relative_errors(a, b), relative_errors(b, a)
    return {k: max(forward[k], backward[k]) for k in forward}


def _train(seed: int) -> dict[str, float]:
    from tests.runner.test_train import distributed_and_single

    (l8, p8, r8), (l1, p1, r1) = distributed_and_single(seed)
    return _both_ways({"losses": l8, "state": (p8, r8)}, {"losses": l1, "state": (p1, r1)})


def _small_batch(seed: int) -> dict[str, float]:
    from jaxcnn.runner import metrics
    from tests.runner.test_small_batch import small_batch_and_single

    metrics.plot = lambda records, run_dir: []
    with tempfile.TemporaryDirectory() as out:
        got, want = small_batch_and_single(out, seed)
    keys = ("losses", "params", "eval_loss")
    errors = _both_ways({k: got[k] for k in keys}, {k: want[k] for k in keys})
    errors["eval_accuracy (absolute)"] = abs(got["eval_accuracy"] - want["eval_accuracy"])
    return errors


def _launch(seed: int) -> dict[str, float]:
    """The comparisons of ``test_two_processes_equal_one_and_resume_across_process_counts``: step 1 of
    a 2 x 4 launch against a 1 x 8 run, and the last step (the test module's ``STEPS``) after resuming
    each one's checkpoint of the step before on the other process count."""
    import pathlib

    from tests.multiprocess import test_launch as t

    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        seeded = f"seed={seed}"
        last = t.STEPS
        t._assert_ok(t._train(out, "ref", seeded, f"train.steps={last}"))
        t._assert_ok(t._launch(out, "mp", seeded, f"train.steps={last}"))
        ref, mp = out / "ref", out / "mp"
        (out / "a").mkdir()
        (out / "b").mkdir()
        pairs = {
            "step 1 (2 x 4 vs 1 x 8)": (mp, ref, 1),
            f"step {last} (1-process checkpoint on 2 x 4)": (
                t._resumed_for_one_step(ref, last - 1, out / "a", t._launch, seeded),
                ref,
                last,
            ),
            f"step {last} (2-process checkpoint on 1 x 8)": (
                t._resumed_for_one_step(mp, last - 1, out / "b", t._train, seeded),
                mp,
                last,
            ),
        }
        for label, (got, want, step) in pairs.items():
            for key, value in _both_ways(
                {"loss": [t._losses(got)[step]], "state": t._leaves(got, step)},
                {"loss": [t._losses(want)[step]], "state": t._leaves(want, step)},
            ).items():
                errors[f"{label}: {key}"] = value
    return errors


PARTS = {"train": _train, "small-batch": _small_batch, "launch": _launch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    worst: dict[str, tuple[float, int, str]] = {}
    for seed in range(args.seeds):
        errors = PARTS[args.part](seed)
        this_seed: dict[str, float] = {}
        for leaf, error in errors.items():
            group = re.sub(r"\]\[.*", "]", leaf)  # "['state'][0]['conv1']..." -> "['state']"
            this_seed[group] = max(this_seed.get(group, 0.0), error)
            if error >= worst.get(group, (-1.0,))[0]:
                worst[group] = (error, seed, leaf)
        print(f"seed {seed}: " + ", ".join(f"{g} {e:.2e}" for g, e in sorted(this_seed.items())), flush=True)
    print(f"\n{args.part}: largest error over seeds 0-{args.seeds - 1}, both directions")
    for group, (error, seed, leaf) in sorted(worst.items()):
        print(f"  {group:40s} {error:.2e}  (seed {seed}, {leaf})")


if __name__ == "__main__":
    main()
