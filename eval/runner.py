"""`evaluate`: tasks x shot counts on one LanguageModel -> a results dict; `write_results` saves it as JSON.

Each (task, K) run draws its few-shot examples with a fresh sampler seeded with `seed`, like one lm-eval run
per K, and sends all of its requests to the model at once so the model can batch and deduplicate them.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval import generation
from eval import metrics as M
from eval.fewshot import DEFAULT_SEED, LmEvalSampler, SamplerFactory
from eval.lm import LanguageModel, ModelInfo
from eval.registry import TaskSpec, get_spec
from eval.task import Instance, Task
from gptjax.prep.contamination import ContaminationError, DirtySet
from gptjax.rundir import PathLike, write_json

EXAMPLE_PROMPT_CHARS = 4000  # a rolling-perplexity document is shown up to this length


TaskRef = str | Path | TaskSpec | Task


def task_shots(task: Task, shots: Sequence[int] | None) -> list[int]:
    """The K values `task` runs at: `shots`, else the task's own num_fewshot; rolling perplexity only at 0."""
    if task.spec.output_type == "loglikelihood_rolling":
        return [0]
    return list(dict.fromkeys(shots if shots is not None else [task.spec.num_fewshot]))


def load_tasks(
    tasks: Sequence[TaskRef],
    shots: Sequence[int] | None = None,
    *,
    data_dir: str | Path | None = None,
    corpus_dir: str | Path | None = None,
    descriptions: Mapping[str, str] | None = None,
    fewshot_exclusion: str | None = None,
) -> list[Task]:
    """The tasks bound to their data, with every file they need read: the scored documents, and the few-shot
    documents of a task that runs at some K > 0. So a wrong name, option or file fails here, before any model
    is loaded or called. `Task`s are taken as they are (the other arguments only apply to the rest)."""
    if shots is not None and any(k < 0 for k in shots):
        raise ValueError(f"shot counts must be >= 0, got {list(shots)}")
    descriptions = descriptions or {}
    refs = [t if isinstance(t, Task) else get_spec(t) for t in tasks]  # every name first, then any file
    loaded = [
        t if isinstance(t, Task) else Task(t, data_dir, corpus_dir, descriptions.get(t.task), fewshot_exclusion)
        for t in refs
    ]
    for task in loaded:
        task.eval_docs()
        if any(task_shots(task, shots)):
            task.fewshot_docs()
    return loaded


