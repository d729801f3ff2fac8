"""The one short training run that tests/runner/test_inference.py and test_tensorboard.py read.

``configs/default.yaml`` (``small_cnn`` at width 0.25 with the config's mixed placements on 8 devices),
6 steps of batch 32: a train record every step, evals at step 4 and at the end, a profiler trace of steps
2..3, TensorBoard event files (on by default) and the checkpoint of step 6. Trained once per test run
(:func:`tests.utils.once_per_test_run`); its readers change nothing in it. Both modules are in the
``trained-run`` xdist group, so the worker that trains it is the one that reads it.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxcnn.runner.config import load_config
from jaxcnn.runner.train import train
from tests.utils import once_per_test_run

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The run's model width, which a reader of the run passes too (``jaxcnn eval configs/default.yaml ...``).
WIDTH = "model.options={width: 0.25}"
GROUP = "trained-run"


def _train(out: pathlib.Path) -> None:
    overrides = [
        f"output_dir={out}",
        WIDTH,
        "train.steps=6",
        "train.batch_size=32",
        "train.log_every=1",
        "train.eval_every=4",
        "train.profile_steps=[2, 3]",
        "checkpoint.every=0",
    ]
    train(load_config(str(ROOT / "configs" / "default.yaml"), overrides))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """``(run directory, summary.json)`` of the run above."""
    run_dir = once_per_test_run(tmp_path_factory, "trained-run", _train) / "default"
    with open(run_dir / "summary.json") as f:
        return run_dir, json.load(f)
