"""`gptjax eval`: a Hugging Face directory is scored with its own tokenizer (recorded in the results), a
detectable tokenizer mismatch is refused, and argument errors exit 2 before any model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from eval import gptjax_lm
from gptjax.cli import main
from gptjax.config import ModelConfig
from gptjax.hf import export_hf
from gptjax.model import init_params
from gptjax.plain_tokenizers import EOT, GPT2BPETokenizer, bytes_to_unicode, get_tokenizer

MERGES = [("Ġ", "t"), ("h", "e")]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 exported with a byte-level BPE of its own (259 tokens: bytes, two merges, EOT)."""
    root = tmp_path_factory.mktemp("own_tokenizer")
    tokens = [bytes_to_unicode()[b] for b in range(256)] + ["".join(m) for m in MERGES] + [EOT]
    (root / "bpe").mkdir()
    (root / "bpe" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / "bpe" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    cfg = ModelConfig(vocab_size=len(tokens), n_ctx=64, n_layer=1, n_head=2, d_model=16)
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(0)))
    return export_hf(params, cfg, root / "hf", tokenizer_dir=root / "bpe")


def write_task(root: Path, name: str, split: str, rows: list[dict], definition: str) -> Path:
    """A task YAML `root/name.yaml` over `rows`, its one split `split`, with the rest of its `definition`."""
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / f"{name}.yaml"
    path.write_text(f"task: {name}\ndata_files: {{{split}: {split}.jsonl}}\n{definition}metrics: [acc]\n")
    return path


@pytest.fixture(scope="module")
def task_yaml(tmp_path_factory) -> Path:
    rows = [{"q": f"Is {i} even", "options": ["yes", "no"], "answer": i % 2} for i in range(4)]
    definition = (
        "output_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: '{{q}}?'\n"
        "doc_to_choice: '{{options}}'\ndoc_to_target: '{{answer}}'\n"
    )
    return write_task(tmp_path_factory.mktemp("task"), "parity", "validation", rows, definition)


def _eval(*args: str | Path) -> int:
    return main(["eval", *map(str, args), "--compilation-cache", "off"])


def test_hf_dir_tokenizer_is_used_recorded_and_checked(hf_dir, task_yaml, tmp_path, capsys) -> None:
    own = GPT2BPETokenizer.from_files(hf_dir / "vocab.json", hf_dir / "merges.txt")
    assert own.name != get_tokenizer("gpt2").name  # the default --tokenizer differs from the directory's
    assert _eval("--hf", hf_dir, "--tasks", task_yaml, "--out", tmp_path / "r.json") == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["tokenizer"] == own.name and "vocab.json" in results["tokenizer_source"]
    assert results["results"][0]["num_docs"] == 4
    out = capsys.readouterr().out
    assert f"tokenizer: {hf_dir / 'vocab.json'}" in out and "time: start-up" in out and "evaluation" in out

    # An explicit, different --tokenizer is refused before the weights are read (exit 2, one line).
    assert _eval("--hf", hf_dir, "--tasks", task_yaml, "--out", tmp_path / "x.json", "--tokenizer", "gpt2") == 2
    assert f"{hf_dir} holds its own tokenizer {own.name}" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_fewshot_exclusion_option_reaches_the_examples(hf_dir, tmp_path) -> None:
    """On a task whose only split is scored and sampled (LAMBADA's case), gptjax's default never shows a
    document itself; `--fewshot-exclusion lm_eval` applies lm-eval's rule, which here does not exclude it."""
    rows = [{"text": f"Passage {i} ends with word{i}"} for i in range(5)]
    definition = (
        "output_type: loglikelihood\ntest_split: test\ndoc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
        "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
    )
    task = write_task(tmp_path, "last_word", "test", rows, definition)
    own_examples = {}
    for rule in ("scored_split", "lm_eval"):
        out = tmp_path / f"{rule}.json"
        assert _eval("--hf", hf_dir, "--tasks", task, "--shots", "3", "--out", out, "--fewshot-exclusion", rule) == 0
        (result,) = json.loads(out.read_text())["results"]
        assert result["fewshot_exclusion"] == rule
        own_examples[rule] = sum(s["doc_id"] in s["fewshot_ids"] for s in result["samples"])
    assert own_examples["scored_split"] == 0 and own_examples["lm_eval"] > 0


