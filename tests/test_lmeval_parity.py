"""gptjax's eval against lm-evaluation-harness itself, document by document.

One small random GPT-2 (the real 50257-token BPE) is exported with gptjax.hf and scored twice on the first
LIMIT documents of HellaSwag, PIQA, ARC-Easy and LAMBADA at K=0 and K=2:

- by lm-eval 0.4 (`lm_eval.simple_evaluate`, HF backend, fp32, offline) with task YAMLs that mirror lm-eval's
  own (same templates, splits, delimiters, metrics; bench/eval_cold.py's LM_EVAL_TASKS) but read the shared
  JSONL files;
- by `eval.evaluate` with `GptjaxLM` on the same params and eval's built-in task definitions.

Asserted for every (task, K): the same documents; the same prompts and continuations, character for character,
for every document (so the same few-shot examples: both sides use lm-eval's sampler, seed 1234); every per-
choice log-likelihood within ATOL; identical per-document acc / acc_norm (LAMBADA: greedy acc); identical
aggregate accuracies (LAMBADA perplexity within ATOL, relative). Few-shot examples: HellaSwag, PIQA and ARC-
Easy use eval's default `LmEvalSampler`, so this also checks that it reproduces lm-eval's draws. LAMBADA is
the one deliberate difference (by default eval excludes the scored passage from its own examples; lm-eval
does not), so its gptjax run uses `fewshot_exclusion="lm_eval"`, and the prompt comparison proves that option
reproduces lm-eval's examples on a split that is both scored and sampled.

The model is made non-trivial so the comparisons cannot pass vacuously: weights are large enough that
choices get well-separated log-likelihoods and varied predictions, every LayerNorm and bias is randomised,
the context window (N_CTX) is small enough that K=2 prompts exercise left truncation, and the untied output
head memorises (previous token -> next token) for the continuations of every other LAMBADA passage, so
greedy accuracy is neither all 0 nor all 1.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

import bench_scripts
from requirements import need_data, need_modules

lm_eval, _, _, _ = need_modules("lm_eval", "torch", "transformers", "datasets")

import jax  # noqa: E402

from eval import GptjaxLM, evaluate  # noqa: E402
from eval.requests import encode_request  # noqa: E402
from eval.task import Task  # noqa: E402
from gptjax.config import ModelConfig  # noqa: E402
from gptjax.hf import export_hf  # noqa: E402
from gptjax.model import init_params  # noqa: E402
from gptjax.paths import data_dir  # noqa: E402
from gptjax.tokenizers import get_vocabulary  # noqa: E402

ATOL = 1e-3  # per-choice log-likelihood, absolute; observed <= 4e-4: a few fp32 ulps of sums down to ~-2000
MIN_MARGIN = 1e-3  # no prediction may hinge on a log-likelihood difference smaller than this (min seen: 1.1e-3)
LIMIT = 100  # documents per task: 4 tasks x 2 K = 800 documents compared; the cost is linear in it
SHOTS = (0, 2)
SEED = 1234  # lm-eval's default fewshot_random_seed, eval's DEFAULT_SEED
N_CTX = 144  # > the longest continuation in these documents (a 140-token PIQA solution), which lm-eval
#             refuses to score if it does not fit; small enough that K=2 prompts lose tokens on the left
HF_BATCH_SIZE = 32  # larger is faster on CPU; 64 gains ~10% more but holds ~4 GB of logits
GPTJAX_BATCH_TOKENS = 160  # one or a few rows per batch: ~30% faster on CPU than 4096 (the logits buffers,
#                            rows x length x 50257 fp32, stay small enough for malloc to reuse them)
BENCHMARKS = data_dir() / "benchmarks"
TOKENIZER_DIR = data_dir() / "tokenizers" / "gpt2"

# lm-eval's task YAMLs (lm_eval/tasks/<source>), reading our JSONL instead of the Hub: bench/eval_cold.py's.
eval_cold = bench_scripts.load("eval_cold")
LM_EVAL_MIRRORS = ("hellaswag", "piqa", "arc_easy", "lambada_openai")
CASES = [(task, k) for task in LM_EVAL_MIRRORS for k in SHOTS]

need_data(*(f"benchmarks/{t}" for t in LM_EVAL_MIRRORS), "tokenizers/gpt2/encoder.json")


def _lm_eval_name(task: str, k: int) -> str:
    return f"{task}_parity_k{k}"


def write_lm_eval_yamls(out_dir, cache_dir) -> list[str]:
    """One lm-eval task per (task, K), with num_fewshot fixed in the YAML so one simple_evaluate runs all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for task, k in CASES:
        config = eval_cold.lm_eval_task(task, _lm_eval_name(task, k), cache_dir, num_fewshot=k)
        (out_dir / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        names.append(config["task"])
    return names


def parity_model() -> tuple[dict, ModelConfig]:
    """A random GPT-2-architecture model whose predictions vary (see the module docstring)."""
    cfg = ModelConfig(
        name="lmeval-parity",
        vocab_size=50257,
        n_ctx=N_CTX,
        n_layer=2,
        n_head=4,
        d_model=64,
        tie_embeddings=False,
        init_std=0.1,
        pos_init_std=0.1,
    )
    params = jax.tree.map(np.array, jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)

    def randomise(path, x):  # LayerNorm scales off 1, biases off 0
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1.0 + rng.normal(0.0, 0.1, x.shape)).astype(np.float32)
        if "bias" in name:
            return rng.normal(0.0, 0.1, x.shape).astype(np.float32)
        return x

    params = jax.tree_util.tree_map_with_path(randomise, params)
    params["wte"] = params["wte"] * 3.0
    head = params["lm_head"] * 3.0  # [d_model, vocab]
    vocab = get_vocabulary("gpt2")
    lambada = Task("lambada_openai", BENCHMARKS)
    for doc in lambada.eval_docs()[:LIMIT:2]:
        context, continuation = lambada.instance(0, doc).requests[0]
        ctx, cont = encode_request(vocab, context, continuation)
        whole = ctx + cont
        for j in range(len(ctx), len(whole)):  # logit(next) += 4 * <h, wte[prev] / |wte[prev]|>
            prev = params["wte"][whole[j - 1]]
            head[:, whole[j]] += 4.0 * prev / np.linalg.norm(prev)
    params["lm_head"] = head
    return params, cfg


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    params, cfg = parity_model()
    hf_dir = export_hf(params, cfg, tmp_path_factory.mktemp("parity") / "hf", tokenizer_dir=TOKENIZER_DIR)
    return params, cfg, hf_dir


