"""eval.runner: evaluate() end to end on a tiny random gptjax model, and each output type on a fake model."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import pytest
from jax.sharding import AxisType

from eval.gptjax_lm import GptjaxLM
from eval.lm import ModelInfo
from eval.registry import TaskError
from eval.requests import GenerationRequest, LoglikelihoodResult
from eval.runner import evaluate, write_results
from eval.task import Task
from gptjax.config import ModelConfig
from gptjax.model import init_params
from gptjax.tokenizers import get_vocabulary


class FakeLM:
    """A LanguageModel with deterministic, easily predicted answers; records what it was asked."""

    info = ModelInfo("fake", params=10, non_embedding_params=5)
    tokenizer_name = "fake-tokenizer"
    max_length = 2048

    def __init__(self, generations: Sequence[str] = ()) -> None:
        self.generations = list(generations)
        self.requests: list[tuple[str, str]] = []

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LoglikelihoodResult]:
        self.requests += requests
        return [LoglikelihoodResult(-float(len(cont)), len(cont) < 8) for _, cont in requests]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        return [-float(len(t)) for t in texts]

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [self.generations[i % len(self.generations)] for i in range(len(requests))]


SCHEMA = {
    "task": str,
    "split": str,
    "num_fewshot": int,
    "fewshot_split": str,
    "seed": int,
    "num_docs": int,
    "metrics": dict,
    "example_prompt": str,
}


def test_evaluate_tiny_gptjax_model_on_piqa(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=257, n_ctx=128, n_layer=2, n_head=2, d_model=32)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    lm = GptjaxLM(
        init_params(cfg, jax.random.key(0)),
        cfg,
        get_vocabulary("byte"),
        name="tiny-random",
        mesh=mesh,
        batch_tokens=1024,
    )
    results = evaluate(lm, ["piqa"], shots=[0, 2], limit=20)
    path = write_results(tmp_path / "results.json", results)

    written = json.loads(path.read_text())
    assert written["model"] == {
        "name": "tiny-random",
        "params": lm.info.params,
        "non_embedding_params": lm.info.non_embedding_params,
        "checkpoint": None,
        "step": None,
    }
    assert written["tokenizer"] == "byte" and written["gptjax_version"] == "0.1.0"
    assert written["created"].endswith("+00:00")
    assert [(r["task"], r["num_fewshot"]) for r in written["results"]] == [("piqa", 0), ("piqa", 2)]
    for result in written["results"]:
        for key, kind in SCHEMA.items():
            assert isinstance(result[key], kind), key
        assert result["split"] == "validation" and result["num_docs"] == 20 and result["seed"] == 1234
        assert set(result["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        samples = result["samples"]
        assert len(samples) == 20 and all(len(s["loglikelihoods"]) == 2 for s in samples)
        assert result["metrics"]["acc"] == pytest.approx(sum(s["acc"] for s in samples) / 20)
        assert 0 < result["metrics"]["acc_stderr"] < 0.2
    zero, two = written["results"]
    assert zero["fewshot_split"] == "" and two["fewshot_split"] == "train" and not two["fewshot_fallback"]
    assert zero["example_prompt"].startswith("Question: How do I ready a guinea pig cage")
    assert two["example_prompt"].count("Question: ") == 3 and two["truncated_requests"] > 0
    assert all(len(s["fewshot_ids"]) == 2 for s in two["samples"])
    # Per-choice scores are the model's log-likelihoods of exactly the task's requests.
    task = Task("piqa")
    doc = task.eval_docs()[3]
    requests = task.instance(3, doc, two["samples"][3]["fewshot_ids"]).requests
    assert [r.logprob for r in lm.loglikelihood(requests)] == pytest.approx(
        two["samples"][3]["loglikelihoods"], abs=1e-5
    )
    from eval.report import load_results  # the report generator reads what evaluate writes

    assert [r.num_fewshot for r in load_results(path).results] == [0, 2]


def test_multiple_choice_with_calibration_and_fallback_split() -> None:
    lm = FakeLM()
    results = evaluate(lm, ["arc_easy", "hellaswag"], shots=[1], limit=5)["results"]
    arc, hellaswag = results
    assert set(arc["metrics"]) == {f"{m}{s}" for m in ("acc", "acc_norm", "acc_calibrated") for s in ("", "_stderr")}
    assert all(len(s["calibration_loglikelihoods"]) == len(s["loglikelihoods"]) for s in arc["samples"])
    assert ("Answer:", " Sunlight is the source of energy for nearly all ecosystems.") in lm.requests
    assert hellaswag["fewshot_split"] == "validation" and hellaswag["fewshot_fallback"]
    assert all(s["fewshot_ids"] != [s["doc_id"]] for s in hellaswag["samples"])  # never the scored doc


def test_loglikelihood_task_acc_and_perplexity() -> None:
    result = evaluate(FakeLM(), ["lambada_openai"], limit=4, bootstrap_iters=100)["results"][0]
    targets = [s["target"] for s in result["samples"]]
    assert targets[0] == " signs"
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(sum(len(t) for t in targets) / 4))
    assert result["metrics"]["acc"] == sum(len(t) < 8 for t in targets) / 4
    assert result["metrics"]["perplexity_stderr"] > 0


def test_generation_exact_match_and_f1() -> None:
    lm = FakeLM(generations=[" Onion", "the antelopes ", "no idea"])
    result = evaluate(lm, ["triviaqa"], limit=3)["results"][0]
    assert [s["prediction"] for s in result["samples"]] == ["Onion", "the antelopes", "no idea"]
    assert [s["exact_match"] for s in result["samples"]] == [1.0, 0.0, 0.0]
    assert [s["f1"] for s in result["samples"]] == [1.0, 1.0, 0.0]  # F1 drops the article
    assert result["metrics"]["exact_match"] == pytest.approx(1 / 3)


def test_rolling_perplexity_counts_words_and_bytes_of_the_original_document(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("one two @-@ three\nfour\n")
    spec = tmp_path / "tiny_corpus.yaml"
    spec.write_text(
        "task: tiny_corpus\noutput_type: loglikelihood_rolling\ncorpus: corpus.txt\n"
        "detokenizer: wikitext\nmetrics: [word_perplexity, byte_perplexity, bits_per_byte]\n"
    )
    result = evaluate(FakeLM(), [spec], shots=[0, 3], corpus_dir=tmp_path)["results"]
    assert len(result) == 1 and result[0]["num_fewshot"] == 0  # corpora are scored once, without examples
    metrics = result[0]["metrics"]
    ll = -len("one two-three\nfour\n")  # the model saw the detokenised text
    assert metrics["word_perplexity"] == pytest.approx(math.exp(-ll / 6))  # 5 words + the trailing empty piece
    assert metrics["bits_per_byte"] == pytest.approx(-ll / 23 / math.log(2))
    assert metrics["word_perplexity_stderr"] is None  # one document: no bootstrap


def test_seed_and_pluggable_sampler() -> None:
    def ids(**kwargs: object) -> list[list[int]]:
        result = evaluate(FakeLM(), ["piqa"], shots=[2], limit=4, **kwargs)["results"][0]
        return [s["fewshot_ids"] for s in result["samples"]]

    assert ids(seed=1) == ids(seed=1) != ids(seed=2)

    class Fixed:
        def __init__(self, docs: object, seed: int) -> None:
            pass

        def sample(self, n: int, eval_doc: object) -> list[int]:
            return [7, 9][:n]

    assert ids(sampler_factory=Fixed) == [[7, 9]] * 4


def test_unknown_task_fails_before_any_model_call() -> None:
    lm = FakeLM()
    with pytest.raises(TaskError, match="unknown task 'nope'; valid tasks: "):
        evaluate(lm, ["piqa", "nope"])
    assert lm.requests == []


def test_write_results_without_samples(tmp_path: Path) -> None:
    results = evaluate(FakeLM(), ["copa"], limit=3)
    written = json.loads(write_results(tmp_path / "r.json", results, include_samples=False).read_text())
    assert "samples" not in written["results"][0] and "samples" in results["results"][0]
