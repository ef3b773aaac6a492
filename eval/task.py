"""A task bound to its data: which documents are scored, where few-shot examples come from, and the
prompts and model requests of each document (lm-eval's `ConfigurableTask.fewshot_context` and
`construct_requests`, for the plain-text case)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval import templates
from eval.data import (
    DETOKENIZERS,
    DOC_PROCESSORS,
    Documents,
    default_benchmark_dir,
    default_corpus_dir,
    read_corpus,
    read_jsonl,
    read_tfds,
)
from eval.fewshot import Doc, qa_turn
from eval.registry import FEWSHOT_EXCLUSIONS, TaskError, TaskSpec, get_spec
from eval.requests import GenerationRequest


@dataclass(frozen=True)
class Instance:
    """Everything the model is asked about one document."""

    doc_id: int
    doc: Doc
    fewshot_ids: list[int]
    contexts: list[str]  # one prompt, or one per choice for multiple_input tasks
    requests: list[tuple[str, str]] = field(default_factory=list)  # (context, continuation) to score
    calibration: list[tuple[str, str]] = field(default_factory=list)  # (calibration context, continuation)
    generation: GenerationRequest | None = None
    text: str | None = None  # the document scored whole (loglikelihood_rolling)


class Task:
    def __init__(
        self,
        spec: TaskSpec | str | Path,
        benchmark_dir: str | Path | None = None,
        corpus_dir: str | Path | None = None,
        description: str | None = None,
        fewshot_exclusion: str | None = None,
    ) -> None:
        self.spec = get_spec(spec)
        self.name = self.spec.task
        self.fewshot_exclusion = fewshot_exclusion or self.spec.fewshot_exclusion
        if self.fewshot_exclusion not in FEWSHOT_EXCLUSIONS:
            raise TaskError(f"fewshot_exclusion {self.fewshot_exclusion!r} is not one of {list(FEWSHOT_EXCLUSIONS)}")
        self.benchmark_dir = Path(benchmark_dir) if benchmark_dir is not None else default_benchmark_dir()
        self.corpus_dir = Path(corpus_dir) if corpus_dir is not None else default_corpus_dir()
        self.description = self.spec.description if description is None else description
        self._docs: dict[str, list[Doc]] = {}

    @property
    def has_choices(self) -> bool:
        return self.spec.doc_to_choice is not None

    # ----------------------------------------------------------------------------------------------------
    # Documents and splits.

    def split_path(self, split: str) -> Path:
        if split in self.spec.data_files:
            return Path(self.spec.data_files[split])
        return self.benchmark_dir / (self.spec.dataset or self.name) / f"{split}.jsonl"

    def docs(self, split: str) -> list[Doc]:
        """A split's documents, through the task's `process_docs` if it has one (as lm-eval, for every split)."""
        if split not in self._docs:
            spec = self.spec
            docs = (
                read_tfds(spec.tfds_name, split, spec.tfds_data_dir)
                if spec.tfds_name
                else read_jsonl(self.split_path(split))
            )
            process = self.spec.process_docs
            if process is not None:
                process = DOC_PROCESSORS[process] if isinstance(process, str) else process
                try:
                    docs = [dict(doc) for doc in process(Documents(docs))]
                except (KeyError, TypeError, ValueError, AttributeError) as err:
                    where = f"task {self.name}: process_docs failed on {self.split_path(split)}"
                    raise TaskError(f"{where}: {type(err).__name__}: {err}") from None
            self._docs[split] = docs
        return self._docs[split]

    def _has_split(self, split: str) -> bool:
        """Whether `split` has data: a JSONL file, or any declared split of a TFDS dataset (read_tfds checks)."""
        return self.spec.tfds_name is not None or self.split_path(split).is_file()

    @property
    def eval_split(self) -> str:
        return self.spec.eval_split

    def eval_docs(self) -> list[Doc]:
        """The scored documents; a corpus's documents are {"page": text}."""
        if self.spec.output_type == "loglikelihood_rolling":
            return [{"page": page} for page in read_corpus(self.corpus_dir / self.spec.corpus, self.spec.documents)]
        return self.docs(self.eval_split)

    @functools.cached_property
    def fewshot_split(self) -> str:
        """lm-eval's choice (fewshot_split, else train, else validation, else test), skipping declared
        splits whose file is missing: e.g. HellaSwag and COPA fall back to validation here."""
        spec = self.spec
        if spec.fewshot_split is not None:
            if not self._has_split(spec.fewshot_split):
                raise TaskError(
                    f"task {self.name}: fewshot_split {spec.fewshot_split!r} has no data at "
                    f"{self.split_path(spec.fewshot_split)}"
                )
            return spec.fewshot_split
        declared = [s for s in (spec.training_split, spec.validation_split, spec.test_split) if s]
        for split in declared:
            if self._has_split(split):
                return split
        raise TaskError(
            f"task {self.name}: no few-shot split has data; looked for {declared} at "
            f"{[str(self.split_path(s)) for s in declared]}"
        )

    @property
    def fewshot_fallback(self) -> bool:
        """True when few-shot examples do not come from the split lm-eval would use."""
        spec = self.spec
        wanted = spec.fewshot_split or spec.training_split or spec.validation_split or spec.test_split
        return self.fewshot_split != wanted

    @property
    def excludes_eval_doc(self) -> bool:
        """Whether the sampler must skip the scored document. lm-eval 0.4 does so iff the configured
        fewshot_split equals the configured test_split (which includes "both unset"); gptjax's default rule
        ("scored_split") also does whenever examples are drawn from the scored split, so a document never sees
        itself; `fewshot_exclusion: lm_eval` applies lm-eval's rule alone, to reproduce its examples."""
        spec = self.spec
        lm_eval = spec.fewshot_split == spec.test_split
        return lm_eval if self.fewshot_exclusion == "lm_eval" else lm_eval or self.fewshot_split == self.eval_split

    def fewshot_docs(self) -> list[Doc]:
        return self.docs(self.fewshot_split)

    # ----------------------------------------------------------------------------------------------------
    # Rendering.

    def _render(self, what: str, fn: Any, doc: Doc, *args: Any) -> Any:
        try:
            return fn(*args)
        except (templates.TemplateError, KeyError, IndexError, TypeError) as err:
            raise TaskError(f"task {self.name}: {what} failed on document {str(doc)[:300]}: {err}") from None

    def doc_to_text(self, doc: Doc) -> str | int:
        return self._render("doc_to_text", templates.doc_to_text, doc, self.spec.doc_to_text, doc, self.has_choices)

    def doc_to_target(self, doc: Doc) -> int | str | list:
        return self._render(
            "doc_to_target", templates.doc_to_target, doc, self.spec.doc_to_target, doc, self.has_choices
        )

    def doc_to_choice(self, doc: Doc) -> list[str]:
        return self._render("doc_to_choice", templates.doc_to_choice, doc, self.spec.doc_to_choice, doc)

    def gold_index(self, doc: Doc) -> int:
        """Index of the correct choice (for multiple_input tasks doc_to_text gives it)."""
        gold = self.doc_to_text(doc) if self.spec.multiple_input else self.doc_to_target(doc)
        choices = self.doc_to_choice(doc)
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -1
        if not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise TaskError(
                f"task {self.name}: gold answer {gold!r} is not an index into the {len(choices)} "
                f"choices of document {str(doc)[:300]}"
            )
        return gold

    def _description(self, doc: Doc) -> str:
        if not self.description:
            return ""
        if self.description in doc:
            return str(doc[self.description])
        return self._render("description", templates.render, doc, self.description, doc)

    def _example(self, doc: Doc) -> str:
        spec = self.spec
        question, target = self.doc_to_text(doc), self.doc_to_target(doc)
        choices = self.doc_to_choice(doc) if self.has_choices else None
        if spec.multiple_input:  # the question is the gold choice's context; the target is shared
            question, choices = choices[question], None
        if not isinstance(question, str):
            raise TaskError(
                f"task {self.name}: doc_to_text gave {question!r}, expected text "
                "(an index is only valid with multiple_input: true)"
            )
        return qa_turn(question, target, choices, spec.target_delimiter, spec.fewshot_delimiter)

    def contexts(self, doc: Doc, examples: Sequence[Doc]) -> list[str]:
        """The prompt(s) for `doc`: description, solved examples, then the document's own question."""
        prefix = self._description(doc) + "".join(self._example(e) for e in examples)
        if self.spec.multiple_input:
            return [prefix + c for c in self.doc_to_choice(doc)]
        question = self.doc_to_text(doc)
        if not isinstance(question, str):
            raise TaskError(
                f"task {self.name}: doc_to_text gave {question!r}, expected text "
                "(an index is only valid with multiple_input: true)"
            )
        return [prefix + question]

    # ----------------------------------------------------------------------------------------------------
    # Requests.

    def instance(self, doc_id: int, doc: Doc, fewshot_ids: Sequence[int] = ()) -> Instance:
        spec = self.spec
        if spec.output_type == "loglikelihood_rolling":
            text = doc["page"]
            if spec.detokenizer:
                text = DETOKENIZERS[spec.detokenizer](text)
            return Instance(doc_id, doc, [], [], text=text)
        pool = self.fewshot_docs() if fewshot_ids else []
        contexts = self.contexts(doc, [pool[i] for i in fewshot_ids])
        common = dict(doc_id=doc_id, doc=doc, fewshot_ids=list(fewshot_ids), contexts=contexts)
        delimiter = spec.target_delimiter
        if spec.output_type == "loglikelihood":
            target = self.doc_to_target(doc)
            return Instance(**common, requests=[(contexts[0], str(target))])
        if spec.output_type == "generate_until":
            return Instance(
                **common,
                generation=GenerationRequest(
                    contexts[0],
                    tuple(spec.until),
                    spec.generation_kwargs.get("max_gen_toks"),
                    spec.decoding.request_options(),
                ),
            )
        choices = self.doc_to_choice(doc)
        if spec.multiple_input:
            continuation = delimiter + str(self.doc_to_target(doc))
            return Instance(**common, requests=[(c, continuation) for c in contexts])
        calibration = (
            [(spec.calibration_context, delimiter + c) for c in choices] if spec.calibration_context is not None else []
        )
        return Instance(**common, requests=[(contexts[0], delimiter + c) for c in choices], calibration=calibration)

    def shown_text(self, instance: Instance) -> str:
        """What the model sees for `instance`, with the correct answer where the request holds one (a
        generation prompt is only its context)."""
        if instance.text is not None:
            return instance.text
        if instance.generation is not None:
            return instance.generation.context
        if self.spec.output_type == "multiple_choice":
            return "".join(instance.requests[self.gold_index(instance.doc)])
        return "".join(instance.requests[0])