@pytest.fixture(scope="module")
def lm_eval_results(model, tmp_path_factory):
    """{(task, K): {doc_id: lm-eval's logged sample}} and {(task, K): lm-eval's aggregate metrics}."""
    from lm_eval.tasks import TaskManager

    _, _, hf_dir = model
    root = tmp_path_factory.mktemp("lm_eval")
    names = write_lm_eval_yamls(root / "tasks", root / "datasets")
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=names,
        batch_size=HF_BATCH_SIZE,
        device="cpu",
        limit=LIMIT,
        task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
        fewshot_random_seed=SEED,
    )
    print(f"\nlm-eval (HF backend): {time.perf_counter() - start:.1f}s for {len(names)} task runs")
    samples = {(t, k): {s["doc_id"]: s for s in out["samples"][_lm_eval_name(t, k)]} for t, k in CASES}
    metrics = {(t, k): out["results"][_lm_eval_name(t, k)] for t, k in CASES}
    return samples, metrics


@pytest.fixture(scope="module")
def gptjax_results(model):
    """{(task, K): eval's result dict (with samples)}."""
    params, cfg, _ = model
    lm = GptjaxLM(params, cfg, get_vocabulary("gpt2"), batch_tokens=GPTJAX_BATCH_TOKENS)
    start = time.perf_counter()
    kwargs = dict(shots=SHOTS, limit=LIMIT, seed=SEED, data_dir=BENCHMARKS, bootstrap_iters=10)
    results = evaluate(lm, ["hellaswag", "piqa", "arc_easy"], **kwargs)["results"]
    results += evaluate(lm, ["lambada_openai"], fewshot_exclusion="lm_eval", **kwargs)["results"]
    print(
        f"\ngptjax eval: {time.perf_counter() - start:.1f}s, scorer {lm.scorer.stats.unique} requests in "
        f"{lm.scorer.stats.batches} batches"
    )
    return {(r["task"], r["num_fewshot"]): r for r in results}


