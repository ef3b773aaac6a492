"""eval task definitions: prompts and few-shot examples identical to lm-eval's, and clear errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from eval.data import DataError, read_jsonl, wikitext_pages
from eval.fewshot import LmEvalSampler
from eval.registry import TaskError, get_spec, list_tasks
from eval.task import Task
from gptjax.paths import data_dir

from requirements import need_modules

BENCHMARKS = data_dir() / "benchmarks"
LM_EVAL_YAMLS = {
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "copa": "super_glue/copa/default.yaml",
    "triviaqa": "triviaqa/default.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
}
N_POOL, N_EVAL = 40, 6


def _subset(task: str, root: Path) -> dict[str, list[dict[str, Any]]]:
    """The first rows of each shipped split, written under `root` as a benchmark dir."""
    splits = {}
    for path in sorted((BENCHMARKS / task).glob("*.jsonl")):
        with path.open() as f:
            rows = [json.loads(line) for line in itertools.islice(f, N_POOL)]
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / path.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        splits[path.stem] = rows
    return splits


def _lm_eval_doc(task: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The shared data in the schema lm-eval's YAML expects (super_glue's int label, HF trivia_qa's answer)."""
    if task == "boolq":
        return doc | {"label": int(doc["answer"])}
    if task == "triviaqa":
        return doc | {"answer": {"aliases": doc["aliases"], "value": doc["answer"]}}
    return doc


def _lm_eval_requests(task: str, splits: dict[str, list[dict[str, Any]]], k: int) -> dict[int, list[tuple]]:
    """lm-eval's own request arguments for the first N_EVAL documents, from its YAML and the same rows."""
    (datasets,) = need_modules("datasets")
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAMLS[task])
    for key in ("training_split", "validation_split", "test_split"):
        if cfg.get(key) and cfg[key] not in splits:  # e.g. no HellaSwag/COPA train here: lm-eval's fallback
            cfg[key] = None
    if task == "hellaswag":  # the shared rows are already process_docs' output
        cfg |= {"process_docs": None, "doc_to_target": "{{gold}}"}
    dataset = datasets.DatasetDict(
        {split: datasets.Dataset.from_list([_lm_eval_doc(task, d) for d in rows]) for split, rows in splits.items()}
    )
    cfg["custom_dataset"] = lambda **_: dataset
    lm_task = ConfigurableTask(config=cfg)
    lm_task.set_config("num_fewshot", k)
    lm_task.set_fewshot_seed(1234)
    lm_task.build_all_requests(limit=N_EVAL)
    requests: dict[int, list[tuple]] = {}
    for instance in lm_task.instances:
        args = instance.args
        if instance.request_type == "generate_until":
            args = (args[0], tuple(args[1]["until"]))
        requests.setdefault(instance.doc_id, []).append(tuple(args))
    return requests


def _our_requests(task: Task, k: int) -> dict[int, list[tuple]]:
    sampler = LmEvalSampler(task.fewshot_docs(), 1234) if k else None
    requests = {}
    for doc_id, doc in enumerate(task.eval_docs()[:N_EVAL]):
        fewshot = sampler.sample(k, doc if task.excludes_eval_doc else None) if sampler else []
        instance = task.instance(doc_id, doc, fewshot)
        if instance.generation is not None:
            requests[doc_id] = [(instance.generation.context, instance.generation.until)]
        else:
            requests[doc_id] = list(instance.requests)
    return requests


# LAMBADA only has a test split; lm-eval may then use the scored passage as its own example, we never do.
CASES = [(t, k) for t in LM_EVAL_YAMLS for k in (0, 2) if not (t == "lambada_openai" and k)]


@pytest.mark.parametrize("task_name,k", CASES)
def test_requests_match_lm_eval(task_name: str, k: int, tmp_path: Path) -> None:
    """Same contexts, continuations and few-shot examples (seed 1234) as lm-eval's YAML on the same rows."""
    splits = _subset(task_name, tmp_path)
    ours = _our_requests(Task(task_name, benchmark_dir=tmp_path), k)
    assert ours == _lm_eval_requests(task_name, splits, k)


def _first_doc_request(task_name: str, k: int = 0) -> list[tuple]:
    return _our_requests(Task(task_name), k)[0]


