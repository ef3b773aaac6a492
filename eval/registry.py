"""Declarative task definitions: YAML files in `eval/tasks/` (or anywhere, by path) parsed into `TaskSpec`s.

The fields and their meaning follow lm-evaluation-harness's task YAMLs (`doc_to_text`, `doc_to_target`,
`doc_to_choice`, `target_delimiter`, ...) so a definition can be checked line by line against the lm-eval
task it mirrors; eval/README.md documents every field. An lm-eval (0.4) task YAML is also accepted as it is:
its keys that gptjax spells differently (`dataset_path: json` + `dataset_kwargs.data_files`, `metric_list`,
`filter_list`, ...) are translated here, `!function` is resolved from a Python file beside the YAML, and a
key whose meaning gptjax does not implement is an error naming it, never silently ignored. Validation
happens here, at load time, and names the file and the offending key or value.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from eval import cot, text_metrics
from eval.data import DETOKENIZERS, DOC_PROCESSORS, DOCUMENT_SPLITTERS
from eval.decoding import Decoding, GenerationError, from_generation_kwargs
from eval.lm import DEFAULT_MAX_GEN_TOKS
from eval.metrics import AGGREGATIONS, METRICS_BY_NAME
from gptjax.errors import GptjaxError

BUILTIN_DIR = Path(__file__).resolve().parent / "tasks"

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "generate_until", "loglikelihood_rolling")
# The metrics a task of each output type may ask for: names of eval.metrics' table, checked here on import.
METRICS = {
    "multiple_choice": ("acc", "acc_norm", "acc_calibrated"),
    "loglikelihood": ("acc", "perplexity"),
    "generate_until": ("exact_match", "f1", *text_metrics.TEXT_METRICS),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
_UNDECLARED = sorted({name for names in METRICS.values() for name in names} - METRICS_BY_NAME.keys())
if _UNDECLARED:
    raise ImportError(f"eval.registry.METRICS allows metrics eval.metrics does not declare: {_UNDECLARED}")
# lm-eval's metrics when a task names none (its DEFAULT_METRIC_REGISTRY).
DEFAULT_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "loglikelihood": ("perplexity", "acc"),
    "generate_until": ("exact_match",),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
# Which scored documents are left out of their own few-shot examples: gptjax's rule (lm-eval's, and also
# whenever the examples come from the scored split) or lm-eval 0.4's alone (only when the configured
# fewshot_split equals the configured test_split). See eval/README.md, "Prompts and scoring".
FEWSHOT_EXCLUSIONS = ("scored_split", "lm_eval")
EXACT_MATCH_KEYS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")


class TaskError(GptjaxError, ValueError):
    """A task definition is invalid or names something that does not exist; the message says which."""


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task. Templates are Jinja strings over a document's fields, or a bare field name."""

    task: str
    output_type: str
    metrics: tuple[str, ...]
    # Documents: JSONL files <benchmark dir>/<dataset>/<split>.jsonl, or explicit `data_files` per split.
    dataset: str | None = None
    data_files: dict[str, str] = field(default_factory=dict)
    tfds_name: str | None = None  # or a prepared TFDS dataset (eval.data.read_tfds), splits in TFDS's syntax
    tfds_data_dir: str | None = None  # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    training_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    fewshot_split: str | None = None
    process_docs: str | Callable | None = None  # a DOC_PROCESSORS name, or a function (lm-eval's !function)
    num_fewshot: int = 0  # K when no shot counts are given
    fewshot_exclusion: str = "scored_split"  # one of FEWSHOT_EXCLUSIONS
    # Prompt: templates, or functions of the document (lm-eval's !function).
    doc_to_text: str | Callable | None = None
    doc_to_target: str | int | list | Callable | None = None
    doc_to_choice: str | list | dict | Callable | None = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    multiple_input: bool = False  # winogrande-style: each choice is a context, the target is shared
    calibration_context: str | None = None  # GPT-3's "Answer:" for acc_calibrated
    # Generation.
    generation_kwargs: dict[str, Any] = field(default_factory=dict)  # eval.decoding.from_generation_kwargs
    repeats: int = 1  # responses per document (lm-eval's repeats): N sampled paths for self-consistency
    filter_list: list[dict[str, Any]] = field(default_factory=list)  # lm-eval's, eval.cot.filter_pipelines
    exact_match: dict[str, Any] = field(default_factory=dict)
    strip_prediction: bool = False  # strip generated text before scoring (lm-eval's remove_whitespace filter)
    # Rolling-window perplexity over a text corpus (file relative to the corpus dir).
    corpus: str | None = None
    split: str | None = None
    documents: str = "whole_file"
    detokenizer: str | None = None
    # Provenance.
    source: str = ""
    path: str | None = None

    def __post_init__(self) -> None:
        where = self.path or self.task
        if self.output_type not in OUTPUT_TYPES:
            raise TaskError(f"{where}: output_type {self.output_type!r} is not one of {list(OUTPUT_TYPES)}")
        valid = METRICS[self.output_type]
        bad = [m for m in self.metrics if m not in valid]
        if bad or not self.metrics:
            raise TaskError(
                f"{where}: metrics {bad or '[]'} are not valid for {self.output_type}; choose from {list(valid)}"
            )
        if self.fewshot_exclusion not in FEWSHOT_EXCLUSIONS:
            raise TaskError(
                f"{where}: fewshot_exclusion {self.fewshot_exclusion!r} is not one of {list(FEWSHOT_EXCLUSIONS)}"
            )
        if isinstance(self.process_docs, str) and self.process_docs not in DOC_PROCESSORS:
            raise TaskError(
                f"{where}: process_docs {self.process_docs!r} is not one of {list(DOC_PROCESSORS)} "
                "(or a `!function module.name` defined beside the YAML)"
            )
        if self.tfds_name is not None and (self.dataset or self.data_files):
            raise TaskError(f"{where}: give tfds_name or dataset / data_files, not both")
        if not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise TaskError(f"{where}: num_fewshot must be a non-negative integer, got {self.num_fewshot!r}")
        if self.output_type == "loglikelihood_rolling":
            self._check_corpus(where)
            return
        if self.corpus is not None:
            raise TaskError(f"{where}: `corpus` is only for output_type loglikelihood_rolling")
        for name in ("doc_to_text", "doc_to_target"):
            if getattr(self, name) is None:
                raise TaskError(f"{where}: {name} is required for output_type {self.output_type}")
        if not (self.validation_split or self.test_split):
            raise TaskError(f"{where}: set validation_split or test_split (the split that is scored)")
        if self.output_type == "multiple_choice" and self.doc_to_choice is None:
            raise TaskError(f"{where}: doc_to_choice is required for multiple_choice")
        if self.multiple_input and self.output_type != "multiple_choice":
            raise TaskError(f"{where}: multiple_input only applies to multiple_choice")
        if self.multiple_input and self.calibration_context is not None:
            raise TaskError(f"{where}: calibration_context cannot be combined with multiple_input")
        if ("acc_calibrated" in self.metrics) != (self.calibration_context is not None):
            raise TaskError(f"{where}: metric acc_calibrated and calibration_context must be set together")
        if self.output_type == "generate_until":
            self._check_generation(where)
        elif self.generation_kwargs or self.repeats != 1 or self.filter_list:
            raise TaskError(f"{where}: generation_kwargs, repeats and filter_list are only for generate_until")
        bad_em = sorted(set(self.exact_match) - set(EXACT_MATCH_KEYS))
        if bad_em:
            raise TaskError(f"{where}: unknown exact_match options {bad_em}; valid: {list(EXACT_MATCH_KEYS)}")

    def _check_generation(self, where: str) -> None:
        try:  # both are read again where they are used; here they are only checked
            _ = self.decoding, self.filters
        except (GenerationError, cot.FilterError) as err:
            raise TaskError(str(err)) from None
        if self.filter_list and self.strip_prediction:
            raise TaskError(f"{where}: give filter_list or strip_prediction, not both")

    def require_packages(self) -> None:
        """MissingMetricPackage if a metric's library (ROUGE, BLEU: the hf extra) is not installed; checked for
        the tasks a run uses, not for every definition loaded, so a plain install evaluates the others."""
        for metric in sorted(set(self.metrics) & set(text_metrics.TEXT_METRICS)):
            text_metrics.require(metric)

    @property
    def decoding(self) -> Decoding:
        """How each prompt is decoded (max_tokens stands in for the model's default when max_gen_toks is unset)."""
        kwargs = {"until": [self.fewshot_delimiter]} | self.generation_kwargs
        return from_generation_kwargs(kwargs, self.repeats, self.path or self.task, DEFAULT_MAX_GEN_TOKS)

    @property
    def filters(self) -> tuple[cot.FilterPipeline, ...]:
        """The answer extraction pipelines; without a filter_list, lm-eval's default take_first."""
        filter_list = self.filter_list or [{"name": "none", "filter": [{"function": "take_first"}]}]
        return cot.filter_pipelines(filter_list, self.repeats, self.path or self.task)

    def _check_corpus(self, where: str) -> None:
        if not self.corpus:
            raise TaskError(f"{where}: loglikelihood_rolling needs `corpus` (a file under the corpus dir)")
        if self.documents not in DOCUMENT_SPLITTERS:
            raise TaskError(f"{where}: documents {self.documents!r} is not one of {list(DOCUMENT_SPLITTERS)}")
        if self.detokenizer is not None and self.detokenizer not in DETOKENIZERS:
            raise TaskError(f"{where}: detokenizer {self.detokenizer!r} is not one of {list(DETOKENIZERS)}")

    @property
    def eval_split(self) -> str:
        """lm-eval's rule: the test split if the task declares one, else validation."""
        if self.output_type == "loglikelihood_rolling":
            return self.split or "test"
        return self.test_split or self.validation_split  # type: ignore[return-value]

    @property
    def until(self) -> list[str]:
        """Stop strings; lm-eval defaults to the few-shot delimiter."""
        return list(self.decoding.until)


