"""eval.lm_eval_adapter: lm-eval running on a gptjax checkpoint equals lm-eval running on its HF export.

A small random GPT-2 (the real 50257-token BPE) is saved as a gptjax run directory and exported with
gptjax.hf; lm-eval then runs the same local tasks twice, with `model="gptjax", model_args="run_dir=..."`
(registry lookup, argument parsing, `from_run`) and with `model="hf"` on the export. The tasks cover all three
request types: multiple choice with a few-shot example, a last-word log-likelihood, rolling perplexity
(documents longer than the 64-token window) and greedy generation with stop strings. Every per-request
log-likelihood must agree within ATOL (plus a few fp32 ulps of its value: a rolling document's log-likelihood
is ~-1000), every greedy flag and every generation exactly, and so every aggregate.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from requirements import need_data, need_modules

lm_eval, _, _, _ = need_modules("lm_eval", "torch", "transformers", "datasets")

import jax  # noqa: E402

from eval.decoding import GenerationError  # noqa: E402
from eval.gptjax_lm import GptjaxLM  # noqa: E402
from eval.lm_eval_adapter import GptjaxLMEval  # noqa: E402
from gptjax.config import (  # noqa: E402
    DataConfig,
    ModelConfig,  # noqa: E402
    RunConfig,
)
from gptjax.hf import export_hf  # noqa: E402
from gptjax.model import init_params  # noqa: E402
from gptjax.paths import data_dir  # noqa: E402
from gptjax.tokenizers import get_vocabulary  # noqa: E402
from gptjax.train import write_initial_checkpoint  # noqa: E402

ATOL = 1e-4
ULPS = 8  # plus this many fp32 ulps of the value: a rolling document's window sums reach ~700, where an fp32
#           ulp is 6e-5, and torch and XLA sum in different orders


def tolerance(ll: float) -> float:
    return ATOL + ULPS * float(np.spacing(np.float32(abs(ll))))


BENCHMARKS = data_dir() / "benchmarks"
TOKENIZER_DIR = data_dir() / "tokenizers" / "gpt2"

_MEAN = {"aggregation": "mean", "higher_is_better": True}
LIMIT = 12  # documents per task
# name -> (data dir, lm-eval task config without dataset keys)
TASKS = {
    "piqa_adapter": (
        "piqa",
        {  # lm_eval/tasks/piqa/piqa.yaml, with one example
            "training_split": "train",
            "validation_split": "validation",
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{goal}}\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": "{{[sol1, sol2]}}",
            "num_fewshot": 1,
            "metric_list": [{"metric": "acc", **_MEAN}, {"metric": "acc_norm", **_MEAN}],
        },
    ),
    "lambada_adapter": (
        "lambada_openai",
        {  # lm_eval/tasks/lambada/lambada_openai.yaml
            "test_split": "test",
            "output_type": "loglikelihood",
            "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
            "doc_to_target": "{{' '+text.split(' ')[-1]}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", **_MEAN},
            ],
        },
    ),
    "lambada_rolling_adapter": (
        "lambada_openai",
        {  # the passages as wikitext-style rolling perplexity
            "test_split": "test",
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
        },
    ),
    "triviaqa_adapter": (
        "triviaqa",
        {  # lm_eval/tasks/triviaqa/default.yaml, 8 new tokens at most
            "validation_split": "validation",
            "output_type": "generate_until",
            "doc_to_text": "Question: {{question}}?\nAnswer:",
            "doc_to_target": "{{aliases}}",
            "generation_kwargs": {"until": ["\n", ".", ","], "do_sample": False, "temperature": 0.0, "max_gen_toks": 8},
            "metric_list": [{"metric": "exact_match", **_MEAN, "ignore_case": True, "ignore_punctuation": True}],
        },
    ),
}

need_data(*(f"benchmarks/{d}" for d, _ in TASKS.values()), "tokenizers/gpt2/encoder.json")


def _write_tasks(out_dir, cache_dir):
    out_dir.mkdir(parents=True)
    for name, (data, body) in TASKS.items():
        splits = [body[k] for k in ("training_split", "validation_split", "test_split") if k in body]
        files = {s: str(BENCHMARKS / data / f"{s}.jsonl") for s in splits}
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": files, "cache_dir": str(cache_dir)},
            **body,
        }
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """lm-eval's samples per task for model="gptjax" (a run dir) and model="hf" (its export)."""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("adapter")
    cfg = ModelConfig(name="adapter", vocab_size=50257, n_ctx=64, n_layer=2, n_head=4, d_model=32, init_std=0.05)
    params = jax.tree.map(np.asarray, jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(1)))
    write_initial_checkpoint(RunConfig(model=cfg, data=DataConfig(vocab="gpt2"), run_dir=str(root / "run")), params)
    hf_dir = export_hf(params, cfg, root / "hf", tokenizer_dir=TOKENIZER_DIR)
    _write_tasks(root / "tasks", root / "datasets")
    manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    out = {}
    for backend, args in (
        ("gptjax", f"run_dir={root / 'run'},batch_tokens=128"),
        ("hf", f"pretrained={hf_dir},dtype=float32"),
    ):
        out[backend] = lm_eval.simple_evaluate(
            model=backend,
            model_args=args,
            tasks=list(TASKS),
            limit=LIMIT,
            batch_size=4,
            device="cpu",
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,
        )
    return out


