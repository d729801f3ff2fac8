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

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxcnn
from jaxcnn import models
from jaxcnn.__main__ import main as jaxcnn_main
from jaxcnn.runner import data as data_lib
from jaxcnn.runner import datasets, optim, setup, state, step
from jaxcnn.runner import metrics as metrics_lib
from jaxcnn.runner.aot import compile_train_step
from jaxcnn.runner.config import MeshConfig, OptimizerConfig, from_dict, load_config
from jaxcnn.runner.train import evaluate, train
from jaxcnn.runner.typed import ConfigError


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
    idx = batches.indices(3)
    assert images.sharding.spec == P("n") and images.sharding.mesh.shape == mesh.shape
    expected = data_lib.normalize(digits.x_train[idx], digits.mean, digits.std)
    np.testing.assert_array_equal(np.asarray(images), expected)
    np.testing.assert_array_equal(np.asarray(labels), digits.y_train[idx])
    for shard in images.addressable_shards:  # each device holds its n-row, whatever its c coordinate
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


def test_auto_trains_batch_4_on_8_devices_like_one_device(tmp_path, digits, monkeypatch):
    """small_cnn, batch 4 on 8 devices, ``auto``: the run mesh is n=4, c=2 and three momentum steps
    (losses, parameters, BatchNorm statistics) and the test evaluation match the same model trained on
    one device. Tolerance: fp32, relative 1e-4 / absolute 1e-5 (reduction orders differ)."""
    cfg = from_dict(
        {
            "name": "small",
            "output_dir": str(tmp_path),
            "model": {"algorithms": "auto", "options": {"width": 0.25}},
            "train": {"steps": 3, "batch_size": 4, "log_every": 1, "eval_every": 0, "eval_batch_size": 120},
            "optimizer": {"name": "momentum", "learning_rate": 0.1},
            "checkpoint": {"enabled": False},
        }
    )
    monkeypatch.setattr(metrics_lib, "plot", lambda records, run_dir: [])  # no matplotlib: seconds saved
    run = train(cfg)
    assert run.summary["mesh"] == {"n": 4, "d": 1, "h": 1, "w": 1, "k": 1, "c": 2}
    losses = [r["loss"] for r in run.records if "loss" in r]

    mesh1 = jaxcnn.make_mesh()
    tx = optim.optimizer(OptimizerConfig(name="momentum", learning_rate=0.1), 3)
    model = models.build(
        "small_cnn",
        num_classes=10,
        in_channels=1,
        mesh=mesh1,
        algorithms="data",
        rngs=nnx.Rngs(0),
        width=0.25,
    )
    graphs, st = state.init_state(model, tx, mesh1)
    train_step = step.jit_train_step(graphs, tx, st, mesh1)
    batches = data_lib.TrainBatches(digits, 4, seed=0, mesh=mesh1)
    expected = []
    for i in range(3):
        st, metrics = train_step(st, *batches(i))
        expected.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(jax.device_get(run.state["params"])),
        jax.tree.leaves(jax.device_get(st["params"])),
        strict=True,
    ):
        # The planned head may pad its classes (jaxcnn.models.common.Head): those stay exactly zero.
        assert not np.asarray(a)[..., b.shape[-1] :].any()
        a = np.asarray(a)[tuple(slice(0, n) for n in b.shape)]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    reference = evaluate(step.jit_eval_step(graphs, st, mesh1), st, digits, 120, mesh1)
    assert run.summary["final_eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-4, abs=1e-5)
    assert run.summary["final_eval_accuracy"] == pytest.approx(reference["eval_accuracy"], abs=1e-6)


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