_FIELDS = {f.name for f in dataclasses.fields(TaskSpec)} - {"path"}
FUNCTION_KEYS = ("process_docs", "doc_to_text", "doc_to_target", "doc_to_choice")  # where !function may appear
# lm-eval keys with no effect on what is scored: task naming, version metadata, decontamination.
LM_EVAL_IGNORED = ("metadata", "tag", "task_alias", "should_decontaminate", "doc_to_decontamination_query")
# lm-eval keys gptjax accepts only at lm-eval's default value (what it implements), and what they would change.
LM_EVAL_DEFAULTS: dict[str, tuple[Any, str]] = {
    "unsafe_code": (False, "code execution"),
    "gen_prefix": (None, "a prefix before each answer"),
    "use_prompt": (None, "promptsource templates"),
    "process_results": (None, "custom per-document scoring"),
    "doc_to_image": (None, "image inputs"),
    "doc_to_audio": (None, "audio inputs"),
    "custom_dataset": (None, "a Python dataset factory"),
}
METRIC_OPTIONS = {"exact_match": EXACT_MATCH_KEYS}  # a metric_list entry's options, by metric
WHITESPACE_FILTER = [{"function": "remove_whitespace"}, {"function": "take_first"}]  # = strip_prediction


@dataclass(frozen=True)
class FunctionRef:
    """A `!function module.name` tag as read, with the file it was written in (`module` is looked up there)."""

    name: str
    yaml_path: Path


