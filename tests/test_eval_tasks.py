"""eval task definitions: prompts and few-shot examples identical to lm-eval's, and clear errors."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from eval.data import DataError, read_jsonl, wikitext_pages
from eval.fewshot import LmEvalSampler
from eval.lm import ModelInfo
from eval.registry import TaskError, get_spec, list_tasks
from eval.requests import LoglikelihoodResult
from eval.runner import evaluate
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


CASES = [(t, k) for t in LM_EVAL_YAMLS for k in (0, 2)]


@pytest.mark.parametrize("task_name,k", CASES)
def test_requests_match_lm_eval(task_name: str, k: int, tmp_path: Path) -> None:
    """Same contexts, continuations and few-shot examples (seed 1234) as lm-eval's YAML on the same rows.
    LAMBADA only has a test split, both scored and sampled: lm-eval may show a passage itself as an example,
    gptjax's default never does, and `fewshot_exclusion: lm_eval` reproduces lm-eval's choice."""
    splits = _subset(task_name, tmp_path)
    theirs = _lm_eval_requests(task_name, splits, k)
    if task_name == "lambada_openai" and k:
        assert _our_requests(Task(task_name, benchmark_dir=tmp_path), k) != theirs  # the rules differ here
        assert _our_requests(Task(task_name, benchmark_dir=tmp_path, fewshot_exclusion="lm_eval"), k) == theirs
    else:
        assert _our_requests(Task(task_name, benchmark_dir=tmp_path), k) == theirs


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


# --- lm-eval's task YAML format ---------------------------------------------------------------------------

PREMISES = ["The man turned on the faucet.", "The girl found a bug.", "The cook burned the food.", "It rained."]


def write_lm_eval_task(root: Path, **extra: str) -> tuple[Path, Path]:
    """A COPA-like task written twice over the same JSONL splits: in lm-eval's format (include, dataset_path
    json + dataset_kwargs, `!function`s from a utils.py beside it, process_docs, metric_list, metadata) and
    in gptjax's short form. Returns (lm-eval YAML, gptjax YAML)."""
    data = root / "data"
    data.mkdir(parents=True)
    rows = [
        {
            "premise": f"  {PREMISES[i % 4]} ",
            "question": ["cause", "effect"][i % 2],
            "choice1": f"Choice {i} one.",
            "choice2": f"Other {i}.",
            "label": i % 2,
        }
        for i in range(12)
    ]
    for split, part in (("train", rows[:8]), ("validation", rows[8:])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (root / "utils.py").write_text(
        "def process_docs(dataset):\n"
        "    return dataset.map(lambda doc: {'premise': doc['premise'].strip()})\n\n"
        "def doc_to_text(doc):\n"
        "    connector = {'cause': 'because', 'effect': 'therefore'}[doc['question']]\n"
        "    return doc['premise'][:-1] + ' ' + connector\n\n"
        "def doc_to_choice(doc):\n"
        "    return [' ' + c[0].lower() + c[1:] for c in (doc['choice1'], doc['choice2'])]\n"
    )
    (root / "_default.yaml").write_text(
        "output_type: multiple_choice\ntraining_split: train\nvalidation_split: validation\n"
    )
    lm_eval_yaml = root / "my_copa.yaml"
    lines = [
        "include: _default.yaml",
        "task: my_copa",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        f"  data_files: {{train: {data / 'train.jsonl'}, validation: {data / 'validation.jsonl'}}}",
        f"  cache_dir: {root / 'hf_cache'}",
        "process_docs: !function utils.process_docs",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: label",
        "doc_to_choice: !function utils.doc_to_choice",
        "num_fewshot: 2",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
    ] + [f"{k}: {v}" for k, v in extra.items()]
    lm_eval_yaml.write_text("\n".join(lines) + "\n")
    gptjax_yaml = root / "my_copa_gptjax.yaml"
    gptjax_yaml.write_text(
        "task: my_copa\noutput_type: multiple_choice\n"
        "data_files: {train: data/train.jsonl, validation: data/validation.jsonl}\n"
        "training_split: train\nvalidation_split: validation\n"
        "doc_to_text: \"{{ premise.strip()[:-1] }} {{ {'cause': 'because', 'effect': 'therefore'}[question] }}\"\n"
        'doc_to_target: "{{label}}"\n'
        "doc_to_choice: \"{{ [' ' + choice1[0].lower() + choice1[1:], ' ' + choice2[0].lower() + choice2[1:]] }}\"\n"
        "num_fewshot: 2\nmetrics: [acc]\n"
    )
    return lm_eval_yaml, gptjax_yaml


def test_lm_eval_yaml_is_read_as_lm_eval_reads_it(tmp_path: Path) -> None:
    """The lm-eval-format YAML gives lm-eval's own requests (lm-eval loads the same file), and the same as
    the gptjax-form definition of the task."""
    lm_eval_yaml, gptjax_yaml = write_lm_eval_task(tmp_path)
    ours = Task(lm_eval_yaml)
    assert (ours.name, ours.spec.metrics, ours.spec.num_fewshot) == ("my_copa", ("acc",), 2)
    assert ours.eval_docs()[0]["premise"] == PREMISES[0]  # process_docs ran, on every split
    (datasets,) = need_modules("datasets")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    theirs = ConfigurableTask(config=load_yaml(lm_eval_yaml))
    theirs.set_fewshot_seed(1234)
    theirs.build_all_requests(limit=4)
    by_doc: dict[int, list[tuple]] = {}
    for instance in theirs.instances:
        by_doc.setdefault(instance.doc_id, []).append(tuple(instance.args))
    sampler = LmEvalSampler(ours.fewshot_docs(), 1234)
    for doc_id, doc in enumerate(ours.eval_docs()):
        fewshot = sampler.sample(2, doc if ours.excludes_eval_doc else None)
        assert ours.instance(doc_id, doc, fewshot).requests == by_doc[doc_id]
        assert Task(gptjax_yaml).instance(doc_id, doc, fewshot).requests == by_doc[doc_id]


def test_known_process_docs_is_lm_evals_hellaswag(tmp_path: Path) -> None:
    need_modules("datasets")
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    raw = [
        {"activity_label": "Baking", "ctx_a": "A man [title] mixes flour.", "ctx_b": "he  then", "label": "1",
         "endings": ["bakes [header] it.", " stirs  it ", "x", "y"]},
        {"activity_label": "Home", "ctx_a": "She opens.", "ctx_b": "the door", "label": "3", "endings": list("abcd")},
    ]  # fmt: skip
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    path = tmp_path / "hs.yaml"
    files = f"{{data_files: {{validation: {tmp_path / 'validation.jsonl'}}}}}"
    path.write_text(
        f"task: hs\ndataset_path: json\ndataset_kwargs: {files}\n"
        "validation_split: validation\noutput_type: multiple_choice\nprocess_docs: hellaswag\n"
        'doc_to_text: "{{query}}"\ndoc_to_target: "{{gold}}"\ndoc_to_choice: choices\n'
    )
    assert Task(path).eval_docs() == list(process_docs(datasets.Dataset.from_list(raw)))


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"process_results": "!function utils.doc_to_text"}, r"process_results \(custom per-document scoring\)"),
        ({"filter_list": "[{name: x, filter: [{function: take_first_k}]}]"}, "filter_list are only for"),
        ({"fewshot_config": "{sampler: first_n}"}, "fewshot_config .* is not supported"),
        ({"repeats": "4"}, "repeats and filter_list are only for generate_until"),
        ({"doc_to_target": "!function os.system"}, r"doc_to_target: !function 'os.system' needs .*/os.py"),
        ({"doc_to_target": "!function utils.nothing"}, "defines no function 'nothing'"),
        ({"generation_kwargs": "{until: !function utils.doc_to_text}"}, "!function is only supported for"),
        ({"doc_to_txt": "x"}, r"unknown keys \['doc_to_txt'\]"),
    ],
)
def test_unsupported_lm_eval_keys_name_themselves_and_the_file(tmp_path: Path, extra: dict, message: str) -> None:
    lm_eval_yaml, _ = write_lm_eval_task(tmp_path, **extra)
    with pytest.raises(TaskError, match=f"{lm_eval_yaml}: .*{message}"):
        get_spec(lm_eval_yaml)


