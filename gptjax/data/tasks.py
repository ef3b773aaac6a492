"""Corpora as seqio Tasks and Mixtures, registered by name.

A *source* is a named corpus: a text or JSONL file, or a TFDS dataset. seqio makes the vocabulary part of
a Task (its output features), so the seqio Task for a source and a vocabulary is registered on first use
by `get_task(name, vocab_spec)` as `<source>.<vocabulary name>` (e.g. `tinyshakespeare.byte`), and a
mixture registers its component Tasks and itself the same way. Every Task yields one example per
document whose `targets` are the document's tokens followed by the vocabulary's EOS.

Mixture rates follow GPT-3 (Brown et al. 2020, Table 2.2): a component's rate divided by the sum of the
rates is the probability that any one training row comes from it, whatever the component's size. So a
small, curated corpus can be repeated for several epochs while a large one is not even seen once; over T
training rows component c is seen about T * p_c / rows_c times. seqio's own `Mixture.get_dataset` uses
the same rates; `gptjax.data.dataset` draws rows with them deterministically from (seed, step, row).

A source may also be synthetic (gptjax.data.synthetic: in-context-learning tasks generated from a seed):
its documents are token ids already, one per sequence, so its Task skips tokenisation.

`data.task` may also name what `gptjax data filter|dedup|decontaminate` prepared, by path, alone or in a
mixture spec with explicit rates (`resolve`), so a sweep trains on prepared corpora without code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from gptjax.config import ConfigError
from gptjax.data.synthetic import (
    CopiedSegments,
    FewShotClassification,
    Generator,
    LinearRegression,
    RepeatedTokens,
    SyntheticSource,
)
from gptjax.errors import InputNotFoundError
from gptjax.paths import data_dir
from gptjax.rundir import CorpusDir
from gptjax.tokenizers import get_vocabulary

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # dots separate the parts of seqio Task names


@dataclass(frozen=True)
class TextFileSource:
    """A corpus file, its documents held out as validation at the end.

    Documents are the whole file (no `separator`), the pieces between matches of the regex `separator`
    (stripped of surrounding whitespace; empty pieces dropped), or one per JSONL line (`jsonl_field` of
    each object). Text is otherwise kept exactly, line endings included. A corpus that is one document is
    split by characters, the last `validation_fraction` being validation (as nanoGPT splits
    tinyshakespeare); otherwise the last `validation_fraction` of the documents (at least one) is.
    """

    path: str  # relative paths are under gptjax.paths.data_dir()
    separator: str | None = None
    jsonl_field: str | None = None
    validation_fraction: float = 0.1
    splits: ClassVar[tuple[str, ...]] = ("train", "validation")

    def resolve(self) -> Path:
        path = Path(self.path).expanduser()
        path = path if path.is_absolute() else data_dir() / path
        if not path.is_file():
            raise InputNotFoundError(
                f"corpus file {path} does not exist (relative corpus paths are under the "
                f"data root {data_dir()}; set GPTJAX_DATA_DIR to change it)"
            )
        return path

    def documents(self, split: str) -> list[str]:
        """The documents of `split`, in file order."""
        docs = self._all_documents()
        if len(docs) == 1:
            cut = int(len(docs[0]) * (1 - self.validation_fraction))
            return [docs[0][:cut]] if split == "train" else [docs[0][cut:]]
        held_out = max(1, round(len(docs) * self.validation_fraction))
        return docs[:-held_out] if split == "train" else docs[-held_out:]

    def _all_documents(self) -> list[str]:
        path = self.resolve()
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"corpus file {path} is not UTF-8: {e}") from None
        if self.jsonl_field is not None:
            docs = [self._jsonl_text(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        elif self.separator is not None:
            docs = [d.strip() for d in re.split(self.separator, text) if d.strip()]
        else:
            docs = [text]
        if not any(docs):
            raise ValueError(f"corpus file {path} holds no documents")
        return docs

    def _jsonl_text(self, path: Path, line_no: int, line: str) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no} is not valid JSON: {e}") from None
        text = record.get(self.jsonl_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{path}:{line_no} has no string field {self.jsonl_field!r} (has {keys})")
        return text

    def dataset(self, split: str, shuffle_files: bool) -> tf.data.Dataset:
        """seqio's `dataset_fn`; documents always come in file order (the packer shuffles rows)."""
        return tf.data.Dataset.from_tensor_slices({"text": tf.constant(self.documents(split), tf.string)})

    def seqio_source(self, tfds_data_dir: str) -> seqio.DataSource:
        return seqio.FunctionDataSource(self.dataset, splits=self.splits)

    def fingerprint(self, tfds_data_dir: str) -> dict[str, Any]:
        """What the documents depend on, for cache keys: the file's identity and how it is split."""
        path = self.resolve()
        stat = path.stat()
        return {
            "kind": "text",
            "path": str(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "separator": self.separator,
            "jsonl_field": self.jsonl_field,
            "validation_fraction": self.validation_fraction,
        }


@dataclass(frozen=True)
class TfdsSource:
    """A TFDS dataset with a text feature, loaded with `tfds.load` (data_dir from `DataConfig`).

    Wrapped in a FunctionDataSource because seqio's TfdsDataSource looks up split sizes in the dataset
    info, which fails for datasets mocked by `tfds.testing.mock_data`.
    """

    tfds_name: str
    text_field: str = "text"
    splits: tuple[str, ...] = ("train", "validation", "test")

    def seqio_source(self, tfds_data_dir: str) -> seqio.DataSource:
        def dataset(split: str, shuffle_files: bool) -> tf.data.Dataset:
            examples = tfds.load(self.tfds_name, split=split, data_dir=tfds_data_dir or None, shuffle_files=False)
            return examples.map(lambda ex: {"text": ex[self.text_field]})

        return seqio.FunctionDataSource(dataset, splits=self.splits)

    def fingerprint(self, tfds_data_dir: str) -> dict[str, Any]:
        return {"kind": "tfds", "name": self.tfds_name, "text_field": self.text_field, "data_dir": tfds_data_dir}


def _synthetic_dataset(source: SyntheticSource) -> seqio.DataSource:
    def dataset(split: str, shuffle_files: bool) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(source.arrays(split))

    return seqio.FunctionDataSource(dataset, splits=source.splits)


Source = TextFileSource | TfdsSource | SyntheticSource
_SOURCES: dict[str, Source] = {}
_MIXTURES: dict[str, dict[str, float]] = {}


def _add_source(name: str, source: Source) -> None:
    if not _SOURCE_NAME.match(name):
        raise ValueError(f"task name {name!r} may hold only letters, digits and '_'")
    if name in _SOURCES or name in _MIXTURES:
        raise ValueError(f"task name {name!r} is already registered")
    _SOURCES[name] = source


def register_text_task(
    name: str,
    path: str | Path,
    *,
    separator: str | None = None,
    jsonl_field: str | None = None,
    validation_fraction: float = 0.1,
) -> None:
    """Register a text or JSONL corpus file as task `name` (see TextFileSource for the arguments).

    The file is only read when the task is first used, so a missing file is reported then, by path.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if separator is not None and jsonl_field is not None:
        raise ValueError(f"task {name!r}: give a separator (text file) or a jsonl_field (JSONL), not both")
    _add_source(name, TextFileSource(str(path), separator, jsonl_field, validation_fraction))


def register_tfds_task(
    name: str, tfds_name: str, *, text_field: str = "text", splits: tuple[str, ...] = ("train", "validation", "test")
) -> None:
    """Register the TFDS dataset `tfds_name` (one document per example, from `text_field`) as task `name`."""
    _add_source(name, TfdsSource(tfds_name, text_field, tuple(splits)))


def register_synthetic_task(
    name: str, generator: Generator, *, seed: int = 0, sizes: tuple[int, int, int] = (1 << 15, 1024, 1024)
) -> None:
    """Register a synthetic generator (gptjax.data.synthetic) as task `name`: `sizes` sequences in its
    train, validation and test splits, generated from `seed`."""
    _add_source(name, SyntheticSource(generator, seed, tuple(sizes)))  # type: ignore[arg-type]


def synthetic_source(name: str) -> SyntheticSource:
    """The synthetic source registered as `name` (probes draw their sequences from its generator)."""
    source = _SOURCES.get(name)
    if not isinstance(source, SyntheticSource):
        synthetic = sorted(n for n, s in _SOURCES.items() if isinstance(s, SyntheticSource))
        raise ConfigError(f"{name!r} is not a synthetic task; synthetic tasks: {', '.join(synthetic)}")
    return source


def register_mixture(name: str, rates: Mapping[str, float]) -> None:
    """Register a mixture of registered tasks; rates are relative sampling weights (module docstring)."""
    if not _SOURCE_NAME.match(name):
        raise ValueError(f"mixture name {name!r} may hold only letters, digits and '_'")
    if name in _SOURCES or name in _MIXTURES:
        raise ValueError(f"task name {name!r} is already registered")
    unknown = [task for task in rates if task not in _SOURCES]
    if unknown or not rates:
        raise ValueError(
            f"mixture {name!r}: components {unknown or 'none given'} are not registered tasks; "
            f"valid: {', '.join(sorted(_SOURCES))}"
        )
    bad = {task: rate for task, rate in rates.items() if not (math.isfinite(rate) and rate > 0)}
    if bad:
        raise ValueError(f"mixture {name!r}: rates must be positive and finite, got {bad}")
    _MIXTURES[name] = dict(rates)


def task_names() -> list[str]:
    """Every registered task and mixture name."""
    return sorted([*_SOURCES, *_MIXTURES])


def resolve(task: str) -> str:
    """The registered name of a `data.task` value, which is a registered task or mixture, or, registered
    on first use:
    - a prepared corpus, by path: a directory `gptjax data` wrote (gptjax.rundir.CorpusDir) or a JSONL file
      with a "text" field;
    - a mixture spec `component:rate,component:rate,...` of registered tasks and prepared corpora, rates as
      in register_mixture, e.g. `prep/cc_filtered:3,wikitext2:1`.
    """
    if task in _SOURCES or task in _MIXTURES:
        return task
    if "," in task or _RATE.search(task):
        return _mixture_spec(task)
    return _prepared_corpus(task)


_RATE = re.compile(r":\s*[-+0-9.eE]+\s*$")


def _unknown(task: str, detail: str = "") -> ConfigError:
    return ConfigError(
        f"unknown data.task {task!r}{detail}; valid tasks: {', '.join(sorted(_SOURCES))}; mixtures: "
        f"{', '.join(sorted(_MIXTURES))}; or a prepared corpus by path (a `gptjax data` output directory or a "
        ".jsonl file), or a mixture spec NAME_OR_PATH:RATE,..."
    )


def _prepared_corpus(task: str) -> str:
    if "://" in task:
        raise ConfigError(f"data.task {task!r}: training reads prepared corpora from local disk; copy it there first")
    path = Path(task).expanduser().absolute()
    if path.is_dir():
        corpus = CorpusDir(path)
        if not corpus.exists():
            raise ConfigError(
                f"data.task {task!r} is a directory but not a complete prepared corpus (no {corpus.report_file})"
            )
        path = Path(corpus.documents_file)
    elif not (path.is_file() and path.suffix == ".jsonl"):
        raise _unknown(task)
    slug = re.sub(r"[^A-Za-z0-9_]", "_", path.parent.name if path.name == "documents.jsonl" else path.stem)
    name = f"corpus_{slug[:40]}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name not in _SOURCES:
        register_text_task(name, path, jsonl_field="text")
    return name


def _mixture_spec(spec: str) -> str:
    rates: dict[str, float] = {}
    for part in spec.split(","):
        component, _, rate = part.strip().rpartition(":")
        try:
            value = float(rate)
        except ValueError:
            raise _unknown(spec, f" (its component {part.strip()!r} is not NAME_OR_PATH:RATE)") from None
        name = resolve(component.strip())
        if name in _MIXTURES or name in rates:
            raise ConfigError(f"data.task {spec!r}: component {component!r} is a mixture or appears twice")
        rates[name] = value
    name = "mix_" + hashlib.sha256(json.dumps(list(rates.items())).encode()).hexdigest()[:8]
    if name not in _MIXTURES:
        try:
            register_mixture(name, rates)
        except ValueError as err:
            raise ConfigError(f"data.task {spec!r}: {err}") from None
    return name


def _seqio_name(name: str, vocab: seqio.Vocabulary, tfds_data_dir: str) -> str:
    """`<name>.<vocabulary name>`, plus a hash of a non-default TFDS data_dir when a TFDS source is involved."""
    parts = [name, re.sub(r"\W", "_", vocab.name)]
    sources = _MIXTURES.get(name, {name: 1.0})
    if tfds_data_dir and any(isinstance(_SOURCES[s], TfdsSource) for s in sources):
        parts.append("tfds_" + hashlib.sha256(tfds_data_dir.encode()).hexdigest()[:8])
    return ".".join(parts)


def _source_task(name: str, vocab: seqio.Vocabulary, tfds_data_dir: str) -> seqio.Task:
    task_name = _seqio_name(name, vocab, tfds_data_dir)
    if task_name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(task_name)
    source = _SOURCES[name]
    if isinstance(source, SyntheticSource):
        return _synthetic_task(task_name, name, source, vocab)
    return seqio.TaskRegistry.add(
        task_name,
        source=source.seqio_source(tfds_data_dir),
        output_features={"targets": seqio.Feature(vocab, add_eos=True)},
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos,
        ],
    )


def _synthetic_task(task_name: str, name: str, source: SyntheticSource, vocab: seqio.Vocabulary) -> seqio.Task:
    """Token sequences as `targets` (plus EOS); a regression source's float `xs` and `ys` as they are."""
    if isinstance(source.generator, LinearRegression):
        values = seqio.PassThroughVocabulary(1)
        features = {
            "xs": seqio.Feature(values, add_eos=False, dtype=tf.float32, rank=2),
            "ys": seqio.Feature(values, add_eos=False, dtype=tf.float32),
        }
        return seqio.TaskRegistry.add(task_name, source=_synthetic_dataset(source), output_features=features)
    source.check_vocabulary(name, vocab.vocab_size, vocab.eos_id)
    return seqio.TaskRegistry.add(
        task_name,
        source=_synthetic_dataset(source),
        output_features={"targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)},
        preprocessors=[seqio.preprocessors.append_eos],
    )


def get_task(name: str, vocab_spec: str, tfds_data_dir: str = "") -> seqio.Task | seqio.Mixture:
    """The seqio Task (or Mixture) for a `data.task` value (see resolve) and vocabulary, registered on first use."""
    name = resolve(name)
    vocab = get_vocabulary(vocab_spec)
    if name in _SOURCES:
        return _source_task(name, vocab, tfds_data_dir)
    mixture_name = _seqio_name(name, vocab, tfds_data_dir)
    if mixture_name not in seqio.MixtureRegistry.names():
        tasks = [(_source_task(source, vocab, tfds_data_dir).name, rate) for source, rate in _MIXTURES[name].items()]
        seqio.MixtureRegistry.add(mixture_name, tasks)
    return seqio.MixtureRegistry.get(mixture_name)


@dataclass(frozen=True)
class Component:
    """One seqio Task of a task or mixture, its normalised sampling rate and what its data depends on."""

    task: seqio.Task
    rate: float
    fingerprint: dict[str, Any]


def components(name: str, vocab_spec: str, tfds_data_dir: str = "") -> list[Component]:
    """The components of a `data.task` value's task (one, rate 1) or mixture, in registration order.

    Raises InputNotFoundError, naming the path, if a component's corpus file is missing.
    """
    name = resolve(name)
    get_task(name, vocab_spec, tfds_data_dir)
    vocab = get_vocabulary(vocab_spec)
    rates = _MIXTURES.get(name, {name: 1.0})
    real_valued = [
        s for s in rates if isinstance(source := _SOURCES[s], SyntheticSource) and source.generator.kind != "tokens"
    ]
    if real_valued:
        raise ConfigError(
            f"data.task {name!r}: {real_valued} are real-valued synthetic tasks, not token streams; "
            "train them with gptjax.regression (bench/icl_evidence.py shows how)"
        )
    total = sum(rates.values())
    return [
        Component(_source_task(source, vocab, tfds_data_dir), rate / total, _SOURCES[source].fingerprint(tfds_data_dir))
        for source, rate in rates.items()
    ]


# Built-in corpora (paths under gptjax.paths.data_dir()) and a GPT-3-style mixture.
register_text_task("tinyshakespeare", "corpora/tinyshakespeare/input.txt")
register_text_task("tinystories_sample", "corpora/tinystories/tinystories_sample.txt", separator=r"<\|endoftext\|>")
# WikiText-2 raw test: articles start at a ` = Title = ` line (section headings are ` = = Heading = = `).
# This copy has no blank lines around titles, so two formula lines of "Constant k filter" that look like
# titles split that article in three: 62 documents for the 60 articles.
register_text_task("wikitext2", "corpora/wikitext-2-raw/wiki.test.raw", separator=r"(?m)^(?= = [^=].* = \r?$)")
register_tfds_task("tiny_shakespeare", "tiny_shakespeare")
# The two corpora are about the same size; like GPT-3's upweighting of its curated sets, Shakespeare is
# sampled three times as often, so it is seen for about three times as many epochs.
register_mixture("shakespeare_wikitext", {"tinyshakespeare": 0.75, "wikitext2": 0.25})
# Synthetic in-context-learning tasks (gptjax.data.synthetic; eval/icl probes them; bench/icl_evidence.py
# trains on them). Byte-vocabulary ids; rows are whole sequences with seq_len = the generator's length.
register_synthetic_task("repeat_tokens", RepeatedTokens())  # 32 random tokens, twice: 64 tokens (the probe)
register_synthetic_task("repeat_tokens_varied", RepeatedTokens(min_segment=16))  # periods 16..32 (to train on)
register_synthetic_task("repeat_tokens_16", RepeatedTokens(segment=16))  # 16 tokens twice (bench/icl_evidence.py)
register_synthetic_task("repeat_tokens_16_varied", RepeatedTokens(segment=16, min_segment=8))  # periods 8..16
# 64 tokens in pieces of 8..16, 3/4 of them copied from anywhere earlier: only content finds the copy (induction).
register_synthetic_task("copied_segments_64", CopiedSegments())
# Labels remapped in every sequence, bursty contexts of 2 classes x 4 (Chan et al. 2022's few-shot form).
register_synthetic_task("fewshot_bursty", FewShotClassification())
# The same classes in uniform (non-bursty) contexts: the query's class is rarely in the context.
register_synthetic_task("fewshot_uniform", FewShotClassification(p_bursty=0.0))
# Fixed labels, mostly bursty, within-class noise (Chan et al.'s data) with few to many classes: few are learned
# in the weights, many in context (bench/icl_evidence.py sweeps them). 3840 + 256 held-out = 64 ** 2 items.
for _classes in (64, 512, 3840):
    register_synthetic_task(
        f"fewshot_fixed_{_classes}",
        FewShotClassification(n_classes=_classes, labels="fixed", p_bursty=0.9, noise=0.1),
    )
register_synthetic_task("linear_regression", LinearRegression())  # real-valued: gptjax.regression
