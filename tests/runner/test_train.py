"""The training loop: distributed = single device, bit-identical resume (after a real SIGTERM), NaN stop,
run-directory outputs.

Models are ``small_cnn`` at width 0.25 (8 channels: each compile takes seconds). The test run's
persistent compilation cache (tests/conftest.py) lets repeated runs of the same config reuse
executables.
"""

from __future__ import annotations

import json
import os
import signal

import chex
import jax
import numpy as np
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import models
from jaxcnn.models.trace import named_convs
from jaxcnn.runner import data as data_lib
from jaxcnn.runner import metrics, optim, state, step
from jaxcnn.runner.checkpoint import Checkpointer
from jaxcnn.runner.config import OptimizerConfig, from_dict, load_config
from jaxcnn.runner.data import datasets
from jaxcnn.runner.train import Interrupted, NonFiniteLossError, train
from tests.utils import assert_trees_relatively_close, leaves_by_path

# The default config's per-layer placements (spatial / 2d / 3d / data on the 8 devices).
MIXED = {
    "conv1": "spatial@n=2,h=2,w=2",
    "conv2": "2d@n=2,h=2,k=2",
    "conv3": "3d@n=2,k=2,c=2",
    "conv4": "data@n=8",
}


def _config(tmp_path, name: str, **overrides):
    base = {
        "name": name,
        "output_dir": str(tmp_path),
        "model": {"algorithms": MIXED, "options": {"width": 0.25}},
        "mesh": {"n": 8},
        "train": {"steps": 6, "batch_size": 32, "log_every": 1, "eval_every": 0, "eval_batch_size": 120},
        "optimizer": {"name": "adam", "learning_rate": 0.01, "schedule": "cosine"},
        "checkpoint": {"every": 3},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            base.setdefault(section, {})[field] = value
        else:
            base[section] = value
    return from_dict(base)


def _read(path, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in _read(path).splitlines() if line.strip()]


#: Relative-norm tolerance for the 8-device model against the single-device one after 3 momentum
#: steps, per tensor (losses as one vector): about 10x the spread measured with ``python
#: experiments/reduction_spread.py train`` (seeds 0-9, both directions): losses ≤ 1.7e-7, parameters
#: and BatchNorm statistics ≤ 2.9e-6 (seed 9, conv2's BatchNorm bias). A lost or doubled gradient
#: reduction errs by order 1.
DISTRIBUTED_RTOL = 3e-5


def distributed_and_single(seed: int) -> tuple[tuple, tuple]:
    """3 SGD-momentum steps of the mixed 8-device model and of the same model (the same initial
    parameters) on 1 device: ``((losses, params, rest) on 8 devices, (the same) on 1 device)``."""
    data = datasets.digits(0.2, seed=seed)
    mesh8, mesh1 = jaxcnn.make_mesh(n=8), jaxcnn.make_mesh()

    def build(mesh, algorithms):
        return models.build(
            "small_cnn",
            num_classes=10,
            in_channels=1,
            mesh=mesh,
            algorithms=algorithms,
            rngs=nnx.Rngs(seed),
            width=0.25,
        )

    model8 = build(mesh8, MIXED)
    # The same parameters on one device (built abstractly: no second initialisation to compile).
    values = jax.device_put(jax.device_get(nnx.state(model8)), jax.devices()[0])
    model1 = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: build(mesh1, "data"))), values)
    results = []
    for mesh, model in ((mesh8, model8), (mesh1, model1)):
        losses, _, st = momentum_steps(model, mesh, data, 32, seed)
        results.append((losses, leaves_by_path(st["params"]), leaves_by_path(st["rest"])))
    return results[0], results[1]


def momentum_steps(model, mesh, data, batch_size: int, seed: int, steps: int = 3):
    """``steps`` SGD-momentum steps (lr 0.1) of ``model`` on ``mesh`` over the batches of ``seed``:
    ``(losses, graphs, state)``."""
    tx = optim.optimizer(OptimizerConfig(name="momentum", learning_rate=0.1), steps)
    graphs, st = state.init_state(model, tx, mesh)
    train_step = step.jit_train_step(graphs, tx, st, mesh)
    batches = data_lib.TrainBatches(data, batch_size, seed=seed, mesh=mesh)
    losses = []
    for i in range(steps):
        st, metrics = train_step(st, *batches(i))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses), graphs, st


@pytest.mark.slow
def test_distributed_step_matches_single_device():
    """3 SGD-momentum steps of the mixed 8-device model vs the same model on 1 device: losses,
    parameters and BatchNorm statistics within :data:`DISTRIBUTED_RTOL` in relative norm per tensor
    (reduction orders differ between the sharded and the single-device programs)."""
    eight, one = distributed_and_single(seed=0)
    assert_trees_relatively_close(eight, one, DISTRIBUTED_RTOL, "8 devices vs 1")
    assert eight[0][2] < eight[0][0]  # it learns