def _loader(path: Path) -> type[yaml.SafeLoader]:
    """yaml's safe loader, plus lm-eval's `!function` tag (kept as a FunctionRef until resolved)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node), path))
    return Loader


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping, with `include: other.yaml` (or a list of them; relative to this file) merged underneath."""
    if path in seen:
        raise TaskError(f"include cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise TaskError(f"task definition {path} does not exist" + (f" (included by {seen[-1]})" if seen else ""))
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader(path))  # noqa: S506 (a safe loader)
    except yaml.YAMLError as err:
        raise TaskError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a task definition must be a YAML mapping, got {type(raw).__name__}")
    include = raw.pop("include", None)
    merged: dict[str, Any] = {}
    for other in [include] if isinstance(include, str) else include or []:
        merged |= _read_yaml((path.parent / other).resolve(), seen + (path,))
    return merged | raw


@functools.cache
def _module_beside(file: Path) -> ModuleType:
    """The Python file `file` executed as a module of its own (named after its path, so two task directories'
    `utils.py` never collide)."""
    name = f"gptjax_task_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_function(ref: FunctionRef, key: str) -> Callable:
    """The function a `!function module.name` names: `name` in `module.py` beside the YAML that holds the tag.
    Nothing else is importable this way (no installed module, no other directory), so a task file can only
    run code that sits next to it."""
    where = f"{ref.yaml_path}: {key}: !function {ref.name!r}"
    module, _, name = ref.name.rpartition(".")
    if not (module.isidentifier() and name.isidentifier()):
        raise TaskError(f"{where} must be MODULE.FUNCTION, with MODULE.py beside the YAML")
    file = ref.yaml_path.parent / f"{module}.py"
    if not file.is_file():
        raise TaskError(f"{where} needs {file}: functions are only loaded from a Python file beside the task YAML")
    try:
        function = getattr(_module_beside(file.resolve()), name, None)
    except Exception as err:  # the module's own import-time failure, e.g. a package it needs is missing
        raise TaskError(f"{where}: importing {file} failed: {type(err).__name__}: {err}") from None
    if not callable(function):
        raise TaskError(f"{where}: {file} defines no function {name!r}")
    return function