def test_tokenizer_size_and_eos_mismatches_fail_before_the_weights(hf_dir, task_yaml, tmp_path, monkeypatch, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(gptjax_lm, "import_hf", lambda *_: pytest.fail("the weights were read"))
    # No tokenizer files: the default gpt2 has 50257 ids, the model 259.
    assert _eval("--hf", bare, "--tasks", task_yaml, "--out", tmp_path / "r.json") == 2
    assert "vocab_size=259 but tokenizer 'gpt2-bpe-" in capsys.readouterr().err
    for name in ("vocab.json", "merges.txt"):
        (bare / name).symlink_to(hf_dir / name)
    (bare / "config.json").write_text(json.dumps(config | {"eos_token_id": 7}))
    assert _eval("--hf", bare, "--tasks", task_yaml, "--out", tmp_path / "r.json") == 2
    assert "eos_token_id is 7 but tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--hf", "MISSING", "--tasks", "piqa"], "--out is required with --hf"),
        (["--hf", "MISSING", "--out", "o.json", "--tasks", "piqa", "--step", "3"], "--step applies to --checkpoint"),
        (["--checkpoint", "MISSING", "--tasks", "piqa", "--tokenizer", "gpt2"], "--tokenizer applies to --hf only"),
        (["--hf", "MISSING", "--out", "o.json", "--tasks", "piqa", "--tokenizer", "gpt3"], "unknown tokenizer spec"),
        (["--hf", "MISSING", "--out", "o.json", "--tasks", "piqa", "--shots", "0,-1"], "--shots must list K"),
        (["--hf", "MISSING", "--out", "o.json", "--tasks", "piqa", "--limit", "0"], "--limit must be a positive"),
        (["--hf", "MISSING", "--out", "o.json", "--tasks", "piqa", "--fewshot-exclusion", "x"], "invalid choice"),
    ],
)
def test_argument_errors_exit_2_before_any_model_load(args, message, tmp_path, monkeypatch, capsys) -> None:
    for loader in ("from_hf", "from_run"):
        monkeypatch.setattr(gptjax_lm.GptjaxLM, loader, lambda *_, **__: pytest.fail("a model was loaded"))
    args = [str(tmp_path / a) if a in ("MISSING", "o.json") else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _eval(*args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_task_and_data_errors_exit_2_before_any_model_load(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(gptjax_lm.GptjaxLM, "from_hf", lambda *_, **__: pytest.fail("a model was loaded"))
    hf = ["--hf", str(tmp_path / "missing"), "--out", str(tmp_path / "o.json")]
    assert _eval(*hf, "--tasks", "piqa,nope") == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert _eval(*hf, "--tasks", "piqa", "--data-dir", tmp_path) == 2
    assert f"{tmp_path / 'piqa' / 'validation.jsonl'} does not exist" in capsys.readouterr().err


CACHED_PROGRAM = """
import sys
import jax, jax.numpy as jnp, numpy as np
from eval.phases import PhaseTimer, enable_compilation_cache
enable_compilation_cache(sys.argv[1])
with PhaseTimer() as timer:
    jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x) @ x.T)(np.ones((64, 64), np.float32)))
print(timer.programs, timer.cache_hits)
"""


def test_compilation_cache_is_shared_by_processes(tmp_path) -> None:
    """Two processes compiling at once into an empty cache both work (JAX locks the bounded cache; the one
    that finishes second may already find the program); a third process then loads it instead of compiling."""
    command = [sys.executable, "-c", CACHED_PROGRAM, str(tmp_path / "cache")]
    first = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate()[0].split() for p in first]
    assert all(p.returncode == 0 for p in first) and ["1", "0"] in outputs and all(o[0] == "1" for o in outputs)
    assert subprocess.run(command, capture_output=True, text=True, check=True).stdout.split() == ["1", "1"]
