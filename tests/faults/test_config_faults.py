"""Bad config values are one-line config errors naming the value and what would be valid, exit code 2 from
the CLI and no traceback, never a silent wrong answer (issue 10): batches the mesh cannot split, bad
layer placements, non-finite or out-of-range floats, and a model too big for the devices (stopped before
anything is allocated, :mod:`jaxcnn.runner.fit`).

Most rows run in-process (``load_config`` / ``main([...])``); two run the real CLI in a subprocess.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time

import jax
import pytest

from jaxcnn.runner import fit
from jaxcnn.runner.cli import main
from jaxcnn.runner.config import from_dict, load_config
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.runner.state import abstract_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = os.path.join(ROOT, "configs", "default.yaml")
PREFIX = "jaxcnn train: config error: "


def load_error(*overrides: str, path: str = DEFAULT) -> str:
    """The one-line ``ConfigError`` message of loading ``path`` with ``overrides``."""
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def cli_error(capsys, *argv: str) -> str:
    """``main(argv)`` in-process: asserts exit 2 and one stderr line; returns it without the prefix."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(PREFIX) and err.count("\n") == 1, err
    return err[len(PREFIX) : -1]


# Runs `python -m jaxcnn ...` and writes the process's peak RSS (KiB) to $JAXCNN_TEST_PEAK_RSS at exit.
_MEASURED = """
import os, resource, runpy
try:
    runpy.run_module("jaxcnn", run_name="__main__", alter_sys=True)
finally:
    with open(os.environ["JAXCNN_TEST_PEAK_RSS"], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def run_cli(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, float, int]:
    """The real ``jaxcnn train`` in a subprocess (8 CPU devices, from conftest's environment).

    Returns:
      ``(result, seconds, peak RSS in KiB)``.
    """
    rss = tmp_path / "peak_rss"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _MEASURED, "train", *argv],
        cwd=ROOT,
        env={**os.environ, "JAXCNN_TEST_PEAK_RSS": str(rss)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out, time.perf_counter() - t0, int(rss.read_text())


# ------------------------------------------------------------------------------ row 1: batch vs mesh


def test_batch_size_the_explicit_mesh_cannot_split_fails_at_load_time():
    assert load_error("train.batch_size=60") == (
        "train.batch_size: must be a multiple of mesh.n=8, got 60: the input batch is split over mesh.n "
        "(each process loads the rows its devices hold); use 56 or 64, or mesh.n=4 with mesh.c=2 and a "
        "placement that uses c, or mesh.n=-1 with model.algorithms=auto"
    )
    assert load_error("train.eval_batch_size=60") == (
        "train.eval_batch_size: must be a multiple of mesh.n=8, got 60: eval batches are split over mesh.n "
        "like train batches (the last is padded and masked); use 56 or 64, or mesh.n=-1 with "
        "model.algorithms=auto"
    )
    # An explicit n with another axis -1: still known at load time; the hint keeps the wildcard.
    message = load_error("mesh={n: 8, c: -1}", "model.algorithms=data", "train.batch_size=4")
    assert message.startswith("train.batch_size: must be a multiple of mesh.n=8, got 4:")
    assert "use 8, or mesh.n=4 (mesh.c=-1 takes the rest) and placements that use c" in message


def test_batch_checks_with_mesh_n_minus_one_wait_for_the_devices():
    cfg = from_dict({"model": {"algorithms": "data"}, "train": {"batch_size": 60}})  # loads: n unknown
    with pytest.raises(ConfigError, match=r"^train\.batch_size=60 does not divide over mesh\.n=8"):
        cfg.mesh_sizes(8)
    auto = from_dict({"model": {"algorithms": "auto"}, "train": {"batch_size": 60}})
    assert auto.mesh_sizes(8) == {"n": 4, "d": 1, "h": 1, "w": 1, "k": 1, "c": 2}  # auto moves devices to c


def test_batch_size_from_the_cli_is_exit_2_before_jax_starts(tmp_path):
    out, seconds, _ = run_cli(tmp_path, "configs/default.yaml", "train.batch_size=60")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(PREFIX + "train.batch_size: must be a multiple of mesh.n=8, got 60:")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and out.stdout == ""
    assert seconds < 30


# ---------------------------------------------------------------------------------- row 2: placements


def test_placement_syntax_and_device_count_fail_at_load_time():
    assert load_error("model.algorithms=3d@n=2,q=2") == (
        "model.algorithms: bad layer mesh in placement '3d@n=2,q=2': unknown axis 'q'; expected "
        "comma-separated axis=size items with axes from n, d, h, w, k, c and sizes >= 1, "
        "e.g. '3d@n=2,k=2,c=2'"
    )
    assert load_error("model.algorithms=3d@n=2,k=2") == (
        "model.algorithms: placement '3d@n=2,k=2' uses 4 devices but the mesh {'n': 8, 'd': 1, 'h': 1, "
        "'w': 1, 'k': 1, 'c': 1} has 8; a layer mesh re-arranges all the run's devices, so its sizes must "
        "multiply to 8, e.g. '3d@n=4,k=2'"
    )
    assert "size '0' of axis 'n' is not an int >= 1" in load_error("model.algorithms=3d@n=0,k=8")
    assert "axis 'n' given twice" in load_error("model.algorithms=3d@n=2,n=4")
    assert load_error("model.algorithms={conv1: 'data@n=2,k=4'}").startswith(
        "model.algorithms.conv1: placement 'data@n=2,k=4': algorithm 'data' does not use mesh axis 'k'"
    )
    # An unquoted layer mesh in a YAML list is split at its commas: the message says so.
    message = load_error("model.algorithms=[data, 3d@n=2,k=2,c=2]")
    assert message.startswith("model.algorithms[2]: unknown algorithm 'k=2'") and "needs quotes" in message
    # A plain algorithm that cannot use the run mesh's explicit axes.
    assert load_error("mesh={n: -1, k: 2}", "model.algorithms=data").startswith(
        "model.algorithms: placement 'data' runs on the run mesh "
        "{'n': -1, 'd': 1, 'h': 1, 'w': 1, 'k': 2, 'c': 1}: "
        "algorithm 'data' does not use mesh axis 'k' (size 2)"
    )


def test_placements_the_model_rejects_are_one_line_exit_2(capsys, tmp_path):
    run = ("configs/default.yaml", "--compile-only", f"output_dir={tmp_path}")
    # mesh.n=-1: the device count is known only once JAX runs, so the model build reports it.
    assert cli_error(capsys, *run, "mesh.n=-1", "model.algorithms=3d@n=2,k=2") == (
        "model.algorithms=3d@n=2,k=2: placement '3d@n=2,k=2' uses 4 devices but the model's mesh has 8; "
        "the axis sizes must multiply to 8"
    )
    layers = "conv1, conv2, conv3, conv4, head"
    assert cli_error(capsys, *run, "model.algorithms={'*': data, conv9: data}") == (
        "model.algorithms={'*': 'data', 'conv9': 'data'}: algorithms names unknown layers ['conv9']; the "
        "layers are ['conv1', 'conv2', 'conv3', 'conv4', 'head']"
    )
    assert cli_error(capsys, *run, "model.algorithms={conv9: data}") == (
        "model.algorithms={'conv9': 'data'}: algorithms has no entry for layer 'conv1' and no '*' default; "
        f"its 5 convolutions, in list order: {layers}"
    )
    assert cli_error(capsys, *run, "model.algorithms=[data, data]") == (
        "model.algorithms=['data', 'data']: algorithms lists 2 placements but the model has more "
        f"convolutions; its 5 convolutions, in list order: {layers}"
    )
    assert cli_error(capsys, *run, "model.options={widht: 2}") == (
        "model.options={'widht': 2}: model 'small_cnn' rejects them: SmallCNN.__init__() got an unexpected "
        "keyword argument 'widht'"
    )
    # A mesh that does not fit the 8 devices (known only at run time).
    message = cli_error(
        capsys, "configs/default.yaml", "mesh.n=16", "model.algorithms=data", f"output_dir={tmp_path}"
    )
    assert message.startswith(
        "mesh {'n': 16, 'd': 1, 'h': 1, 'w': 1, 'k': 1, 'c': 1}: product 16 != 8 available devices"
    )
    assert not os.listdir(tmp_path)


def test_a_memory_budget_no_plan_fits_is_one_line_exit_2(capsys, tmp_path):
    """``auto`` under a ``model.plan_memory_bytes`` below the least whole-step peak the planner finds."""
    message = cli_error(
        capsys,
        "configs/default.yaml",
        "--compile-only",
        f"output_dir={tmp_path}",
        "model.algorithms=auto",
        "model.plan_memory_bytes=600KiB",
    )
    assert message.startswith("model.plan_memory_bytes=614400: the whole train step needs at least ")
    assert message.endswith(
        "over the memory budget of 600.0 KiB; raise it (0: unlimited) or use more devices"
    )


# ------------------------------------------------------------------------------------ row 3: floats


@pytest.mark.parametrize(
    "value, shown", [(".inf", "inf"), (".nan", "nan"), ("0", "0.0"), ("-1e-3", "-0.001")]
)
def test_learning_rate_must_be_finite_and_positive(value, shown):
    assert load_error(f"optimizer.learning_rate={value}") == (
        f"optimizer.learning_rate: must be finite and > 0, got {shown}"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.weight_decay=.inf", "optimizer.weight_decay: must be finite and >= 0, got inf"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay: must be finite and >= 0, got -1.0"),
        ("optimizer.grad_clip_norm=.nan", "optimizer.grad_clip_norm: must be finite and >= 0, got nan"),
        ("optimizer.momentum=1", "optimizer.momentum: must be finite and in [0, 1), got 1.0"),
        ("optimizer.b1=-0.1", "optimizer.b1: must be finite and in [0, 1), got -0.1"),
        ("optimizer.b2=.inf", "optimizer.b2: must be finite and in [0, 1), got inf"),
        (
            "optimizer.final_lr_fraction=1.5",
            "optimizer.final_lr_fraction: must be finite and in [0, 1], got 1.5",
        ),
        ("data.test_fraction=.nan", "data.test_fraction: must be finite and in (0, 1), got nan"),
        ("model.options={width: .inf}", "model.options.width: must be finite, got inf"),
        (
            "model.options={width: -1}",
            "model.options.width: must be a finite number > 0 (the channel multiplier of every model), "
            "got -1",
        ),
    ],
)
def test_every_float_is_finite_and_bounded(override, message):
    assert load_error(override) == message


def test_bounds_keep_valid_edges():
    cfg = load_config(
        DEFAULT, ["optimizer.momentum=0", "optimizer.final_lr_fraction=1", "optimizer.b2=0.9999"]
    )
    assert (cfg.optimizer.momentum, cfg.optimizer.final_lr_fraction) == (0.0, 1.0)


def test_a_float_error_from_the_cli_is_one_line_exit_2(capsys):
    assert cli_error(capsys, "configs/default.yaml", "optimizer.learning_rate=.inf") == (
        "optimizer.learning_rate: must be finite and > 0, got inf"
    )


# ------------------------------------------------------------------------------ row 4: memory fit


def test_a_model_too_big_for_the_devices_stops_before_allocating(tmp_path):
    out, seconds, peak_kib = run_cli(
        tmp_path,
        "configs/default.yaml",
        "model.name=resnet18",
        "model.options={width: 32}",
        "model.algorithms=data",
        f"output_dir={tmp_path}",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    err = out.stderr
    assert err.count("\n") == 1 and "Traceback" not in err
    # The figures, derived from the architecture (jaxcnn/models/resnet.py), not copied from a run.
    # ResNet-18 at width 32: stage widths 2048·2^s, a 7x7/2 stem on the digits' 1 channel, BatchNorm
    # after every convolution (scale and bias are parameters, mean and variance model statistics),
    # projections where the stride or the width changes, a 10-class head with bias; all float32 and,
    # under `data`, replicated on every device.
    base, bn_channels = 64 * 32, 64 * 32
    params = 7 * 7 * 1 * base + 2 * base  # stem conv + BN
    cin = base
    for stage in range(4):
        width = base * 2**stage
        for _ in range(2):  # two basic blocks a stage
            params += 3 * 3 * cin * width + 3 * 3 * width * width + 2 * (2 * width)  # conv1, conv2 (+BN)
            bn_channels += 2 * width
            if cin != width:  # the first block of stages 2-4 (stride 2): a 1x1 projection (+BN)
                params += cin * width + 2 * width
                bn_channels += width
            cin = width
    params += cin * 10 + 10  # head
    gib = params * 4 / 2**30
    statistics_mib = 2 * bn_channels * 4 / 2**20  # mean and variance
    adam_gib = 2 * gib  # two moments (its step counter: a few bytes)
    batch_kib = 64 * 8 * 8 * 1 * 4 / 8 / 2**10  # batch 64 of 8x8x1 float32 images over n=8 (+ labels)
    total_gib = gib + adam_gib + gib + (statistics_mib / 2**10) + batch_kib / 2**20
    assert err.startswith(
        PREFIX + "model.name=resnet18 with model.options={'width': 32} and model.algorithms=data "
        f"({params:,} parameters) does not fit: its train state needs {total_gib:.1f} GiB per device "
        f"(parameters {gib:.1f} GiB, model statistics {statistics_mib:.1f} MiB, optimizer state "
        f"{adam_gib:.1f} GiB, gradients {gib:.1f} GiB, input batch {batch_kib:.1f} KiB; activations not "
        "counted) but a device has "
    ), err
    assert "100% of it is replicated on every device; use fewer parameters" in err
    assert seconds < 60
    # Nothing was allocated: the process's peak RSS stayed far below the 42.6 GiB of one parameter copy.
    assert peak_kib < 3 * 2**20, peak_kib


def test_the_footprint_counts_each_leafs_shard():
    from jaxcnn.runner import optim, setup
    from jaxcnn.runner.data.datasets import image_spec

    for algorithms in ("data", "3d@n=2,k=2,c=2"):
        cfg = load_config(DEFAULT, [f"model.algorithms={algorithms}", "model.options={width: 8}"])
        mesh = setup.build_mesh(cfg)
        shape, classes = image_spec(cfg.data, cfg.seed)
        tx = optim.optimizer(cfg.optimizer, cfg.train.steps)
        build = functools.partial(setup.build_model, cfg, mesh, classes, shape)
        _, state = abstract_state(build, tx, mesh)
        fp = fit.state_footprint(state)
        assert fp.parts["gradients"] == fp.parts["parameters"]
        assert fp.parts["optimizer state"] >= 2 * fp.parts["parameters"]  # Adam: two moments
        full = fp.num_params * 4  # float32 parameters
        if algorithms == "data":  # every kernel replicated: each device holds them all
            assert fp.parts["parameters"] == full and fp.replicated_fraction > 0.99
        else:  # 3d splits the kernels over its k and c axes: each device holds a part
            assert fp.parts["parameters"] <= full / 2 and fp.replicated_fraction < 0.1
    sharding = state["step"].sharding  # replicated over the 8 devices
    assert fit.shard_bytes(jax.ShapeDtypeStruct((8, 6), "float32", sharding=sharding)) == 8 * 6 * 4


def test_the_compiled_step_is_checked_too(capsys, tmp_path, monkeypatch):
    # 8 MiB of host RAM: 1 MiB per CPU device holds the default state (~0.7 MiB) but not the compiled
    # step (~1.7 MiB with activations), so the run stops after compiling, before the first step.
    monkeypatch.setattr(fit, "host_memory_bytes", lambda: 8 * 2**20)
    message = cli_error(capsys, "configs/default.yaml", f"output_dir={tmp_path}", "train.steps=1")
    assert message.startswith("model.name=small_cnn with model.options={'width': 1.0} and model.algorithms=")
    assert ": the compiled train step needs " in message
    assert "(host RAM 8.0 MiB shared by 8 CPU devices); use a smaller train.batch_size" in message
    # 1 MiB in all: the state itself does not fit, reported before any parameter exists.
    monkeypatch.setattr(fit, "host_memory_bytes", lambda: 2**20)
    message = cli_error(capsys, "configs/default.yaml", f"output_dir={tmp_path}", "train.steps=1")
    assert "does not fit: its train state needs " in message and "a device has 128.0 KiB" in message
    # --compile-only reports the same figures and never stops (the same train step: loaded from the test
    # run's compilation cache, tests/conftest.py).
    assert main(["configs/default.yaml", "--compile-only", "train.steps=1"]) == 0
    figures = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert figures["memory_fits"] == "False" and figures["device_memory_bytes"] == "131072"
    state, compiled = (
        int(figures["memory_state_bytes_per_device"]),
        int(figures["memory_compiled_bytes_per_device"]),
    )
    assert 2**19 < state < 2**20 < compiled  # the state fits 1 MiB per device, the compiled step does not
    assert compiled >= int(figures["argument_bytes"]) + int(figures["temp_bytes"])