def check_same_samples(task: str, ours: dict, theirs: dict) -> str:
    our_samples = {s["doc_id"]: s for s in ours["samples"][task]}
    their_samples = {s["doc_id"]: s for s in theirs["samples"][task]}
    assert sorted(our_samples) == sorted(their_samples) == list(range(LIMIT))
    diffs, excess = [], []
    for doc_id, their in their_samples.items():
        our = our_samples[doc_id]
        assert our["arguments"] == their["arguments"]
        for our_resp, their_resp in zip(our["resps"], their["resps"], strict=True):
            (a,), (b,) = our_resp, their_resp
            if isinstance(b, str):  # generation
                assert a == b, (task, doc_id)
            elif isinstance(b, tuple):  # (loglikelihood, is_greedy)
                assert a[1] == b[1], (task, doc_id)
                diffs.append(abs(a[0] - b[0]))
                excess.append(diffs[-1] / tolerance(b[0]))
            else:  # rolling loglikelihood
                diffs.append(abs(a - b))
                excess.append(diffs[-1] / tolerance(b))
    assert not diffs or max(excess) <= 1.0, (task, max(diffs), max(excess))
    for metric, value in theirs["results"][task].items():
        if isinstance(value, float) and "stderr" not in metric:
            assert ours["results"][task][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), (task, metric)
    if not diffs:
        return f"{task}: {LIMIT} identical generations"
    return (
        f"{task}: max |ll(gptjax) - ll(hf)| = {max(diffs):.2e} over {len(diffs)} requests "
        f"({max(excess):.2f} of the tolerance)"
    )


# One test over all tasks: under `pytest -n 2` separate tests could recompute the fixture on both workers.
def test_same_samples_as_hf_backend(runs):
    lines = [check_same_samples(task, runs["gptjax"], runs["hf"]) for task in TASKS]
    print("\n" + "\n".join(lines))
    generations = [s["resps"][0][0] for s in runs["gptjax"]["samples"]["triviaqa_adapter"]]
    assert len(set(generations)) > 1 and any(generations), generations  # not all empty or all the same


def test_model_info_and_construction_errors(tmp_path):
    cfg = ModelConfig(name="tiny", vocab_size=50257, n_ctx=32, n_layer=1, n_head=2, d_model=16)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    model = GptjaxLMEval(GptjaxLM(params, cfg, get_vocabulary("gpt2")))
    assert model.max_length == 32 and model.get_model_info()["model_name"] == "tiny"
    assert lm_eval.api.registry.get_model("gptjax") is GptjaxLMEval
    with pytest.raises(ValueError, match="exactly one of"):
        GptjaxLMEval()
    with pytest.raises(ValueError, match="exactly one of"):
        GptjaxLMEval(model.lm, run_dir=tmp_path)
    with pytest.raises(GenerationError, match="temperature=0.0 must be > 0"):
        model.generate_until([SimpleNamespace(args=("Q:", {"do_sample": True, "temperature": 0.0}))])
    with pytest.raises(GenerationError, match="unknown generation_kwargs .'repetition_penalty'."):
        model.generate_until([SimpleNamespace(args=("Q:", {"do_sample": True, "repetition_penalty": 1.2}))])


def test_sampling_requests_are_seeded_draws_and_top_k_1_is_greedy():
    """lm-eval's sampling kwargs decode as a task YAML's do: the same requests give the same draws, lm-eval's
    repeats (equal requests) are separate draws, another seed others, and top-k 1 is the greedy path."""
    cfg = ModelConfig(name="tiny", vocab_size=50257, n_ctx=32, n_layer=1, n_head=2, d_model=16)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(1))
    model = GptjaxLMEval(GptjaxLM(params, cfg, get_vocabulary("gpt2"), generate_batch_size=4))

    def generate(**kwargs):
        request = SimpleNamespace(args=("The answer is", {"max_gen_toks": 6, "until": ["\n\n"], **kwargs}))
        return model.generate_until([request] * 4)

    sampled = generate(do_sample=True, temperature=1.0)
    assert sampled == generate(do_sample=True, temperature=1.0) and len(set(sampled)) > 1
    assert generate(do_sample=True, temperature=1.0, seed=7) != sampled
    assert generate(do_sample=True, top_k=1) == generate(do_sample=False) == [generate(do_sample=False)[0]] * 4