def check_not_vacuous(gptjax_results) -> list[str]:
    """Predictions vary, accuracies are neither 0 nor 1, the examples change the scores, and no decision is
    a near-tie that float rounding could flip: the smallest margin of an acc or acc_norm decision, in
    log-likelihood units (acc_norm compares ll / len(choice), so its margin is scaled by the shorter length),
    must exceed MIN_MARGIN. Returns one summary line per (task, K)."""
    lines = []
    for (task, k), result in gptjax_results.items():
        samples = result["samples"]
        assert len(samples) == LIMIT
        if task == "lambada_openai":
            greedy = sum(s["acc"] for s in samples)
            assert 0 < greedy < LIMIT / 2, (task, k, greedy)
            lines.append(f"{task} K={k}: greedy-correct {greedy:.0f}/{LIMIT}")
            continue
        spec = Task(task, BENCHMARKS)
        docs = spec.eval_docs()
        margins = []
        for s in samples:
            lls = np.array(s["loglikelihoods"])
            lengths = np.array([len(c) for c in spec.doc_to_choice(docs[s["doc_id"]])], float)
            for scores, scale in ((lls, np.ones_like(lengths)), (lls / lengths, lengths)):
                best, second = np.argsort(scores)[::-1][:2]
                margins.append((scores[best] - scores[second]) * min(scale[best], scale[second]))
        lines.append(f"{task} K={k}: smallest acc/acc_norm decision margin {min(margins):.2e}")
        assert min(margins) > MIN_MARGIN, (task, k, min(margins))
        for pred in ("pred", "pred_norm"):
            assert len({s[pred] for s in samples}) > 1, (task, k, pred)
        for metric in ("acc", "acc_norm"):
            assert 0.1 < result["metrics"][metric] < 0.9, (task, k, result["metrics"])
    for task in LM_EVAL_MIRRORS:  # the examples change the scores: K=2 is not K=0 again
        zero, two = (gptjax_results[task, k]["samples"] for k in SHOTS)
        key = "loglikelihood" if task == "lambada_openai" else "loglikelihoods"
        changes = np.abs(np.hstack([a[key] for a in zero]) - np.hstack([b[key] for b in two]))
        assert np.mean(changes) > 0.1, (task, np.mean(changes))
    return lines


def check_matches_lm_eval(task: str, k: int, theirs: dict, their_metrics: dict, ours: dict) -> str:
    """Everything lm-eval logged for (task, K) against eval's result; returns a summary line."""
    assert sorted(theirs) == list(range(LIMIT))
    assert [s["doc_id"] for s in ours["samples"]] == list(range(LIMIT))
    spec = Task(task, BENCHMARKS)
    docs = spec.eval_docs()[:LIMIT]
    if k:
        assert (
            ours["fewshot_split"]
            == {"hellaswag": "validation", "piqa": "train", "arc_easy": "train", "lambada_openai": "test"}[task]
        )

    diffs = []
    for doc_id, doc in enumerate(docs):
        their, our = theirs[doc_id], ours["samples"][doc_id]
        assert their["doc"] == doc, (task, k, doc_id)
        assert len(our["fewshot_ids"]) == k
        # Identical prompts and continuations, hence identical few-shot examples in the same order.
        requests = spec.instance(doc_id, doc, our["fewshot_ids"]).requests
        assert [tuple(a) for a in their["arguments"]] == requests, (task, k, doc_id)
        their_lls = [resp[0][0] for resp in their["resps"]]  # one [(logprob, is_greedy)] per request
        our_lls = [our["loglikelihood"]] if task == "lambada_openai" else our["loglikelihoods"]
        diffs += [abs(a - b) for a, b in zip(their_lls, our_lls, strict=True)]
        if task == "lambada_openai":
            assert bool(their["acc"]) == our["is_greedy"] == bool(our["acc"]), (task, k, doc_id)
        else:
            assert (their["acc"], their["acc_norm"]) == (our["acc"], our["acc_norm"]), (task, k, doc_id)
    assert max(diffs) < ATOL, (task, k, max(diffs))
    assert ours["metrics"]["acc"] == pytest.approx(their_metrics["acc,none"], abs=1e-12)
    if task == "lambada_openai":
        assert ours["metrics"]["perplexity"] == pytest.approx(their_metrics["perplexity,none"], rel=ATOL)
    else:
        assert ours["metrics"]["acc_norm"] == pytest.approx(their_metrics["acc_norm,none"], abs=1e-12)
    return (
        f"{task} K={k}: {LIMIT} docs, {len(diffs)} log-likelihoods, max |ll(gptjax) - ll(lm-eval)| = "
        f"{max(diffs):.2e}, acc {ours['metrics']['acc']:.3f}"
        + (f", acc_norm {ours['metrics']['acc_norm']:.3f}" if task != "lambada_openai" else "")
    )


# One test function, not one per (task, K): under `pytest -n 2` (CI) tests of a module can land on both
# workers, and each would recompute the module fixtures, i.e. run both evaluations twice.
def test_gptjax_eval_matches_lm_eval(lm_eval_results, gptjax_results):
    lines = check_not_vacuous(gptjax_results)
    failures = []
    for task, k in CASES:
        try:
            lines.append(
                check_matches_lm_eval(
                    task, k, lm_eval_results[0][task, k], lm_eval_results[1][task, k], gptjax_results[task, k]
                )
            )
        except AssertionError as err:
            failures.append(f"{task} K={k}: {err}")
    print("\n" + "\n".join(lines))
    assert not failures, "\n".join(failures)
