"""Run configuration: sections, fields a resumed run may change (marked on the fields), derived values,
and the two override forms (command-line strings, sweep-file tables)."""

from __future__ import annotations

import dataclasses

import pytest

from gptjax import config
from gptjax.config import ConfigError, RunConfig


def test_resumable_fields_are_marked_on_the_fields_and_nothing_else_may_change():
    saved = RunConfig(model=config.get_preset("tiny-25k"))
    harmless = config.override(
        saved,
        [
            "steps=900",
            "logging.every=3",
            "checkpoint.keep=9",
            "held_out.every=7",
            "fewshot.tasks=piqa",
            "mesh.data=2",
            "run_dir=elsewhere",
            "profile_steps=10:20",
            "code_commit=0123abc",
            "mesh.dcn=2",
        ],
    )
    assert config.changed_fields(saved, harmless) == {}
    changed = config.override(saved, ["batch_size=32", "optim.learning_rate=1e-4", "model.n_layer=3"])
    assert config.changed_fields(saved, changed) == {
        "batch_size": (16, 32),
        "optim.learning_rate": (1e-3, 1e-4),
        "model.n_layer": (2, 3),
    }
    resumable = {f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("resumable")}
    assert resumable == {
        "mesh",
        "logging",
        "checkpoint",
        "held_out",
        "fewshot",
        "icl",
        "run_dir",
        "steps",
        "profile_steps",
        "code_commit",
    }


def test_derived_sizes_have_one_name_and_follow_what_they_derive_from():
    tiny = config.get_preset("tiny-200k")
    assert (tiny.d_head, tiny.d_ff) == (16, 256)
    wider = config.override(RunConfig(model=tiny), ["model.d_model=128"]).model
    assert (wider.d_head, wider.d_ff) == (32, 512)  # re-derived, not the preset's 16 and 256
    pinned = config.override(RunConfig(model=tiny), ["model.d_ff=100", "model.d_model=128"]).model
    assert pinned.d_ff == 100  # an explicit value stays
    gpt3_13b = config.get_preset("gpt3-13b-table")  # 40 x 128 = 5120 != d_model 5140: d_head is its own value
    assert config.override(RunConfig(model=gpt3_13b), ["model.n_layer=2"]).model.d_head == 128
    assert not hasattr(tiny, "head_dim") and not hasattr(tiny, "d_mlp")


def test_sweep_tables_map_onto_the_config_with_typed_values():
    run = config.apply_table(
        RunConfig(),
        {"batch_size": 8, "optim": {"learning_rate": 3e-3}, "fewshot": {"tasks": ["piqa", "copa"], "shots": [0, 1]}},
    )
    assert (run.batch_size, run.optim.learning_rate, run.fewshot.tasks, run.fewshot.shots) == (
        8,
        3e-3,
        ("piqa", "copa"),
        (0, 1),
    )
    for table, message in [
        ({"batch_size": "8"}, "batch_size='8' is not a valid int"),
        ({"batch_size": 8.5}, "batch_size=8.5 is not a valid int"),
        ({"optim": 3}, "'optim' is a section"),
        ({"optim": {"lr": 1}}, "unknown config key 'optim.lr'"),
        ({"model": {"norm": "middle"}}, "model.norm='middle' is not one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config.apply_table(RunConfig(), table)


def test_validation_that_needs_several_fields_happens_before_anything_runs():
    with pytest.raises(ConfigError, match="optim.warmup_steps=100 must be < the decay length 20"):
        config.override(RunConfig(), ["optim.warmup_steps=100", "steps=20"])
    assert config.override(RunConfig(), ["optim.warmup_steps=100", "steps=20", "optim.decay_steps=200"])
    with pytest.raises(ConfigError, match="logging.every must be positive, got 0"):
        config.override(RunConfig(), ["logging.every=0"])
    with pytest.raises(ConfigError, match=r"fewshot.shots must be >= 0, got \[0, -1\]"):
        config.override(RunConfig(), ["fewshot.shots=0,-1"])
