"""Config flow: every shipped YAML loads; bad files, types, meshes and overrides fail with useful messages."""

from __future__ import annotations

import glob
import math
import os
import typing

import pytest
import yaml

from jaxcnn import models
from jaxcnn.nn.placement import parse_placement_text
from jaxcnn.runner.config import (
    Config,
    MeshConfig,
    ModelConfig,
    from_dict,
    load_config,
    save_config,
)
from jaxcnn.runner.config.typed import ConfigError
from jaxcnn.yaml_io import apply_overrides, parse_override

ALL_CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.yaml")))


def _command(path: str) -> str:
    with open(path) as f:
        return f.readline()


# Train configs start with "# jaxcnn train"; plan configs ("# jaxcnn plan") are tested in tests/planner.
CONFIGS = [p for p in ALL_CONFIGS if _command(p).startswith("# jaxcnn train")]
# Devices each shipped config is written for (its mesh must resolve on exactly this many).
DEVICES = {"resnet50_tpu_pod.yaml": 256, "resnet50_slurm_gpu.yaml": 32}
ALGORITHM_CONFIGS = {"data", "spatial", "filter", "channel", "2d", "2.5d", "3d"}


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_shipped_config_set_is_complete():
    assert all(_command(p).startswith(("# jaxcnn train ", "# jaxcnn plan ")) for p in ALL_CONFIGS)
    names = {os.path.basename(p)[: -len(".yaml")] for p in CONFIGS}
    assert names >= {"base", "default", "resnet50_tpu_pod", "resnet50_gpu_node"} | ALGORITHM_CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads_validates_and_starts_with_its_command(path):
    cfg = load_config(path)
    name = os.path.basename(path)
    first = _command(path)
    assert first.startswith(f"# jaxcnn train configs/{name}"), first
    sizes = cfg.mesh.resolve(DEVICES.get(name, 8))
    assert math.prod(sizes.values()) == DEVICES.get(name, 8)
    if name[: -len(".yaml")] in ALGORITHM_CONFIGS:
        assert cfg.model.algorithms == name[: -len(".yaml")]
    # The resolved config round-trips through the file written into the run directory.
    assert from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_default_config_values():
    cfg = load_config(os.path.join(os.path.dirname(CONFIGS[0]), "default.yaml"))
    assert (cfg.name, cfg.data.source, cfg.model.name) == ("default", "digits", "small_cnn")
    assert cfg.mesh.resolve(8) == {"n": 8, "d": 1, "h": 1, "w": 1, "k": 1, "c": 1}
    assert {a.split("@")[0] for a in cfg.model.algorithms.values()} == {"spatial", "2d", "3d", "data"}
    assert cfg.optimizer.learning_rate == 0.003  # from default.yaml, over base.yaml's 0.001
    assert cfg.checkpoint.max_to_keep == 3  # inherited from base.yaml


def test_base_config_chain_and_overrides(tmp_path):
    _write(tmp_path, "a.yaml", "seed: 1\ntrain: {steps: 7, batch_size: 16}\n")
    _write(tmp_path, "b.yaml", "base_config: a.yaml\ntrain: {steps: 9}\n")
    path = _write(tmp_path, "c.yaml", "base_config: b.yaml\nname: c\n")
    cfg = load_config(path, ["optimizer.learning_rate=1e-2", "mesh.n=-1", "model.algorithms=[3d, data]"])
    assert (cfg.seed, cfg.train.steps, cfg.train.batch_size, cfg.name) == (1, 9, 16, "c")
    assert cfg.optimizer.learning_rate == 0.01 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.model.algorithms == ("3d", "data")
    saved = str(tmp_path / "resolved.yaml")
    save_config(cfg, saved)
    assert load_config(saved) == cfg


def test_base_config_cycle(tmp_path):
    _write(tmp_path, "x.yaml", "base_config: y.yaml\n")
    path = _write(tmp_path, "y.yaml", "base_config: x.yaml\n")
    with pytest.raises(ConfigError, match="base_config cycle"):
        load_config(path)


