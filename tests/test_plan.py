"""`gptjax plan` and `gptjax train --dry-run`: the real train step compiled ahead of time for a TPU slice (the
TPU compiler from libtpu, on this CPU) reports a fit with per-chip memory, and a step over the HBM as "does
not fit" with the compiler's numbers; the batch search doubles (or halves) from the known batch, then
bisects; the FLOP count extrapolated from shallow compiles equals the full program's (on CPU, where compiles
are fast)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import jax
import pytest

from gptjax import cli, config, plan
from gptjax.config import ModelConfig, RunConfig

from requirements import need_modules

GiB = 1 << 30


@pytest.fixture
def libtpu():
    need_modules("libtpu")


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(list(argv)) == 0
    return out.getvalue()


def test_plan_on_a_small_slice_reports_a_fit(libtpu):
    text = _cli("plan", "--preset", "tiny-1.2m", "--tpu", "v5e-4", "--no-search", "--no-flops", "--json")
    report = json.loads(text)
    assert report["fits"] and report["chips"] == 4 and report["attempt"]["batch_size"] == 4  # 1 per chip
    memory = report["attempt"]["memory"]
    assert 0 < memory["arguments"] <= memory["peak"] < report["hbm_bytes"] == 16 * GiB
    assert memory["aliased"] > 0  # the donated state
    assert report["settings"]["attention"] == "splash"  # `auto` resolved for the TPU target, not this CPU


def test_plan_reports_a_step_over_hbm_with_the_compilers_numbers(libtpu):
    # fp32 logits of a 262,144-token vocabulary: 2 GiB per sequence of 2048, 8 sequences per chip.
    big = ModelConfig(name="big-vocab", vocab_size=262_144, n_ctx=2048, n_layer=1, n_head=4, d_model=256)
    run = RunConfig(model=big, batch_size=32, mesh=config.MeshConfig(data=1, fsdp=-1))
    result = plan.plan_slice(run, "v5e-4", search=False, flops=False)
    assert not result.attempt.fits and "RESOURCE_EXHAUSTED" in result.attempt.oom
    assert result.attempt.oom_required > result.attempt.oom_available > 15 * GiB
    assert "does not fit: needs" in result.format()


def test_batch_search_doubles_then_bisects(monkeypatch):
    """A fake compiler that fits up to 5 sequences per device: 1, 2, 4 fit, 8 does not, then 6 and 5."""
    compiled = []

    def fake_compile(run, devices, options=None):
        compiled.append(run.batch_size)
        fits = run.batch_size <= 5 * len(devices)
        memory = plan.Memory(1, 1, run.batch_size, 1, 0, run.batch_size) if fits else None
        return plan.Attempt(run.batch_size, 1.0, memory=memory, oom="" if fits else "RESOURCE_EXHAUSTED")

    monkeypatch.setattr(plan, "compile_step", fake_compile)
    devices = jax.devices()  # 8 emulated CPU devices, data parallel
    run = RunConfig(model=ModelConfig(), batch_size=8)
    best, too_large, compiles, _ = plan.search_largest_batch(run, devices, fake_compile(run, devices), 64)
    assert (best.batch_size, too_large.batch_size) == (40, 48)
    assert compiled == [8, 16, 32, 64, 48, 40] and compiles == 5  # the known attempt is not compiled again
    best, too_large, _, _ = plan.search_largest_batch(run, devices, fake_compile(run, devices), 3)
    assert best.batch_size == 24 and too_large is None  # the cap fits
    for start, steps in ((32, [32, 64, 48, 40]), (64, [64, 32, 48, 40]), (512, [512, 256, 128, 64, 32, 48, 40])):
        compiled.clear()
        known = fake_compile(dataclasses.replace(run, batch_size=start), devices)
        best, too_large, _, _ = plan.search_largest_batch(run, devices, known, 64)  # the cap: 64 per chip
        assert (best.batch_size, too_large.batch_size) == (40, 48) and compiled == steps, (start, compiled)


def test_flops_extrapolated_from_shallow_compiles_equal_the_full_programs():
    """Cost is linear in depth, so one and two layers give three layers' count (CPU devices: fast compiles).
    Fusion choices that do not repeat per layer leave a difference of a few parts per million."""
    cfg = ModelConfig(vocab_size=512, n_ctx=64, n_layer=3, n_head=4, d_model=128)
    run = RunConfig(model=cfg, batch_size=8, seq_len=64)
    devices = jax.devices()
    extrapolated = plan.compiled_flops_per_step(run, devices)
    direct = plan.lower_train_step(run, devices).compile().cost_analysis()["flops"] * len(devices)
    assert extrapolated == pytest.approx(direct, rel=1e-4)
    assert 1.0 < direct / (plan.model.flops_per_token(cfg, 64) * 8 * 64) < 1.2  # + biases, norms, softmax, AdamW


def test_train_dry_run_compiles_for_the_devices_at_hand(tmp_path):
    run_dir = f"run_dir={tmp_path / 'run'}"
    text = _cli("train", "--dry-run", "--preset", "tiny-25k", run_dir, "batch_size=8", "model.n_layer=1")
    assert "per chip: peak" in text and "FLOPs per step: compiled" in text
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
