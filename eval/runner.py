"""`evaluate`: tasks x shot counts on one LanguageModel -> a results dict; `write_results` saves it as JSON.

Each (task, K) run draws its few-shot examples with a fresh sampler seeded with `seed`, like one lm-eval run
per K, and sends all of its requests to the model at once so the model can batch and deduplicate them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval import metrics as M
from eval.fewshot import DEFAULT_SEED, LmEvalSampler, SamplerFactory
from eval.lm import LanguageModel
from eval.registry import TaskSpec, get_spec
from eval.task import Instance, Task
from gptjax.rundir import PathLike, write_json

EXAMPLE_PROMPT_CHARS = 4000  # a rolling-perplexity document is shown up to this length


def evaluate(
    lm: LanguageModel,
    tasks: Sequence[str | Path | TaskSpec],
    shots: Sequence[int] = (0,),
    *,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    data_dir: str | Path | None = None,
    corpus_dir: str | Path | None = None,
    bootstrap_iters: int = 1000,
    sampler_factory: SamplerFactory = LmEvalSampler,
    descriptions: Mapping[str, str] | None = None,
    log_samples: bool = True,
) -> dict[str, Any]:
    """Evaluate `lm` on every task at every K in `shots`.

    `tasks` are built-in names, task YAML paths or TaskSpecs; `limit` keeps the first documents of each
    task; `data_dir` is the benchmark directory (default: data_dir()/"benchmarks") and `corpus_dir` the
    corpus directory (default: data_dir()/"corpora"); `descriptions` maps task names to a description that
    replaces the task's own. Rolling-perplexity tasks run once, at K=0. With `log_samples`, every result
    carries its per-document `samples`.
    """
    if any(k < 0 for k in shots):
        raise ValueError(f"shot counts must be >= 0, got {list(shots)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents, got {limit}")
    descriptions = descriptions or {}
    specs = [get_spec(t) for t in tasks]  # every name is checked before any model call
    loaded = [Task(s, data_dir, corpus_dir, descriptions.get(s.task)) for s in specs]
    results = []
    for task in loaded:
        docs = task.eval_docs()[:limit]
        rolling = task.spec.output_type == "loglikelihood_rolling"
        for k in [0] if rolling else list(dict.fromkeys(shots)):
            results.append(_evaluate_task(lm, task, docs, k, seed, bootstrap_iters, sampler_factory, log_samples))
    info = lm.info
    return {
        "model": {
            "name": info.name,
            "params": info.params,
            "non_embedding_params": info.non_embedding_params,
            "checkpoint": info.checkpoint,
            "step": info.step,
        },
        "tokenizer": lm.tokenizer_name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gptjax_version": importlib.metadata.version("gptjax"),
        "max_length": lm.max_length,
        "results": results,
    }


def _evaluate_task(
    lm: LanguageModel,
    task: Task,
    docs: list[dict[str, Any]],
    k: int,
    seed: int,
    bootstrap_iters: int,
    sampler_factory: SamplerFactory,
    log_samples: bool,
) -> dict[str, Any]:
    sampler = sampler_factory(task.fewshot_docs(), seed) if k > 0 else None
    instances = []
    for doc_id, doc in enumerate(docs):
        fewshot_ids = sampler.sample(k, doc if task.excludes_eval_doc else None) if sampler else []
        instances.append(task.instance(doc_id, doc, fewshot_ids))
    run = {
        "multiple_choice": _multiple_choice,
        "loglikelihood": _loglikelihood,
        "generate_until": _generation,
        "loglikelihood_rolling": _rolling,
    }[task.spec.output_type]
    samples, truncated = run(lm, task, instances)
    values: dict[str, float | None] = {}
    for metric in task.spec.metrics:
        values[metric], values[f"{metric}_stderr"] = M.aggregate(metric, [s[metric] for s in samples], bootstrap_iters)
    result = {
        "task": task.name,
        "split": task.eval_split,
        "num_fewshot": k,
        "fewshot_split": task.fewshot_split if k > 0 else "",
        "fewshot_fallback": k > 0 and task.fewshot_fallback,
        "seed": seed,
        "num_docs": len(docs),
        "metrics": values,
        "example_prompt": _example_prompt(task, instances[0]),
        "output_type": task.spec.output_type,
        "truncated_requests": truncated,
        "task_source": task.spec.source or task.spec.path,
    }
    if log_samples:
        result["samples"] = samples
    return result


def _example_prompt(task: Task, instance: Instance) -> str:
    """What the model sees for the first document, with its correct answer where there is one."""
    if instance.text is not None:
        return instance.text[:EXAMPLE_PROMPT_CHARS]
    if instance.generation is not None:
        return instance.generation.context
    if task.spec.output_type == "multiple_choice":
        return "".join(instance.requests[task.gold_index(instance.doc)])
    return "".join(instance.requests[0])


def _multiple_choice(lm: LanguageModel, task: Task, instances: list[Instance]) -> tuple[list[dict], int]:
    flat = [r for inst in instances for r in inst.requests + inst.calibration]
    outputs = iter(lm.loglikelihood(flat))
    samples, truncated = [], 0
    for inst in instances:
        scored = [next(outputs) for _ in inst.requests]
        calibration = [next(outputs).logprob for _ in inst.calibration] or None
        truncated += sum(r.truncated for r in scored)
        gold = task.gold_index(inst.doc)
        lls = [r.logprob for r in scored]
        sample = {
            "doc_id": inst.doc_id,
            "fewshot_ids": inst.fewshot_ids,
            "gold": gold,
            "loglikelihoods": lls,
            "is_greedy": [r.is_greedy for r in scored],
        }
        if calibration is not None:
            sample["calibration_loglikelihoods"] = calibration
        samples.append(sample | M.multiple_choice(lls, task.doc_to_choice(inst.doc), gold, calibration))
    return samples, truncated


def _loglikelihood(lm: LanguageModel, task: Task, instances: list[Instance]) -> tuple[list[dict], int]:
    outputs = lm.loglikelihood([inst.requests[0] for inst in instances])
    samples = [
        {
            "doc_id": inst.doc_id,
            "fewshot_ids": inst.fewshot_ids,
            "target": inst.requests[0][1],
            "loglikelihood": r.logprob,
            "is_greedy": r.is_greedy,
            "acc": float(r.is_greedy),
            "perplexity": r.logprob,
        }
        for inst, r in zip(instances, outputs)
    ]
    return samples, sum(r.truncated for r in outputs)


def _generation(lm: LanguageModel, task: Task, instances: list[Instance]) -> tuple[list[dict], int]:
    predictions = lm.generate_until([inst.generation for inst in instances])
    samples = []
    for inst, raw in zip(instances, predictions):
        target = task.doc_to_target(inst.doc)
        references = [str(t) for t in target] if isinstance(target, list) else [str(target)]
        prediction = raw.strip() if task.spec.strip_prediction else raw
        samples.append(
            {
                "doc_id": inst.doc_id,
                "fewshot_ids": inst.fewshot_ids,
                "generation": raw,
                "prediction": prediction,
                "references": references,
                "exact_match": M.exact_match(prediction, references, **task.spec.exact_match),
                "f1": M.max_f1(prediction, references),
            }
        )
    return samples, 0


def _rolling(lm: LanguageModel, task: Task, instances: list[Instance]) -> tuple[list[dict], int]:
    logprobs = lm.loglikelihood_rolling([inst.text for inst in instances])
    samples = []
    for inst, ll in zip(instances, logprobs):
        page = inst.doc["page"]  # words and bytes of the original document, as lm-eval counts them
        words, n_bytes = M.count_words(page), M.count_bytes(page)
        samples.append(
            {
                "doc_id": inst.doc_id,
                "loglikelihood": ll,
                "words": words,
                "bytes": n_bytes,
                "word_perplexity": (ll, words),
                "byte_perplexity": (ll, n_bytes),
                "bits_per_byte": (ll, n_bytes),
            }
        )
    return samples, 0


def write_results(path: PathLike, results: dict[str, Any], include_samples: bool = True) -> PathLike:
    """Write `results` as JSON, atomically (in a multi-process run, call this on process 0 only)."""
    if not include_samples:
        results = {**results, "results": [{k: v for k, v in r.items() if k != "samples"} for r in results["results"]]}
    write_json(path, results, indent=1)
    return path
