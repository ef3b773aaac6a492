"""Declarative task definitions: YAML files in `eval/tasks/` (or anywhere, by path) parsed into `TaskSpec`s.

The fields and their meaning follow lm-evaluation-harness's task YAMLs (`doc_to_text`, `doc_to_target`,
`doc_to_choice`, `target_delimiter`, ...) so a definition can be checked line by line against the lm-eval
task it mirrors; eval/README.md documents every field. Validation happens here, at load time, and names the
file and the offending key or value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eval.data import DETOKENIZERS, DOCUMENT_SPLITTERS
from eval.metrics import METRICS_BY_NAME
from gptjax.errors import GptjaxError

BUILTIN_DIR = Path(__file__).resolve().parent / "tasks"

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "generate_until", "loglikelihood_rolling")
# The metrics a task of each output type may ask for: names of eval.metrics' table, checked here on import.
METRICS = {
    "multiple_choice": ("acc", "acc_norm", "acc_calibrated"),
    "loglikelihood": ("acc", "perplexity"),
    "generate_until": ("exact_match", "f1"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
_UNDECLARED = sorted({name for names in METRICS.values() for name in names} - METRICS_BY_NAME.keys())
if _UNDECLARED:
    raise ImportError(f"eval.registry.METRICS allows metrics eval.metrics does not declare: {_UNDECLARED}")
GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature")
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
    training_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    fewshot_split: str | None = None
    # Prompt.
    doc_to_text: str | None = None
    doc_to_target: str | int | list | None = None
    doc_to_choice: str | list | dict | None = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    multiple_input: bool = False  # winogrande-style: each choice is a context, the target is shared
    calibration_context: str | None = None  # GPT-3's "Answer:" for acc_calibrated
    # Generation.
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
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
        bad_gen = sorted(set(self.generation_kwargs) - set(GENERATION_KEYS))
        if bad_gen:
            raise TaskError(f"{where}: unknown generation_kwargs {bad_gen}; valid: {list(GENERATION_KEYS)}")
        if self.generation_kwargs.get("do_sample") or self.generation_kwargs.get("temperature", 0.0):
            raise TaskError(f"{where}: only greedy generation is supported (do_sample false, temperature 0)")
        bad_em = sorted(set(self.exact_match) - set(EXACT_MATCH_KEYS))
        if bad_em:
            raise TaskError(f"{where}: unknown exact_match options {bad_em}; valid: {list(EXACT_MATCH_KEYS)}")

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
        return list(self.generation_kwargs.get("until", [self.fewshot_delimiter]))


_FIELDS = {f.name for f in dataclasses.fields(TaskSpec)} - {"path"}


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping, with `include: other.yaml` (relative to this file) merged underneath."""
    if path in seen:
        raise TaskError(f"include cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a task definition must be a YAML mapping, got {type(raw).__name__}")
    include = raw.pop("include", None)
    if include is None:
        return raw
    base = _read_yaml((path.parent / include).resolve(), seen + (path,))
    return base | raw


def spec_from_dict(raw: dict[str, Any], path: str | None = None) -> TaskSpec:
    """A TaskSpec from a parsed definition; unknown keys are errors (they are usually typos)."""
    where = path or raw.get("task", "<task definition>")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise TaskError(f"{where}: unknown keys {unknown}; valid keys: {sorted(_FIELDS)}")
    for key in ("task", "output_type", "metrics"):
        if key not in raw:
            raise TaskError(f"{where}: missing required key {key!r}")
    values = dict(raw)
    values["metrics"] = tuple(values["metrics"])
    if path is not None:
        base = Path(path).parent
        values["data_files"] = {split: str((base / f).resolve()) for split, f in values.get("data_files", {}).items()}
    return TaskSpec(**values, path=path)


def load_spec_file(path: str | Path) -> TaskSpec:
    path = Path(path).resolve()
    if not path.is_file():
        raise TaskError(f"task definition {path} does not exist")
    return spec_from_dict(_read_yaml(path), str(path))


def builtin_specs() -> dict[str, TaskSpec]:
    specs = [load_spec_file(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
    return {s.task: s for s in specs}


def list_tasks() -> list[str]:
    return sorted(builtin_specs())


def get_spec(ref: str | Path | TaskSpec) -> TaskSpec:
    """A built-in task by name, a definition file by path, or a TaskSpec as is."""
    if isinstance(ref, TaskSpec):
        return ref
    if str(ref).endswith((".yaml", ".yml")) or Path(ref).is_file():
        return load_spec_file(ref)
    specs = builtin_specs()
    if ref not in specs:
        raise TaskError(
            f"unknown task {ref!r}; valid tasks: {', '.join(sorted(specs))} (or pass the path of a task YAML)"
        )
    return specs[str(ref)]