@pytest.mark.slow
def test_resume_is_bit_identical_and_run_dir_is_complete(tmp_path):
    straight = train(_config(tmp_path, "straight"))

    def preempt(done, _):  # a real SIGTERM while step 3 is done: the run stops after step 4, saved
        if done == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        train(_config(tmp_path, "resumed"), callback=preempt)
    assert (stopped.value.step, stopped.value.exit_code) == (4, 143)
    assert str(stopped.value) == "interrupted at step 4: checkpoint 4 saved; continue with resume=true"
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handlers are gone
    assert Checkpointer(str(tmp_path / "resumed" / "checkpoints")).all_steps() == [3, 4]
    resumed = train(_config(tmp_path, "resumed", resume=True))

    # params, BatchNorm stats, optimizer state, step: bitwise (and the same dtypes and shapes)
    chex.assert_trees_all_equal(leaves_by_path(straight.state), leaves_by_path(resumed.state), strict=True)
    losses = [[r["loss"] for r in run.records if "loss" in r] for run in (straight, resumed)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]  # every step's loss, exactly

    run_dir = tmp_path / "straight"
    cfg = _config(tmp_path, "straight")
    assert load_config(str(run_dir / "config.yaml")) == cfg
    records = _jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r["step_time_s"] > 0 and r["images_per_s"] > 0 for r in records if "loss" in r)
    final_eval = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in final_eval] == [6] and 0.0 <= final_eval[0]["eval_accuracy"] <= 1.0
    assert straight.summary["final_eval_accuracy"] == final_eval[0]["eval_accuracy"]
    # The eval loop's accuracy equals the eval-mode model applied to the whole test split at once.
    test = datasets.digits(0.2, seed=0)
    mesh = jaxcnn.make_mesh(n=8)
    images = jax.device_put(
        data_lib.normalize(test.x_test, test.mean, test.std), data_lib.batch_sharding(mesh)
    )
    logits = state.merge(straight.graphs.eval, straight.state)(images)
    direct = float(np.mean(np.argmax(np.asarray(logits), -1) == test.y_test))
    assert final_eval[0]["eval_accuracy"] == pytest.approx(direct, abs=1e-6)
    assert json.loads(_read(run_dir / "summary.json"))["final_step"] == 6
    for plot in ("loss.png", "accuracy.png"):
        assert _read(run_dir / plot, "rb")[:8] == b"\x89PNG\r\n\x1a\n"
    title = metrics.run_title(str(run_dir))
    assert title == "straight: small_cnn on mesh n=8 d=1 h=1 w=1 k=1 c=1 (8 devices)"
    assert Checkpointer(str(run_dir / "checkpoints")).all_steps() == [3, 6]


def test_plots_name_the_run_and_the_metric_and_label_their_axes(tmp_path, monkeypatch):
    import matplotlib.figure

    seen = {}

    def savefig(fig, path, **_):
        ax = fig.axes[0]
        seen[os.path.basename(path)] = (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    (tmp_path / "config.yaml").write_text("name: demo\nmodel: {name: resnet18}\nmesh: {n: -1}\n")
    (tmp_path / "summary.json").write_text(json.dumps({"mesh": {"n": 4, "k": 2}, "devices": 8}))
    records = [{"step": 1, "loss": 2.0, "accuracy": 0.1}, {"step": 1, "eval_loss": 1.5, "eval_accuracy": 0.4}]
    metrics.plot(records, str(tmp_path))
    run = "demo: resnet18 on mesh n=4 k=2 (8 devices)"
    assert seen == {
        "loss.png": (f"{run}\ntrain and test loss", "optimizer step", metrics.PLOTS[0][3]),
        "accuracy.png": (f"{run}\ntrain and test accuracy", "optimizer step", metrics.PLOTS[1][3]),
    }
    assert "nats" in metrics.PLOTS[0][3] and "fraction" in metrics.PLOTS[1][3]  # units
    metrics.plot(records, str(tmp_path / "missing"), title="given")  # title given: no files read
    assert seen["loss.png"][0] == "given\ntrain and test loss"


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # SGD with lr 1e30: step 1's loss is finite, the parameters then overflow and the loss turns NaN/inf.
    cfg = _config(
        tmp_path,
        "nan",
        optimizer={"name": "sgd", "learning_rate": 1e30, "schedule": "constant"},
        checkpoint={"every": 1},
        train__steps=20,
    )
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    message = str(e.value)
    bad = int(message.split("NaN/inf at step ")[1].split(";")[0])
    ckpt = Checkpointer(os.path.join(cfg.run_dir, "checkpoints"))
    assert 1 < bad < 20 and ckpt.latest_step() == bad - 1
    assert f"Last good checkpoint: step {bad - 1} in {ckpt.directory}" in message
    records = _jsonl(os.path.join(cfg.run_dir, "metrics.jsonl"))
    assert all(np.isfinite(r["loss"]) for r in records) and records[-1]["step"] == bad - 1


@pytest.mark.slow
@pytest.mark.sweep  # ~65 s; tests/runner/test_whole_step.py compiles its planned step in make test
def test_mobilenet_v2_config_trains_with_its_planned_placements(tmp_path):
    # configs/mobilenet_v2.yaml as shipped (auto plan, 53 convolutions, 17 depthwise), a few steps.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    overrides = [f"output_dir={tmp_path}", "train.steps=3", "train.log_every=1", "train.eval_every=0"]
    cfg = load_config(
        os.path.join(root, "configs", "mobilenet_v2.yaml"), [*overrides, "checkpoint.enabled=false"]
    )
    assert (cfg.model.name, cfg.model.algorithms) == ("mobilenet_v2", "auto")
    run = train(cfg)
    losses = [r["loss"] for r in run.records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    # The planned step as run meters exactly the bytes the plan predicts (a positive count: it metered).
    metered = run.summary["comm_bytes_per_step_max_device"]
    assert metered is not None and metered > 0
    assert run.summary["predicted_comm_bytes_per_step_max_device"] == metered
    model = state.merge(run.graphs.eval, run.state)
    depthwise = [c for name, c in named_convs(model).values() if name.endswith("depthwise")]
    assert len(depthwise) == 17 and all(c.feature_group_count == c.in_features for c in depthwise)
