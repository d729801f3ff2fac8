"""Using a trained model: ``jaxcnn eval``, ``jaxcnn predict`` and :func:`jaxcnn.runner.inference.load`.

One tiny run of ``configs/default.yaml`` (``small_cnn`` at width 0.25 with the config's mixed
placements on 8 devices, 6 steps; tests/runner/conftest.py) is trained once per test run, and
tests/runner/test_tensorboard.py reads it too; every test here reads its checkpoint.
Figures read on the run's own mesh and placements are the run's exactly (the same compiled eval step on
the same state, the same eval batches: the 360 test images in 3 batches of 128, the last one padded). On
another mesh, placement or eval batch size the accuracy is compared exactly too: it is a count of argmax
hits, which differ only where two logits are within rounding of a tie (none is, for this run); the loss
is compared to 1e-5 relative (other reduction orders).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn.__main__ import main
from jaxcnn.runner.checkpoint import Checkpointer
from jaxcnn.runner.config import load_config
from jaxcnn.runner.data import batch_sharding, datasets, normalize
from jaxcnn.runner.data.inputs import InputError, as_batch
from jaxcnn.runner.inference import load
from jaxcnn.runner.prepare import assemble
from jaxcnn.runner.run_directory import write_config
from jaxcnn.runner.state import init_state
from jaxcnn.runner.step import jit_eval_step
from jaxcnn.runner.train import evaluate
from tests.runner.conftest import GROUP, ROOT, WIDTH

# The tests share one run (made once per test run): on one xdist worker, none waits for another.
pytestmark = pytest.mark.xdist_group(GROUP)


def _figures(out: str) -> dict[str, float]:
    """``{"accuracy": ..., "loss": ..., "Dice": ...}`` from ``jaxcnn eval``'s ``test <name> <value>``."""
    lines = [line.split() for line in out.splitlines() if line.startswith("test ")]
    return {words[1]: float(words[2]) for words in lines}


def _one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix), err
    return err


@pytest.fixture(scope="session")
def run(trained_run):
    """``(run directory, summary.json)`` of the shared 6-step run (tests/runner/conftest.py)."""
    run_dir, summary = trained_run
    return str(run_dir), summary


@pytest.fixture(scope="module")
def test_split():
    return datasets.digits(0.2, seed=0)


