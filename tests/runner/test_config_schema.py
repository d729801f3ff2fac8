"""The pydantic config schema: configs/base.yaml equals its defaults, one memory-size type for
``jaxcnn train`` and ``jaxcnn plan``, YAML and override details, and one-line errors."""

from __future__ import annotations

import copy
import math
import os
import typing

import pytest
import yaml
from pydantic import BaseModel

from jaxcnn.planner.cli import PlanCliError, parse_memory, resolve_args
from jaxcnn.runner.config import Config, MeshConfig, ModelConfig, from_dict, load_config, save_config
from jaxcnn.runner.config.typed import ConfigError, parse_bytes
from jaxcnn.yaml_io import apply_overrides, load_yaml, parse_override

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BASE = os.path.join(ROOT, "configs", "base.yaml")


def _sections(cls: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every field of ``cls``, sections included, recursively."""
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _sections(field.annotation, key + ".")


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" != "model.options":
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_base_yaml_lists_every_key_with_the_model_default():
    with open(BASE) as f:
        raw = yaml.safe_load(f)
    assert "base_config" not in raw
    written, defaults = _flatten(raw), _flatten(Config().to_dict())
    missing = sorted(set(defaults) - set(written))
    extra = sorted(set(written) - set(defaults))
    assert not missing, f"configs/base.yaml lacks {missing}"
    assert not extra, f"configs/base.yaml has keys the config model lacks: {extra}"
    for key, value in defaults.items():
        assert written[key] == value and type(written[key]) is type(value), (key, written[key], value)
    assert load_config(BASE) == Config()


def test_every_key_is_described():
    undocumented = [key for key, field in _sections(Config) if not (field.description or "").strip()]
    assert not undocumented
    schema = Config.model_json_schema()
    assert schema["$defs"]["TrainConfig"]["properties"]["steps"]["minimum"] == 1
    assert "description" in schema["$defs"]["ModelConfig"]["properties"]["plan_memory_bytes"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16GiB", 16 * 2**30),
        ("512MiB", 512 * 2**20),
        ("2e9", 2 * 10**9),
        (2e9, 2 * 10**9),
        ("8GB", 8 * 10**9),
        ("1.5 kib", 1536),
        (4096, 4096),
        ("inf", math.inf),
    ],
)
def test_memory_sizes_are_the_same_in_train_and_plan(text, value):
    parsed = parse_bytes(text)
    assert parsed == value and type(parsed) is type(value)
    assert parse_memory(text) == value
    cfg = from_dict({"model": {"plan_memory_bytes": text}})
    assert cfg.model.plan_memory_bytes == value
    override = load_config(BASE, [f"model.plan_memory_bytes={text}"])
    assert override.model.plan_memory_bytes == value


@pytest.mark.parametrize("text", ["16 parsecs", "GiB", "-1GiB", "", True, [1], -5])
def test_bad_memory_sizes_name_the_key_in_both_places(text):
    with pytest.raises(ConfigError, match=r"^model\.plan_memory_bytes: must be a size"):
        from_dict({"model": {"plan_memory_bytes": text}})
    with pytest.raises(PlanCliError, match=r"^memory must be a size"):
        parse_memory(text)


def test_zero_memory_is_unlimited_for_train_and_an_error_for_plan(tmp_path):
    assert from_dict({"model": {"plan_memory_bytes": 0}}).model.plan_memory_bytes == 0
    with pytest.raises(PlanCliError, match="memory must be positive"):
        parse_memory("0")
    cfg = from_dict({"name": "m", "model": {"plan_memory_bytes": "16GiB"}})
    saved = str(tmp_path / "config.yaml")
    save_config(cfg, saved)
    assert load_config(saved) == cfg and load_config(saved).model.plan_memory_bytes == 16 * 2**30


def test_plan_config_uses_the_run_config_loader(tmp_path):
    (tmp_path / "common.yaml").write_text("batch: 16\ndevices: 4\nmemory: 2e9\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("base_config: common.yaml\nmodel: vgg16\nmemory: 1GiB\n")
    args = resolve_args(["--config", str(plan)])
    assert (args.model, args.batch, args.devices, args.memory_bytes) == ("vgg16", 16, 4, 2**30)
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        resolve_args(["--config", str(tmp_path / "nope.yaml")])
    (tmp_path / "loop.yaml").write_text("base_config: loop.yaml\n")
    with pytest.raises(ConfigError, match="base_config cycle"):
        resolve_args(["--config", str(tmp_path / "loop.yaml")])


def test_apply_overrides_does_not_change_its_input():
    data = {"train": {"steps": 5}, "model": {"options": {"width": 8}}}
    before = copy.deepcopy(data)
    out = apply_overrides(data, ["train.steps=7", "model.options.width=16", "mesh.n=2"])
    assert data == before
    assert out == {"train": {"steps": 7}, "model": {"options": {"width": 16}}, "mesh": {"n": 2}}


def test_load_yaml_merges_without_sharing(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {steps: 1}\n")
    (tmp_path / "b.yaml").write_text("base_config: a.yaml\nmesh: {n: 2}\n")
    first = load_yaml(str(tmp_path / "b.yaml"))
    first["train"]["steps"] = 99
    assert load_yaml(str(tmp_path / "b.yaml")) == {"train": {"steps": 1}, "mesh": {"n": 2}}


def test_model_options_override():
    cfg = load_config(BASE, ["model.options={width: 0.125, small_images: true, act: relu, depth: 3}"])
    assert dict(cfg.model.options) == {"width": 0.125, "small_images": True, "act": "relu", "depth": 3}
    assert load_config(BASE, ["model.options.width=1e-3"]).model.options["width"] == 0.001
    with pytest.raises(ConfigError) as e:
        load_config(BASE, ["model.options={width:0.125,small_images:true}"])
    assert str(e.value) == (
        "bad override 'model.options={width:0.125,small_images:true}': YAML reads 'width:0.125' as a key "
        "without a value; put a space after each colon: 'model.options={width: 0.125,small_images: true}'"
    )
    with pytest.raises(ConfigError, match=r"^model\.options: expected mapping of str to int or float"):
        load_config(BASE, ["model.options=width:0.125"])


def test_scientific_notation_is_a_float_in_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: {learning_rate: 3e-4, weight_decay: 1E-2}\n")
    cfg = load_config(str(path), ["optimizer.b2=9.99e-1"])
    assert (cfg.optimizer.learning_rate, cfg.optimizer.weight_decay, cfg.optimizer.b2) == (3e-4, 0.01, 0.999)
    assert parse_override("name=3d") == (["name"], "3d") and parse_override("x=2.5d") == (["x"], "2.5d")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mesh": {"n": 2.0}}, "mesh.n: expected int, got 2.0 (float)"),
        ({"mesh": {"n": "2"}}, "mesh.n: expected int, got '2' (str)"),
        ({"checkpoint": {"enabled": 1}}, "checkpoint.enabled: expected bool, got 1 (int)"),
        ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay: must be finite and >= 0, got -0.1"),
        ({"model": {"options": {3: 1}}}, "model.options: keys must be str, got 3 (int)"),
        (
            {"model": {"dtype": "float16"}},
            "model.dtype: expected one of 'float32', 'bfloat16', got 'float16'",
        ),
        ({"data": {"source": "synthetic"}}, "data.image_size: synthetic data needs [H, W]"),
        ({"data": {"image_size": [8, 0]}}, "data.image_size: expected [] or [H, W] with positive sizes"),
        ({"model": {"algorithms": ["3d", 4]}}, "model.algorithms: expected str or list of str or mapping"),
        ({"model": {"algorithms": {"*": "conv9"}}}, "model.algorithms.*: unknown algorithm 'conv9'; valid"),
    ],
)
def test_more_one_line_errors(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_sections_built_directly_raise_config_errors_with_their_key():
    with pytest.raises(ConfigError, match=r"^mesh\.h: must be a positive int or -1, got 0$"):
        MeshConfig(h=0)
    with pytest.raises(ConfigError, match=r"^unknown config key 'model\.nme'; valid keys at 'model': name,"):
        ModelConfig(nme="vgg16")
    assert MeshConfig(n=4, c=2).resolve(8) == {"n": 4, "d": 1, "h": 1, "w": 1, "k": 1, "c": 2}
    assert ModelConfig(algorithms=["3d", "data"]).algorithms == ("3d", "data")


def test_empty_sections_mean_defaults(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("model:\ntrain:\n")
    assert load_config(str(path)) == Config()


def test_int_fields_are_ints_and_float_fields_floats():
    cfg = from_dict({"optimizer": {"learning_rate": 1, "momentum": 0}, "data": {"image_size": [8, 8]}})
    assert type(cfg.optimizer.learning_rate) is float and type(cfg.optimizer.momentum) is float
    assert cfg.data.image_size == (8, 8)
    hints = typing.get_type_hints(Config)
    assert set(hints) >= set(Config.model_fields)


def test_cli_prints_one_line_errors(capsys):
    from jaxcnn.__main__ import main as jaxcnn_main

    for argv, message in [
        (["mesh.n=0"], "mesh.n: must be a positive int or -1, got 0"),
        (
            ["model.algorithms=[3d, conv9]"],
            "model.algorithms[1]: unknown algorithm 'conv9'; valid algorithms",
        ),
        (["train.steps=ten"], "train.steps: expected int, got 'ten' (str)"),
        (["optimizer.nam=sgd"], "unknown config key 'optimizer.nam'; valid keys at 'optimizer': name,"),
        (["model.plan_memory_bytes=16 parsecs"], "model.plan_memory_bytes: must be a size such as 16GiB"),
    ]:
        assert jaxcnn_main(["train", BASE, *argv, "--print-config"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxcnn train: config error: {message}") and err.count("\n") == 1, err
