"""The run's checks as functions (no training; tests/faults/test_run_faults.py runs them through the
CLI): which config differences refuse a resume (:mod:`jaxcnn.runner.run_directory`), and when a loss
counts as diverged (:mod:`jaxcnn.runner.divergence`)."""

from __future__ import annotations

import pytest

from jaxcnn.runner.config import from_dict
from jaxcnn.runner.divergence import DivergedError, DivergenceCheck
from jaxcnn.runner.run_directory import RESUME_KEYS, resume_differences, saved_config


def plain(**sections) -> dict:
    return from_dict(sections).to_dict()


def test_resume_compares_what_the_checkpoints_hold_and_not_how_the_run_goes_on():
    saved = plain(model={"options": {"width": 1.0}}, optimizer={"name": "adam", "weight_decay": 0.1})
    allowed = plain(
        name="other",
        output_dir="elsewhere",
        model={"options": {"width": 1.0}, "algorithms": "auto", "plan_memory_bytes": "1GiB"},
        mesh={"n": -1, "k": 1},
        train={
            "steps": 9000,
            "log_every": 1,
            "eval_every": 0,
            "eval_batch_size": 8,
            "divergence_factor": 0.0,
        },
        optimizer={
            "name": "adam",
            "learning_rate": 1e-5,
            "schedule": "cosine",
            "b1": 0.5,
            "weight_decay": 0.3,
        },
        data={"workers": 2, "prefetch": 4},
        checkpoint={"every": 1, "max_to_keep": 9},
    )
    assert resume_differences(saved, allowed) == []

    refused = plain(
        seed=1,
        model={"options": {"width": 2.0, "small_images": True}, "dtype": "bfloat16"},
        train={"batch_size": 32},
        data={"source": "synthetic", "image_size": [8, 8], "channels": 1},
        optimizer={"name": "adamw"},
    )
    assert resume_differences(saved, refused) == [
        "seed=1 (saved: 0)",
        "model.options.width=2.0 (saved: 1.0)",
        "model.options.small_images=true (saved: unset)",
        "model.dtype=bfloat16 (saved: float32)",
        "train.batch_size=32 (saved: 64)",
        "data.source=synthetic (saved: digits)",
        "data.image_size=[8, 8] (saved: [])",
        "data.channels=1 (saved: 3)",
        "optimizer.name=adamw (saved: adam)",
    ]


def test_every_resume_key_is_a_config_key():
    defaults = plain()
    for key in RESUME_KEYS:
        section, _, field = key.rpartition(".")
        assert field in (defaults[section] if section else defaults), key


def test_resume_refuses_turning_an_optimizer_stage_on_or_off_but_not_changing_its_amount():
    def sgd(clip: float, decay: float, name: str = "sgd") -> dict:
        return plain(optimizer={"name": name, "grad_clip_norm": clip, "weight_decay": decay})

    assert resume_differences(sgd(1.0, 0.1), sgd(5.0, 0.2)) == []
    assert resume_differences(sgd(0.0, 0.0), sgd(1.0, 0.0)) == [
        "optimizer.grad_clip_norm=1.0 (saved: 0.0; adds a stage of the optimizer state)"
    ]
    assert resume_differences(sgd(0.0, 0.1), sgd(0.0, 0.0)) == [
        "optimizer.weight_decay=0.0 (saved: 0.1; removes a stage of the optimizer state)"
    ]
    assert resume_differences(sgd(0.0, 0.0, "adamw"), sgd(0.0, 0.1, "adamw")) == []  # adamw: always there


def test_a_saved_config_from_an_older_version_or_damaged_is_compared_where_it_can_be(tmp_path):
    path = tmp_path / "config.yaml"
    assert saved_config(str(path)) is None  # missing
    path.write_text("earlier\n")
    assert saved_config(str(path)) is None  # not a mapping
    # A key this version no longer has: read as it is; keys it lacks are not compared.
    path.write_text("model: {name: small_cnn, retired_key: 1}\ntrain: {batch_size: 16}\n")
    old = saved_config(str(path))
    assert old == {"model": {"name": "small_cnn", "retired_key": 1}, "train": {"batch_size": 16}}
    assert resume_differences(old, plain()) == ["train.batch_size=64 (saved: 16)"]
    # A valid older file gets this version's defaults for the keys added since.
    path.write_text("model: {name: small_cnn}\n")
    assert saved_config(str(path)) == plain()


def test_divergence_is_measured_against_the_lowest_early_loss():
    check = DivergenceCheck(100.0)
    check.check(1, [2.3, 1.9, 2.0], None)  # sets the reference: the lowest of the first steps
    assert check.reference == 1.9
    check.check(4, [189.9, 5.0], None)
    with pytest.raises(DivergedError) as e:
        check.check(6, [1.0, 190.5, 1e9], None)
    message = str(e.value)
    assert message.startswith("training loss diverged at step 7: 190.5 is over train.divergence_factor=100 ")
    assert (
        "early value 1.9; stopping. Last good checkpoint: none (checkpoint.enabled is false). Rerun with a "
        in message
    )

    # A blow-up inside the first steps is caught there (their mean would have hidden it).
    with pytest.raises(DivergedError, match=r"at step 2: 9\.87e"):
        DivergenceCheck(100.0).check(1, [2.39, 9.87e9, 2.5e5], None)
    # Resumed: the run's saved reference, not the resumed run's first losses.
    with pytest.raises(DivergedError, match=r"at step 11: 500 "):
        DivergenceCheck(100.0, reference=2.0).check(11, [500.0], None)
    # Off: factor 0, or a reference of 0 (nothing to compare with).
    DivergenceCheck(0.0).check(1, [2.0, 1e30], None)
    DivergenceCheck(100.0, reference=0.0).check(1, [1e30], None)