def _data_files(dataset_kwargs: Any, where: str) -> dict[str, str]:
    """lm-eval's `dataset_kwargs` for `dataset_path: json`: {split: file}; relative files are resolved as
    Hugging Face datasets (so lm-eval) resolves them, against the working directory."""
    if not isinstance(dataset_kwargs, dict) or "data_files" not in dataset_kwargs:
        raise TaskError(f"{where}: dataset_path: json needs dataset_kwargs.data_files (a file per split)")
    unknown = sorted(set(dataset_kwargs) - {"data_files", "cache_dir"})  # cache_dir: where datasets caches
    if unknown:
        raise TaskError(f"{where}: dataset_kwargs {unknown} are not supported (only data_files)")
    files = dataset_kwargs["data_files"]
    files = {"train": files} if isinstance(files, str) else files  # datasets' rule for a bare file
    out = {}
    for split, file in files.items():
        if isinstance(file, list) and len(file) == 1:
            file = file[0]
        if not isinstance(file, str):
            raise TaskError(f"{where}: dataset_kwargs.data_files.{split} must be one file, got {file!r}")
        out[split] = str(Path(file).expanduser().resolve())
    return out


def _metrics(metric_list: Any, values: dict[str, Any], where: str) -> tuple[str, ...]:
    """lm-eval's `metric_list` as metric names, checked against eval.metrics' declarations (an aggregation or
    direction that contradicts gptjax's metric of that name is an error); exact_match options are kept."""
    if not isinstance(metric_list, list):
        raise TaskError(f"{where}: metric_list must be a list of {{metric: NAME, ...}} entries")
    names = []
    for i, entry in enumerate(metric_list):
        name = entry.get("metric") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise TaskError(f"{where}: metric_list[{i}] must name its metric as a string, got {entry!r}")
        known = METRICS_BY_NAME.get(name)
        if known is None:
            raise TaskError(
                f"{where}: metric_list: metric {name!r} is not one gptjax computes: {list(METRICS_BY_NAME)}"
            )
        aggregation = entry.get("aggregation")
        if aggregation is not None and AGGREGATIONS.get(aggregation) is not known.aggregate:
            ours = next(n for n, f in AGGREGATIONS.items() if f is known.aggregate)
            raise TaskError(
                f"{where}: metric_list: {name} has aggregation {aggregation!r}, but gptjax's {name} aggregates "
                f"by {ours!r}"
            )
        if entry.get("higher_is_better", known.higher_is_better) != known.higher_is_better:
            raise TaskError(
                f"{where}: metric_list: {name} has higher_is_better {entry['higher_is_better']!r}, but gptjax's "
                f"{name} has {known.higher_is_better}"
            )
        options = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better")}
        bad = sorted(set(options) - set(METRIC_OPTIONS.get(name, ())))
        if bad:
            raise TaskError(f"{where}: metric_list: {name} options {bad} are not supported")
        if options:
            values["exact_match"] = values.get("exact_match", {}) | options
        names.append(name)
    return tuple(names)