def test_config_is_frozen():
    cfg = from_dict({"model": {"options": {"width": 8}, "algorithms": {"*": "data"}}})
    with pytest.raises(AttributeError, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        cfg.model.name = "vgg16"  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        cfg.model.options["width"] = 16  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        cfg.model.algorithms["conv1"] = "3d"  # type: ignore[index]
    assert from_dict({}) == Config() and hash(cfg) == hash(from_dict(cfg.to_dict()))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sed": 1}, "unknown config key 'sed'; valid keys at the top level: name, output_dir, seed,"),
        (
            {"train": {"stepz": 1}},
            "unknown config key 'train.stepz'; valid keys at 'train': steps, batch_size,",
        ),
        ({"mesh": {"x": 2}}, "unknown config key 'mesh.x'; valid keys at 'mesh': n, d, h, w, k, c"),
    ],
)
def test_unknown_keys(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"steps": "ten"}}, "train.steps: expected int, got 'ten' (str)"),
        ({"train": {"steps": 2.5}}, "train.steps: expected int, got 2.5 (float)"),
        ({"seed": True}, "seed: expected int, got True (bool)"),
        (
            {"optimizer": {"learning_rate": "fast"}},
            "optimizer.learning_rate: expected float, got 'fast' (str)",
        ),
        ({"resume": "yes"}, "resume: expected bool, got 'yes' (str)"),
        (
            {"optimizer": {"name": "lamb"}},
            "optimizer.name: expected one of 'sgd', 'momentum', 'adam', 'adamw'",
        ),
        (
            {"model": {"algorithms": 3}},
            "model.algorithms: expected str or list of str or mapping of str to str",
        ),
        ({"model": {"algorithms": ["3d", "4d"]}}, "model.algorithms[1]: unknown algorithm '4d'; valid"),
        ({"model": {"algorithms": {"conv1": "x@n=8"}}}, "model.algorithms.conv1: unknown algorithm 'x@n=8'"),
        ({"data": {"image_size": [8]}}, "data.image_size: expected [] or [H, W]"),
        ({"data": {"source": "npz"}}, "data.path: required for data.source='npz'"),
        ({"model": "small_cnn"}, "model: expected mapping (section ModelConfig), got 'small_cnn' (str)"),
        ({"train": {"steps": 0}}, "train.steps: must be >= 1, got 0"),
        ({"train": {"eval_every": -1}}, "train.eval_every: must be >= 0, got -1"),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction: must be finite and in (0, 1), got 1.0"),
        ({"data": {"image_size": [8, "x"]}}, "data.image_size[1]: expected int, got 'x' (str)"),
        ({"model": {"algorithms": []}}, "model.algorithms: the list of algorithms is empty"),
        ({"model": {"options": {"width": [1]}}}, "model.options.width: must be a finite number > 0"),
        (
            {"model": {"options": {"depth": [1.5]}}},
            "model.options.depth: expected int or float or bool or str or list",
        ),
        ({"model": {"plan_memory_bytes": "lots"}}, "model.plan_memory_bytes: must be a size such as 16GiB"),
        ({"mesh": {"n": 0}}, "mesh.n: must be a positive int or -1, got 0"),
        ({"name": "a/b"}, "name: must be a non-empty file name, got 'a/b'"),
    ],
)
def test_wrong_types_and_values(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert str(e.value).startswith(message), str(e.value)


def test_auto_algorithms():
    assert from_dict({"model": {"algorithms": "auto"}}).model.algorithms == "auto"


@pytest.mark.parametrize(
    "mesh, devices, message",
    [
        ({"n": 3}, 8, "product 3 != 8 available devices"),
        ({"n": 4, "k": 4}, 8, "product 16 != 8 available devices"),
        (
            {"n": -1, "k": 3},
            8,
            "the fixed sizes multiply to 3, which does not divide the 8 available devices",
        ),
        ({"n": -1, "c": 16}, 8, "the fixed sizes multiply to 16, which does not divide the 8"),
    ],
)
def test_impossible_meshes(mesh, devices, message):
    with pytest.raises(ConfigError, match=message):
        # MeshConfig alone: in a whole config, n=3 (batch 64) and k=3 (algorithm data) fail at load time.
        MeshConfig(**mesh).resolve(devices)


def test_mesh_statics():
    with pytest.raises(ConfigError, match=r"at most one axis may be -1, got -1 for n, k"):
        from_dict({"mesh": {"n": -1, "k": -1}})
    with pytest.raises(ConfigError, match=r"mesh\.h: must be a positive int or -1, got 0"):
        from_dict({"mesh": {"h": 0}})
    assert from_dict({"mesh": {"n": 2, "c": -1}}).mesh.resolve(8) == {
        "n": 2,
        "d": 1,
        "h": 1,
        "w": 1,
        "k": 1,
        "c": 4,
    }


@pytest.mark.parametrize("text", ["train.steps", "=3", "train..steps=3", "train.steps=[1, 2", "tr ain=1"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError, match="bad override"):
        apply_overrides({}, [text])


def test_override_into_a_scalar():
    # (An override naming an unknown key is a dict with that key: test_unknown_keys.)
    with pytest.raises(ConfigError, match=r"bad override 'seed\.x=1': seed is 3, not a section"):
        apply_overrides({"seed": 3}, ["seed.x=1"])


def test_override_values_are_yaml():
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert from_dict(apply_overrides({}, ["optimizer.learning_rate=1e-3"])).optimizer.learning_rate == 1e-3
    assert parse_override("a={x: 1}") == (["a"], {"x": 1})
    assert parse_override("name=run=2") == (["name"], "run=2")
    assert parse_override("flag=true") == (["flag"], True)


def test_config_placements_are_read_by_the_layers_parser():
    """One parser for placement strings: config validation reports jaxcnn.nn.placement's own error,
    prefixed with the key."""
    assert parse_placement_text("3d") == ("3d", None)
    assert parse_placement_text("3d@n=2,k=2,c=2") == ("3d", {"n": 2, "d": 1, "h": 1, "w": 1, "k": 2, "c": 2})
    for bad in ("4d", "3d@n=2,q=2", "3d@n=0,k=8", "3d@n=2,n=4", "data@n=4,k=2", "k=2"):
        with pytest.raises(ValueError) as parsed:
            parse_placement_text(bad)
        with pytest.raises(ConfigError) as loaded:
            from_dict({"model": {"algorithms": {"conv1": bad}}})
        assert str(loaded.value) == f"model.algorithms.conv1: {parsed.value}"


def test_model_names_and_tasks_come_from_the_registry():
    assert typing.get_args(ModelConfig.model_fields["name"].annotation) == tuple(models.MODELS)
    with pytest.raises(ConfigError) as err:
        from_dict({"model": {"name": "unet"}})  # digits: a classification source
    assert f"a classifier ({', '.join(models.model_names('classification'))})" in str(err.value)