@pytest.mark.parametrize(
    "text,message",
    [
        ("dataset_path: super_glue\n", "dataset_path 'super_glue' is a Hugging Face Hub dataset"),
        ("dataset_path: json\ndataset_kwargs: {data_files: x.jsonl, split: train}\n", r"dataset_kwargs \['split'\]"),
        ("metric_list: [{metric: acc, higher_is_better: false}]\n", "acc has higher_is_better False, but gptjax's"),
        ("metric_list: [{metric: acc, aggregation: perplexity}]\n", "acc has aggregation 'perplexity', but .*'mean'"),
        ("metric_list: [{metric: mcc}]\n", "metric 'mcc' is not one gptjax computes"),
        ("metric_list: [{metric: acc, ignore_case: true}]\n", r"acc options \['ignore_case'\] are not supported"),
    ],
)
def test_lm_eval_dataset_and_metric_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("task: t\noutput_type: multiple_choice\nvalidation_split: validation\n" + text)
    with pytest.raises(TaskError, match=f"{path}: .*{message}"):
        get_spec(path)


def test_lm_eval_defaults_and_generation_options(tmp_path: Path) -> None:
    path = tmp_path / "trivia.yaml"
    path.write_text(
        "task: trivia\nvalidation_split: validation\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true}]\n"
        "filter_list: [{name: remove_whitespace, filter: [{function: remove_whitespace}, {function: take_first}]}]\n"
    )
    spec = get_spec(path)  # lm-eval's default output_type
    assert (spec.output_type, spec.metrics, spec.exact_match, spec.strip_prediction) == (
        "generate_until",
        ("exact_match",),
        {"ignore_case": True},
        True,
    )
    path.write_text("task: mc\noutput_type: multiple_choice\nvalidation_split: v\ndoc_to_text: x\n"
                    "doc_to_target: 0\ndoc_to_choice: [a, b]\nfewshot_exclusion: always\n")  # fmt: skip
    with pytest.raises(TaskError, match="fewshot_exclusion 'always' is not one of"):
        get_spec(path)