def test_eval_prints_the_runs_final_figures(run, capsys):
    run_dir, summary = run
    output_dir = os.path.dirname(run_dir)
    assert main(["eval", "configs/default.yaml", f"output_dir={output_dir}", WIDTH]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{run_dir} step 6 on mesh n=8 d=1 h=1 w=1 k=1 c=1 (8 devices)")
    figures = _figures(out)
    assert figures == {"accuracy": summary["final_eval_accuracy"], "loss": summary["final_eval_loss"]}


@pytest.mark.slow  # a few seconds; make test runs it, make test-fast does not
def test_eval_on_two_devices_with_other_placements(run):
    """A fresh process with 2 CPU devices reads the 8-device run on mesh n=2 with other algorithms."""
    run_dir, summary = run
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    algorithms = "model.algorithms={conv1: spatial@h=2, conv2: filter@k=2, conv3: channel@c=2, conv4: data}"
    out = subprocess.run(
        [sys.executable, "-m", "jaxcnn", "eval", "--cpu-devices", "2", run_dir, "mesh.n=2", algorithms],
        capture_output=True, text=True, env=env, check=False, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "on mesh n=2 d=1 h=1 w=1 k=1 c=1 (2 devices)" in out.stdout
    figures = _figures(out.stdout)
    assert figures["accuracy"] == summary["final_eval_accuracy"]
    assert figures["loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-5)


def test_load_gives_the_eval_mode_model_and_its_predictions(run, test_split):
    run_dir, summary = run
    loaded = load(run_dir)
    assert loaded.step == 6 and set(loaded.state) == {"params", "rest"}  # no optimizer state read
    assert loaded.evaluate()["eval_accuracy"] == summary["final_eval_accuracy"]
    images = jax.device_put(
        normalize(test_split.x_test, test_split.mean, test_split.std), batch_sharding(loaded.mesh)
    )
    logits = nnx.jit(lambda model, x: model(x))(loaded.model, images)  # eager: 5x slower here
    argmax = np.argmax(np.asarray(logits), -1)
    out = loaded.predict(test_split.x_test)
    np.testing.assert_array_equal(out.predictions, argmax)
    assert np.mean(out.predictions == test_split.y_test) == summary["final_eval_accuracy"]
    np.testing.assert_allclose(out.probabilities.sum(-1), 1.0, rtol=1e-6)


def test_predict_writes_an_npz_for_an_npz_and_for_an_image_folder(run, test_split, tmp_path, capsys):
    from PIL import Image

    run_dir, summary = run
    np.savez(tmp_path / "digits.npz", x=test_split.x_test[..., 0], y=test_split.y_test)  # (N, 8, 8)
    out_npz = tmp_path / "out" / "predictions.npz"
    assert main(["predict", run_dir, "--input", str(tmp_path / "digits.npz"), "--output", str(out_npz)]) == 0
    assert f"360 inputs from {tmp_path / 'digits.npz'} -> {out_npz}" in capsys.readouterr().out
    with np.load(out_npz) as f:
        predictions, probabilities = f["predictions"], f["probabilities"]
        assert list(f["class_names"]) == [str(i) for i in range(10)]
    assert predictions.shape == (360,) and probabilities.shape == (360, 10)
    assert np.mean(predictions == test_split.y_test) == summary["final_eval_accuracy"]
    np.testing.assert_array_equal(predictions, np.argmax(probabilities, -1))
    # The first 5 test digits as PNGs (pixel values 0..16, as the digits source holds them), one of
    # them in a class subfolder: the same predictions, named by their paths in sorted order.
    folder = tmp_path / "pngs"
    (folder / "sub").mkdir(parents=True)
    names = ["a.png", "b.png", "c.png", "d.png", "sub/e.png"]
    for name, image in zip(names, test_split.x_test[:5, ..., 0], strict=True):
        Image.fromarray(image).save(folder / name)
    out_png = tmp_path / "png.npz"
    assert main(["predict", run_dir, "--input", str(folder), "--output", str(out_png)]) == 0
    with np.load(out_png) as f:
        assert list(f["files"]) == names
        np.testing.assert_array_equal(f["predictions"], predictions[:5])
        np.testing.assert_allclose(f["probabilities"], probabilities[:5], rtol=1e-6)


def test_mistakes_are_one_line_exit_2(run, tmp_path, capsys):
    run_dir, _ = run
    assert main(["eval", "configs/default.yaml", f"output_dir={tmp_path}"]) == 2
    err = _one_line_error(capsys, "jaxcnn eval: config error: ")
    assert f"{tmp_path}/default (output_dir={tmp_path}, name=default) does not exist" in err
    assert "train the run first" in err
    assert main(["eval", run_dir, "model.options.width=0.5", "seed=3"]) == 2
    err = _one_line_error(capsys, "jaxcnn eval: config error: this config differs from the run's")
    assert "seed=3 (saved: 0), model.options.width=0.5 (saved: 0.25)" in err
    assert main(["eval", run_dir, "--step", "3"]) == 2
    assert "no checkpoint step 3 in" in _one_line_error(capsys, "jaxcnn eval: checkpoint error: ")
    np.save(tmp_path / "big.npy", np.zeros((3, 28, 28), np.uint8))
    args = ["predict", run_dir, "--input", str(tmp_path / "big.npy"), "--output", str(tmp_path / "o.npz")]
    assert main(args) == 2
    err = _one_line_error(capsys, "jaxcnn predict: input error: ")
    assert "has shape (3, 28, 28); expected (N, 8, 8, 1) or (N, 8, 8) images" in err
    assert not (tmp_path / "o.npz").exists()


def test_as_batch_takes_batches_single_images_and_missing_grey_channels():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for x in (image, image[..., None], image[None], image[None, ..., None]):
        np.testing.assert_array_equal(as_batch(x, (8, 8, 1), "x"), image[None, ..., None])
    with pytest.raises(InputError, match=r"x has shape \(2, 8, 8, 3\); expected \(N, 8, 8, 1\)"):
        as_batch(np.zeros((2, 8, 8, 3)), (8, 8, 1), "x")
    with pytest.raises(InputError, match=r"expected \(N, 4, 4, 4, 2\) volumes"):
        as_batch(np.zeros((4, 4, 4)), (4, 4, 4, 2), "x")
    with pytest.raises(InputError, match="NaN/inf"):
        as_batch(np.full((1, 8, 8), np.nan), (8, 8, 1), "x")


@pytest.mark.slow  # a few seconds; make test runs it, make test-fast does not
def test_eval_of_a_segmentation_run_prints_its_dice(tmp_path, capsys):
    """A U-Net run's checkpoint (its initial state, saved as the training loop saves one: no train step
    to compile) evaluates to the figures the training loop's evaluation gives that state, and predicts
    per pixel."""
    cfg = load_config(
        str(ROOT / "configs" / "unet.yaml"),
        [
            f"output_dir={tmp_path}",
            "model.algorithms=data",
            "model.options={width: 0.25, depth: 1, spatial_dims: 2}",
            "data.image_size=[16,16]",
            "data.num_train=8",
            "data.num_test=8",
            "train.eval_batch_size=8",
        ],
    )
    parts = assemble(cfg)
    graphs, st = init_state(parts.build(), parts.tx, parts.mesh)
    ckpt = Checkpointer(os.path.join(cfg.run_dir, "checkpoints"))
    ckpt.save(1, st)
    ckpt.close()
    write_config(cfg)
    expected = evaluate(jit_eval_step(graphs, st, parts.mesh, "segmentation"), st, parts.data, 8, parts.mesh)
    assert main(["eval", cfg.run_dir]) == 0
    figures = _figures(capsys.readouterr().out)
    assert figures == {
        "accuracy": expected["eval_accuracy"],
        "loss": expected["eval_loss"],
        "Dice": expected["eval_dice"],
    }
    # per-pixel predictions of the test images (an .npy without the channel axis): their accuracy
    np.save(tmp_path / "test.npy", parts.data.x_test[..., 0])
    out = tmp_path / "masks.npz"
    assert main(["predict", cfg.run_dir, "--input", str(tmp_path / "test.npy"), "--output", str(out)]) == 0
    with np.load(out) as f:
        predictions, probabilities = f["predictions"], f["probabilities"]
        assert list(f["class_names"]) == ["background", "ellipsoid"]
    assert predictions.shape == (8, 16, 16) and probabilities.shape == (8, 16, 16, 2)
    assert np.mean(predictions == parts.data.y_test) == expected["eval_accuracy"]