def _from_lm_eval(values: dict[str, Any], where: str) -> None:
    """Translate, in place, the lm-eval keys that gptjax spells differently; refuse those it cannot honour."""
    for key in LM_EVAL_IGNORED:
        values.pop(key, None)
    for key, (default, meaning) in LM_EVAL_DEFAULTS.items():
        if key in values and values.pop(key) not in (default, "" if default is None else default):
            raise TaskError(f"{where}: {key} ({meaning}) is not supported by gptjax; only {key}: {default!r}")
    if "group" in values or not isinstance(values.get("task", ""), str):
        raise TaskError(f"{where}: group definitions are not supported; pass the tasks themselves")
    if "dataset_path" in values:
        dataset_path = values.pop("dataset_path")
        if dataset_path != "json":
            raise TaskError(
                f"{where}: dataset_path {dataset_path!r} is a Hugging Face Hub dataset, which gptjax does not "
                "download; use `dataset_path: json` with `dataset_kwargs: {data_files: {SPLIT: FILE.jsonl}}`"
            )
        if "data_files" in values:
            raise TaskError(f"{where}: give data_files or dataset_kwargs.data_files, not both")
        values["data_files"] = _data_files(values.pop("dataset_kwargs", None), where)
        values.pop("dataset_name", None)  # with `json` it only names datasets' builder configuration
    if "metric_list" in values:
        if "metrics" in values:
            raise TaskError(f"{where}: give metrics or metric_list, not both")
        values["metrics"] = _metrics(values.pop("metric_list"), values, where)
    if "filter_list" in values:
        filters = values.pop("filter_list")
        pipelines = [f.get("filter") for f in filters] if isinstance(filters, list) else None
        if pipelines in ([[{"function": "take_first"}]], [WHITESPACE_FILTER]):
            values["strip_prediction"] = pipelines == [WHITESPACE_FILTER]
        else:
            values["filter_list"] = filters
    if "fewshot_config" in values:
        fewshot = values.pop("fewshot_config") or {}
        if (
            not isinstance(fewshot, dict)
            or set(fewshot) - {"sampler"}
            or fewshot.get("sampler", "default") != "default"
        ):
            raise TaskError(
                f"{where}: fewshot_config {fewshot!r} is not supported; gptjax draws examples as lm-eval's "
                "default sampler does (fewshot_config: {sampler: default})"
            )


def _holds_function(value: Any) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, FunctionRef) or (isinstance(value, list) and any(map(_holds_function, value)))


def spec_from_dict(raw: dict[str, Any], path: str | None = None) -> TaskSpec:
    """A TaskSpec from a parsed definition, in gptjax's form or lm-eval's; unknown keys are errors (they are
    usually typos). As in lm-eval, output_type defaults to generate_until and metrics to its defaults."""
    where = path or raw.get("task", "<task definition>")
    values = dict(raw)
    if path is not None and "data_files" in values:  # gptjax's own form: relative to the YAML
        base = Path(path).parent
        values["data_files"] = {split: str((base / f).resolve()) for split, f in values["data_files"].items()}
    _from_lm_eval(values, where)
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise TaskError(f"{where}: unknown keys {unknown}; valid keys: {sorted(_FIELDS)}")
    if "task" not in values:
        raise TaskError(f"{where}: missing required key 'task'")
    for key, value in values.items():
        if isinstance(value, FunctionRef) and key in FUNCTION_KEYS:
            values[key] = resolve_function(value, key)
        elif _holds_function(value):
            raise TaskError(f"{where}: {key}: !function is only supported for {list(FUNCTION_KEYS)}")
    values.setdefault("output_type", "generate_until")
    values["metrics"] = tuple(values.get("metrics") or DEFAULT_METRICS.get(values["output_type"], ()))
    return TaskSpec(**values, path=path)


def load_spec_file(path: str | Path) -> TaskSpec:
    path = Path(path).resolve()
    return spec_from_dict(_read_yaml(path), str(path))


def builtin_specs() -> dict[str, TaskSpec]:
    specs = [load_spec_file(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
    return {s.task: s for s in specs}


def list_tasks() -> list[str]:
    return sorted(builtin_specs())


def get_spec(ref: str | Path | TaskSpec) -> TaskSpec:
    """A built-in task by name, a definition file by path, or a TaskSpec as is; its metrics' libraries are
    installed (else MissingMetricPackage, before any model loads)."""
    if isinstance(ref, TaskSpec):
        spec = ref
    elif str(ref).endswith((".yaml", ".yml")) or Path(ref).is_file():
        spec = load_spec_file(ref)
    else:
        specs = builtin_specs()
        if ref not in specs:
            raise TaskError(
                f"unknown task {ref!r}; valid tasks: {', '.join(sorted(specs))} (or pass the path of a task YAML)"
            )
        spec = specs[str(ref)]
    spec.require_packages()
    return spec
