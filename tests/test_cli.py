"""The `gptjax` command line as users start it: a real subprocess per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

GPTJAX = [sys.executable, "-m", "gptjax.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*GPTJAX, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_help_is_fast_and_lists_commands(tmp_path):
    start = time.perf_counter()
    result = _run("--help", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("train", "eval", "report", "sweep", "generate", "tokenizer", "hf-import", "hf-export"):
        assert command in result.stdout
    assert elapsed < 2.0, f"gptjax --help took {elapsed:.2f}s: something imports JAX/TF eagerly"


def test_train_generate_and_hf_round_trip(tmp_path):
    train = _run(
        "train",
        "--preset",
        "tiny-25k",
        "--run-dir",
        "run",
        "steps=4",
        "batch_size=8",
        "seq_len=32",
        "optim.warmup_steps=1",
        "logging.every=2",
        "held_out.every=4",
        "held_out.batches=1",
        f"data.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert {"tokens_per_s", "mfu", "tflops_per_device", "grad_norm", "learning_rate"} <= set(records[-2])
    assert any("eval_loss" in r for r in records)
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()
    assert list((tmp_path / "run" / "tb").iterdir())

    sample = ["--prompt", "ROMEO:", "--max-new-tokens", "8", "--method", "sample", "--top-k", "5", "--seed", "3"]
    original = _run("generate", "--run-dir", "run", *sample, cwd=tmp_path)
    assert original.returncode == 0, original.stderr
    assert original.stdout.startswith("ROMEO:")

    assert _run("hf-export", "--run-dir", "run", "--out", "hf", cwd=tmp_path).returncode == 0
    imported = _run("hf-import", "hf", "--out", "imported", "--vocab", "byte", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    again = _run("generate", "--run-dir", "imported", *sample, cwd=tmp_path)
    assert again.stdout == original.stdout  # export -> import is exact, so sampling is identical


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--preset", "gpt4"], "unknown preset 'gpt4'"),
        (["train", "model.n_head=3"], "d_model=64 is not divisible by model.n_head=3"),
        (["train", "steps"], "'steps' is not of the form key=value"),
        (["generate", "--run-dir", "missing", "--prompt", "x"], "missing/config.json not found"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_refused_start_does_not_poison_the_run_dir(tmp_path):
    common = [
        "train",
        "--preset",
        "tiny-25k",
        "--run-dir",
        "run",
        "batch_size=8",
        "seq_len=32",
        "logging.every=1",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    refused = _run(*common, "optim.warmup_steps=100", "steps=2", cwd=tmp_path)
    assert refused.returncode == 2 and "optim.warmup_steps=100 must be < the decay length 2" in refused.stderr
    assert not (tmp_path / "run" / "config.json").exists()
    corrected = _run(*common, "optim.warmup_steps=1", "steps=2", cwd=tmp_path)
    assert corrected.returncode == 0, corrected.stderr
    assert (tmp_path / "run" / "DONE").exists()