def evaluate(
    lm: LanguageModel,
    tasks: Sequence[TaskRef],
    shots: Sequence[int] | None = None,
    *,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    data_dir: str | Path | None = None,
    corpus_dir: str | Path | None = None,
    bootstrap_iters: int = 1000,
    sampler_factory: SamplerFactory = LmEvalSampler,
    descriptions: Mapping[str, str] | None = None,
    fewshot_exclusion: str | None = None,
    log_samples: bool = True,
    dirty: Mapping[str, DirtySet] | None = None,
) -> dict[str, Any]:
    """Evaluate `lm` on every task at every K in `shots` (default: each task's num_fewshot, 0 unless its
    YAML says otherwise).

    `tasks` are built-in names, task YAML paths, TaskSpecs or Tasks (`load_tasks`); `limit` keeps the first
    documents of each task; `data_dir` is the benchmark directory (default: data_dir()/"benchmarks") and
    `corpus_dir` the corpus directory (default: data_dir()/"corpora"); `descriptions` maps task names to a
    description that replaces the task's own; `fewshot_exclusion` overrides every task's rule for leaving
    the scored document out of its examples (eval.registry.FEWSHOT_EXCLUSIONS). Rolling-perplexity tasks run
    once, at K=0. With `log_samples`, every result carries its per-document `samples`. A task with a
    DirtySet in `dirty` (`gptjax data decontaminate`) is also scored on its clean subset, GPT-3's
    contamination check: the result's "clean" entry.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents, got {limit}")
    loaded = load_tasks(
        tasks,
        shots,
        data_dir=data_dir,
        corpus_dir=corpus_dir,
        descriptions=descriptions,
        fewshot_exclusion=fewshot_exclusion,
    )
    dirty = dirty or {}
    for task in loaded:
        if task.name in dirty:
            _check_dirty(task, dirty[task.name])
    results = []
    for task in loaded:
        docs = task.eval_docs()[:limit]
        for k in task_shots(task, shots):
            result = _evaluate_task(lm, task, docs, k, seed, bootstrap_iters, sampler_factory, True)
            if task.name in dirty:
                result["clean"] = _clean_subset(task, result["samples"], dirty[task.name], bootstrap_iters)
            if not log_samples:
                del result["samples"]
            results.append(result)
    return results_file(lm.info, lm.tokenizer_name, lm.max_length, results)


def results_file(info: ModelInfo, tokenizer: str, max_length: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A results file's contents (eval/results.py reads them back): the model, the tokenizer and `results`,
    one entry per (task, K). The ICL probes (eval/icl) write theirs through here too."""
    return {
        "model": {
            "name": info.name,
            "params": info.params,
            "non_embedding_params": info.non_embedding_params,
            "checkpoint": info.checkpoint,
            "step": info.step,
        },
        "tokenizer": tokenizer,
        "tokenizer_source": info.tokenizer_source,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gptjax_version": importlib.metadata.version("gptjax"),
        "max_length": max_length,
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
    result = {
        "task": task.name,
        "split": task.eval_split,
        "num_fewshot": k,
        "fewshot_split": task.fewshot_split if k > 0 else "",
        "fewshot_fallback": k > 0 and task.fewshot_fallback,
        "fewshot_exclusion": task.fewshot_exclusion if k > 0 else "",
        "seed": seed,
        "num_docs": len(docs),
        "metrics": _metrics(task, samples, bootstrap_iters),
        "example_prompt": _example_prompt(task, instances[0]),
        "output_type": task.spec.output_type,
        "truncated_requests": truncated,
        "task_source": task.spec.source or task.spec.path,
    }
    if task.spec.output_type == "generate_until":
        result["decoding"] = dataclasses.asdict(task.spec.decoding) | {
            "max_tokens": task.spec.generation_kwargs.get("max_gen_toks")  # None: the model's default
        }
    if task.spec.filter_list:
        by_filter = {f.name: [s["by_filter"][f.name] for s in samples] for f in task.spec.filters}
        result["filters"] = {name: _metrics(task, scored, bootstrap_iters) for name, scored in by_filter.items()}
    if log_samples:
        result["samples"] = samples
    return result


def _metrics(task: Task, samples: list[dict[str, Any]], bootstrap_iters: int) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for metric in task.spec.metrics:
        values[metric], values[f"{metric}_stderr"] = M.aggregate(metric, [s[metric] for s in samples], bootstrap_iters)
    return values


def _check_dirty(task: Task, dirty: DirtySet) -> None:
    n = len(task.eval_docs())
    if (dirty.split, dirty.num_docs) != (task.eval_split, n):
        raise ContaminationError(
            f"{dirty.path} lists dirty documents of {dirty.num_docs} {dirty.split} documents, but task {task.name} "
            f"scores {n} {task.eval_split} documents; rerun `gptjax data decontaminate`"
        )


def _clean_subset(task: Task, samples: list[dict[str, Any]], dirty: DirtySet, bootstrap_iters: int) -> dict[str, Any]:
    """The metrics over the scored documents the dirty-id file does not list (none if every one is dirty)."""
    clean = [s for s in samples if s["doc_id"] not in dirty.ids]
    return {
        "dirty_file": dirty.path,
        "num_docs": len(clean),
        "num_dirty": len(samples) - len(clean),
        "metrics": _metrics(task, clean, bootstrap_iters) if clean else {},
    }


def _example_prompt(task: Task, instance: Instance) -> str:
    """What the model sees for the first document, with its correct answer where there is one."""
    text = task.shown_text(instance)
    return text[:EXAMPLE_PROMPT_CHARS] if instance.text is not None else text


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
    """`repeats` responses per document, each filter pipeline's answer, and the metrics of the first pipeline's
    (`by_filter` holds every pipeline's when the task has a filter_list)."""
    spec, n = task.spec, task.spec.repeats
    responses = iter(lm.generate_until([inst.generation for inst in instances for _ in range(n)]))
    metrics = dict.fromkeys(("exact_match", "f1", *spec.metrics))
    samples = []
    for inst in instances:
        raws = [next(responses) for _ in range(n)]
        target = task.doc_to_target(inst.doc)
        references = [str(t) for t in target] if isinstance(target, list) else [str(target)]
        by_filter = {}
        for pipeline in spec.filters:
            answer = pipeline([raw.strip() for raw in raws] if spec.strip_prediction else raws)
            scores = {m: generation.score(m, answer, references, **spec.exact_match) for m in metrics}
            by_filter[pipeline.name] = {"prediction": answer} | scores
        sample = {"doc_id": inst.doc_id, "fewshot_ids": inst.fewshot_ids, "generation": raws[0]}
        sample |= {"generations": raws} if n > 1 else {}
        sample |= {"references": references} | by_filter[spec.filters[0].name]
        samples.append(sample | ({"by_filter": by_filter} if spec.filter_list else {}))
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
