"""Batch < devices: mesh resolution, replicated input batches, and one-line config errors.

With ``mesh.n: -1`` and ``model.algorithms: auto`` a global batch the device count does not divide still
runs: ``n`` becomes ``gcd(devices, batch, eval batch)`` and the rest of the devices go to ``c`` (input
batches are split over ``n`` and replicated over ``c``; every convolution reshards them to its own
arrangement of all the devices). Any other mesh that does not divide a batch is a ``ConfigError`` at mesh
resolution, before anything is built, compiled or written.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn import models
from jaxcnn.__main__ import main as jaxcnn_main
from jaxcnn.runner import data as data_lib
from jaxcnn.runner import metrics as metrics_lib
from jaxcnn.runner import setup, step
from jaxcnn.runner.aot import compile_train_step
from jaxcnn.runner.config import MeshConfig, from_dict, load_config
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.data import datasets
from jaxcnn.runner.train import evaluate, train
from tests.runner.test_train import momentum_steps
from tests.utils import assert_trees_relatively_close, leaves_by_path


@pytest.mark.parametrize(
    "mesh, devices, batch, eval_batch, expected",
    [
        ({}, 64, 32, None, {"n": 32, "c": 2}),  # VGG-16 at batch 32 on 64 devices
        ({}, 64, 32, 128, {"n": 32, "c": 2}),
        ({}, 64, 48, 128, {"n": 16, "c": 4}),  # not a divisor either: the largest n that divides it
        ({}, 64, 1, 1, {"n": 1, "c": 64}),
        ({}, 8, 4, 120, {"n": 4, "c": 2}),
        ({}, 8, 64, 100, {"n": 4, "c": 2}),  # the eval batch counts too
        ({}, 8, 64, 128, {"n": 8, "c": 1}),  # divisible: unchanged
        ({"c": 2}, 64, 12, 128, {"n": 4, "c": 16}),  # the rest multiplies a fixed c
        ({"k": 2}, 64, 8, 128, {"n": 8, "k": 2, "c": 4}),
    ],
)
def test_auto_puts_the_devices_the_batch_cannot_use_on_c(mesh, devices, batch, eval_batch, expected):
    sizes = MeshConfig(**mesh).resolve(devices, batch, auto=True, eval_batch_size=eval_batch)
    assert sizes == {"n": 1, "d": 1, "h": 1, "w": 1, "k": 1, "c": 1} | expected
    assert batch % sizes["n"] == 0 and np.prod(list(sizes.values())) == devices


@pytest.mark.parametrize(
    "mesh, devices, batch, auto, eval_batch, message",
    [
        (
            {},
            64,
            32,
            False,
            None,
            "train.batch_size=32 does not divide over mesh.n=64 (mesh.n=-1: all 64 devices); the input "
            "batch is split over mesh.n, so use mesh.n=32 with mesh.c=2 and a placement that uses c, or "
            "model.algorithms=auto, or a batch divisible by 64",
        ),
        (  # an explicit n is never changed, auto or not
            {"n": 8},
            8,
            4,
            True,
            128,
            "train.batch_size=4 does not divide over mesh.n=8 (8 devices); the input batch is split over "
            "mesh.n, so use mesh.n=4 with mesh.c=2 and a placement that uses c, or mesh.n=-1 with "
            "model.algorithms=auto, or a batch divisible by 8",
        ),
        (
            {"n": 4, "c": -1},
            64,
            6,
            False,
            None,
            "train.batch_size=6 does not divide over mesh.n=4 (64 devices); the input batch is split over "
            "mesh.n, so use mesh.n=2 (mesh.c=-1 takes the rest) and placements that use c,",
        ),
        (
            {"k": 2},
            64,
            48,
            False,
            None,
            "train.batch_size=48 does not divide over mesh.n=32 (mesh.n=-1: the 32 of 64 devices the other "
            "axes leave); the input batch is split over mesh.n, so use mesh.n=16 with mesh.c=2 and",
        ),
        (
            {},
            8,
            64,
            False,
            100,
            "train.eval_batch_size=100 does not divide over mesh.n=8 (mesh.n=-1: all 8 devices); eval "
            "batches are split over mesh.n like train batches: use a multiple of 8 (the last eval batch is "
            "padded and masked), or model.algorithms=auto",
        ),
    ],
)
def test_a_batch_the_mesh_cannot_split_is_a_one_line_config_error(
    mesh, devices, batch, auto, eval_batch, message
):
    with pytest.raises(ConfigError) as e:
        MeshConfig(**mesh).resolve(devices, batch, auto=auto, eval_batch_size=eval_batch)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_config_mesh_sizes_passes_the_batches_and_auto():
    def cfg(algorithms, **train):
        return from_dict({"model": {"algorithms": algorithms}, "train": {"batch_size": 4, **train}})

    assert cfg("auto", eval_batch_size=120).mesh_sizes(8) == {"n": 4, "d": 1, "h": 1, "w": 1, "k": 1, "c": 2}
    assert cfg("auto", eval_batch_size=2).mesh_sizes(8)["n"] == 2
    for algorithms in ("data", ["data"], {"*": "data@n=8"}):
        with pytest.raises(ConfigError, match=r"^train\.batch_size=4 does not divide over mesh\.n=8"):
            cfg(algorithms).mesh_sizes(8)
    assert cfg("data").mesh_sizes(4)["n"] == 4  # the batch divides over 4 devices
    assert cfg("data").mesh.resolve(8)["n"] == 8  # resolve without a batch checks only the devices


def test_every_shipped_train_config_fits_its_batches():
    from tests.runner.test_config import CONFIGS, DEVICES

    for path in CONFIGS:
        cfg = load_config(path)
        sizes = cfg.mesh_sizes(DEVICES.get(os.path.basename(path), 8))
        assert cfg.train.batch_size % sizes["n"] == 0 and cfg.train.eval_batch_size % sizes["n"] == 0


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    return datasets.digits(0.2, seed=0)


def test_input_batches_are_split_over_n_and_replicated_over_c(digits):
    mesh = jaxcnn.make_mesh(n=4, c=2)
    batches = data_lib.TrainBatches(digits, 4, seed=0, mesh=mesh)
    assert batches.rows == slice(0, 4)  # one process: every row, once
    images, labels = batches(3)
    assert images.sharding.spec == P("n") and images.sharding.mesh.shape == mesh.shape
    # What the global batch holds is tests/runner/test_pipeline.py's (bitwise, against a reference);
    # here, how it is laid out: each device holds its n-row, whatever its c coordinate.
    expected = np.asarray(images)
    for shard in images.addressable_shards:
        row = shard.index[0].start
        assert shard.data.shape[0] == 1
        np.testing.assert_array_equal(np.asarray(shard.data)[0], expected[row])
    # Eval: the whole test split once, padded and masked, with the same replicated layout.
    seen = []
    for images, labels, mask in data_lib.eval_batches(digits, 120, mesh):
        assert images.shape[0] == 120 and images.sharding.spec == P("n")
        seen.append(np.asarray(labels)[np.asarray(mask).astype(bool)])
    np.testing.assert_array_equal(np.concatenate(seen), digits.y_test)
    with pytest.raises(ConfigError, match=r"not divisible by mesh axis n=4; train\.batch_size and"):
        data_lib.TrainBatches(digits, 6, seed=0, mesh=mesh)
    with pytest.raises(ConfigError, match=r"train\.batch_size=2000 exceeds the 1437 training images"):
        data_lib.TrainBatches(digits, 2000, seed=0, mesh=mesh)


@dataclasses.dataclass
class _ProcessView:
    """What ``local_rows`` reads of a sharding, as one process of a multi-process mesh would see it."""

    mesh: object
    rows: list[tuple[int, int]]  # (start, stop) of each addressable device's shard (replicas repeat)

    def addressable_devices_indices_map(self, shape):
        return {i: (slice(a, b),) for i, (a, b) in enumerate(self.rows)}


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([(0, 2), (0, 2), (2, 4), (2, 4)], slice(0, 4)),  # n=16, c=2: 4 local devices hold 2 rows twice
        ([(4, 6), (4, 6), (4, 6), (4, 6)], slice(4, 6)),  # n=8, c=4: every local device is a replica
        ([(0, 32)] * 4, slice(0, 32)),  # n=1: each process loads the whole (replicated) batch
    ],
)
def test_local_rows_loads_each_replicated_row_once(rows, expected):
    n = 32 // (rows[0][1] - rows[0][0])
    view = _ProcessView(type("M", (), {"shape": {"n": n}})(), rows)
    assert data_lib.local_rows(view, 32) == expected


def test_local_rows_of_a_batch_the_mesh_cannot_split():
    batches = data_lib.TrainBatches(datasets.digits(0.2, seed=0), 32, seed=0, mesh=jaxcnn.make_mesh(n=4, h=2))
    assert data_lib.local_rows(batches.sharding, 32) == slice(0, 32)  # one process holds every row
    with pytest.raises(ValueError, match="not divisible by mesh axis n=4"):
        data_lib.local_rows(batches.sharding, 30)


#: Relative-norm tolerance, per tensor (losses as one vector), for batch 4 on 8 devices (auto: n=4, c=2)
#: against one device after 3 momentum steps: about 10x the spread measured with ``python
#: experiments/reduction_spread.py small-batch`` (seeds 0-9, both directions): losses ≤ 1.4e-7,
#: parameters ≤ 2.1e-6 (seed 3, conv3's BatchNorm bias), eval loss ≤ 7.4e-8; the eval accuracy was
#: equal for every seed. A lost or doubled gradient reduction errs by order 1.
SMALL_BATCH_RTOL = 3e-5


def small_batch_and_single(output_dir, seed: int) -> tuple[dict, dict]:
    """small_cnn, batch 4 on 8 devices with ``auto`` through :func:`train`, and the same model trained
    on one device by hand: ``({losses, params, eval_loss, eval_accuracy, mesh}, {the same})``. The
    planned head may pad its classes (:class:`jaxcnn.models.common.Head`): those must stay exactly
    zero, and are cut off."""
    cfg = from_dict(
        {
            "name": f"small{seed}",
            "seed": seed,
            "output_dir": str(output_dir),
            "model": {"algorithms": "auto", "options": {"width": 0.25}},
            "train": {"steps": 3, "batch_size": 4, "log_every": 1, "eval_every": 0, "eval_batch_size": 120},
            "optimizer": {"name": "momentum", "learning_rate": 0.1},
            "checkpoint": {"enabled": False},
        }
    )
    run = train(cfg)
    digits = datasets.digits(0.2, seed=seed)
    mesh1 = jaxcnn.make_mesh()
    model = models.build(
        "small_cnn",
        num_classes=10,
        in_channels=1,
        mesh=mesh1,
        algorithms="data",
        rngs=nnx.Rngs(seed),
        width=0.25,
    )
    expected, graphs, st = momentum_steps(model, mesh1, digits, 4, seed)
    params, trained = leaves_by_path(st["params"]), leaves_by_path(run.state["params"])
    assert trained.keys() == params.keys()
    planned = {k: a[tuple(slice(0, n) for n in params[k].shape)] for k, a in trained.items()}
    padding = {k: a[..., params[k].shape[-1] :] for k, a in trained.items()}
    reference = evaluate(step.jit_eval_step(graphs, st, mesh1), st, digits, 120, mesh1)
    got = {
        "losses": np.asarray([r["loss"] for r in run.records if "loss" in r]),
        "params": planned,
        "eval_loss": np.asarray(run.summary["final_eval_loss"]),
        "eval_accuracy": run.summary["final_eval_accuracy"],
        "mesh": run.summary["mesh"],
        "padding": padding,
    }
    want = {
        "losses": expected,
        "params": params,
        "eval_loss": np.asarray(reference["eval_loss"]),
        "eval_accuracy": reference["eval_accuracy"],
    }
    return got, want


@pytest.mark.slow
def test_auto_trains_batch_4_on_8_devices_like_one_device(tmp_path, monkeypatch):
    """small_cnn, batch 4 on 8 devices, ``auto``: the run mesh is n=4, c=2 and three momentum steps
    (losses, parameters) and the test evaluation match the same model trained on one device, within
    :data:`SMALL_BATCH_RTOL` in relative norm per tensor (reduction orders differ)."""
    monkeypatch.setattr(metrics_lib, "plot", lambda records, run_dir: [])  # no matplotlib: seconds saved
    got, want = small_batch_and_single(tmp_path, seed=0)
    assert got["mesh"] == {"n": 4, "d": 1, "h": 1, "w": 1, "k": 1, "c": 2}
    assert not any(p.any() for p in got["padding"].values())  # padded classes: exactly zero
    compared = ("losses", "params", "eval_loss")
    assert_trees_relatively_close(
        {k: got[k] for k in compared}, {k: want[k] for k in compared}, SMALL_BATCH_RTOL, "8 devices vs 1"
    )
    # Accuracy counts argmax hits of the 360 test images: rounding may flip a near-tie, not more.
    assert abs(got["eval_accuracy"] - want["eval_accuracy"]) <= 1 / 360 + 1e-9


def test_non_auto_small_batch_fails_before_anything_is_built(tmp_path, capsys):
    cfg = from_dict(
        {
            "name": "bad",
            "output_dir": str(tmp_path),
            "model": {"algorithms": "data"},
            "train": {"batch_size": 4},
        }
    )
    message = r"^train\.batch_size=4 does not divide over mesh\.n=8 \(mesh\.n=-1: all 8 devices\)"
    with pytest.raises(ConfigError, match=message):
        setup.build_mesh(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match=message):
        compile_train_step(cfg)
    # The CLI prints it as one line and exits 2, for a run and for --compile-only.
    for extra in ([], ["--compile-only"]):
        argv = ["train", "configs/base.yaml", *extra, "train.batch_size=4", f"output_dir={tmp_path}"]
        assert jaxcnn_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxcnn train: config error: train.batch_size=4 does not divide over mesh.n=8")
        assert "mesh.n=4 with mesh.c=2" in err and err.count("\n") == 1
    argv = ["train", "configs/base.yaml", "train.eval_batch_size=100", f"output_dir={tmp_path}"]
    assert jaxcnn_main(argv) == 2
    assert "config error: train.eval_batch_size=100 does not divide over mesh.n=8" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