class _EchoLM:
    """A LanguageModel whose log-likelihoods depend on the whole request, so equal per-document results
    mean equal prompts, examples and continuations."""

    info = ModelInfo("echo", params=1, non_embedding_params=1)
    tokenizer_name = "echo"
    max_length = 2048

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LoglikelihoodResult]:
        self.requests += requests
        return [LoglikelihoodResult(-float(sum(map(ord, ctx + cont)) % 97), False) for ctx, cont in requests]


def test_lm_eval_yaml_gives_the_per_document_results_of_the_gptjax_form(tmp_path: Path) -> None:
    lm_eval_yaml, gptjax_yaml = write_lm_eval_task(tmp_path)
    runs = []
    for path in (lm_eval_yaml, gptjax_yaml):
        lm = _EchoLM()
        (result,) = evaluate(lm, [path], bootstrap_iters=0)["results"]  # K from the YAMLs' num_fewshot: 2
        runs.append((lm.requests, result["samples"], result["metrics"], result["num_fewshot"]))
    assert runs[0] == runs[1]
    requests, samples, _, k = runs[0]
    assert k == 2 and len(samples) == 4 and len(requests) == 8 and requests[0][0].count("because") >= 1
    assert len({s["pred"] for s in samples}) > 1  # the scores are not all alike