def test_exact_prompt_strings() -> None:
    """A few renderings written out by hand from lm-eval's YAMLs (guards against an lm-eval upgrade
    silently changing both sides of the parity test)."""
    piqa = _first_doc_request("piqa")
    assert piqa[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa[0][1].startswith(
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper"
    )
    copa = _first_doc_request("copa")
    assert copa == [
        ("The man turned on the faucet therefore", "  the toilet filled with water."),
        ("The man turned on the faucet therefore", "  water flowed from the spout."),
    ]
    wino = _first_doc_request("winogrande")
    assert wino == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    arc = Task("arc_easy")
    assert arc.eval_split == "test"
    assert arc.instance(0, arc.eval_docs()[0]).calibration[0] == (
        "Answer:",
        " Sunlight is the source of energy for nearly all ecosystems.",
    )
    boolq = _first_doc_request("boolq")
    assert boolq[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [c for _, c in boolq] == [" no", " yes"]
    assert _first_doc_request("triviaqa") == [
        ("Question: Brunswick, Lancastrian and Pearl Pickler are types of which vegetable??\nAnswer:", ("\n", ".", ","))
    ]
    lambada = _first_doc_request("lambada_openai")
    assert lambada[0][1] == " signs" and lambada[0][0].endswith("I don't care about")


def test_fewshot_fallback_and_exclusion() -> None:
    hellaswag, piqa = Task("hellaswag"), Task("piqa")
    assert hellaswag.fewshot_split == "validation" and hellaswag.fewshot_fallback and hellaswag.excludes_eval_doc
    assert piqa.fewshot_split == "train" and not piqa.fewshot_fallback
    lambada = Task("lambada_openai")
    assert lambada.fewshot_split == "test" and lambada.excludes_eval_doc
    docs = lambada.eval_docs()[:5]
    sampler = LmEvalSampler(docs, 1234)
    for doc in docs:
        assert all(docs[i] != doc for i in sampler.sample(4, doc))


def test_sampler_matches_lm_eval_context_sampler() -> None:
    from lm_eval.api.samplers import ContextSampler

    docs = [{"q": i % 7, "a": i} for i in range(30)] + [{"q": 3, "a": 3}]  # a duplicate of doc 3
    theirs = ContextSampler(docs, rnd=None)
    theirs.set_rnd(1234)
    ours = LmEvalSampler(docs, 1234)
    for doc in docs[:12] + [None, None]:
        assert [docs[i] for i in ours.sample(5, doc)] == list(theirs.sample(5, eval_doc=doc))


def test_description_is_prepended() -> None:
    task = Task("piqa", description="Choose the right answer.\n\n")
    assert task.contexts(task.eval_docs()[0], [])[0].startswith("Choose the right answer.\n\nQuestion: How do I")


def test_wikitext_pages_split_at_top_level_headings() -> None:
    text = " \n = A = \n \n x \n = = Sub = = \n y \n = B = \n z \n"
    assert wikitext_pages(text) == [" = A = \n \n x \n = = Sub = = \n y ", " = B = \n z \n"]  # blank lead dropped
    assert len(Task("wikitext").eval_docs()) == 62  # EleutherAI/wikitext_document_level's test split


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(TaskError, match=r"unknown task 'piqaa'; valid tasks: arc_challenge, arc_easy, .*piqa"):
        get_spec("piqaa")
    assert {"piqa", "hellaswag", "lambada_openai", "triviaqa", "wikitext", "ptb"} <= set(list_tasks())


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{path}:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path / 'piqa' / 'validation.jsonl'} does not exist"):
        Task("piqa", benchmark_dir=tmp_path).eval_docs()


def _write_user_task(tmp_path: Path, **extra: Any) -> Path:
    (tmp_path / "qa").mkdir()
    rows = [
        {"question": f"What is {i} plus {i}", "options": [str(2 * i), str(2 * i + 1)], "answer_index": 0}
        for i in range(5)
    ]
    (tmp_path / "qa" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        "task: my_qa",
        "output_type: multiple_choice",
        "data_files: {validation: qa/dev.jsonl}",
        "validation_split: validation",
        'doc_to_text: "Q: {{question}}?\\nA:"',
        'doc_to_choice: "{{options}}"',
        'doc_to_target: "{{answer_index}}"',
        "metrics: [acc, acc_norm]",
    ] + [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "my_qa.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_task_from_yaml_and_jsonl(tmp_path: Path) -> None:
    task = Task(_write_user_task(tmp_path))
    assert task.name == "my_qa" and task.eval_split == "validation"
    assert task.instance(0, task.eval_docs()[3], []).requests == [
        ("Q: What is 3 plus 3?\nA:", " 6"),
        ("Q: What is 3 plus 3?\nA:", " 7"),
    ]
    assert task.fewshot_split == "validation" and task.excludes_eval_doc


def test_task_definition_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"unknown keys \['doc_to_txt'\]; valid keys: .*doc_to_text"):
        Task(_write_user_task(tmp_path, doc_to_txt="x"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: t\noutput_type: multiple_choice\nmetrics: [bleu]\n")
    with pytest.raises(TaskError, match=r"metrics \['bleu'\] are not valid for multiple_choice"):
        get_spec(bad)
    bad.write_text("task: t\noutput_type: ranking\nmetrics: [acc]\n")
    with pytest.raises(TaskError, match="output_type 'ranking' is not one of"):
        get_spec(bad)


def test_template_error_names_task_and_field(tmp_path: Path) -> None:
    path = _write_user_task(tmp_path)
    path.write_text(path.read_text().replace("{{question}}", "{{questoin}}"))
    task = Task(path)
    with pytest.raises(TaskError, match="task my_qa: doc_to_text failed .*'questoin' is undefined"):
        task.instance(0, task.eval_docs()[0], [])
