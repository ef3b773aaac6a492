"""gptjax data filter|dedup|decontaminate|stats (gptjax.prep) and what consumes their outputs: planted
near-duplicates found exactly, the Pareto keep rule against its closed form, a planted 13-gram found and a
frequent one ignored, bad inputs refused before anything is written, `gptjax eval --dirty` scoring the
clean subset into the report, and a prepared corpus trained on through a mixture spec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from eval.contamination import task_texts
from eval.lm import ModelInfo
from eval.report import build_report
from eval.requests import LoglikelihoodResult
from eval.runner import evaluate, write_results
from gptjax.cli import main
from gptjax.config import ConfigError, DataConfig
from gptjax.data import make_dataset
from gptjax.data.tasks import resolve
from gptjax.prep.contamination import (
    ContaminationConfig,
    ContaminationError,
    DirtySet,
    EvalTexts,
    decontaminate,
    read_dirty,
    read_dirty_sets,
)
from gptjax.prep.corpus import CorpusFormat, input_files, output_dir, word_spans, words
from gptjax.prep.dedup import jaccard, shingles
from gptjax.prep.quality import keep_probability, pareto_keep
from gptjax.rundir import CorpusDir
from gptjax.train import Trainer

from train_helpers import LossRecorder, small_run

VOCAB = np.array([f"w{i}" for i in range(20_000)])


def _random_words(rng: np.random.Generator, n: int) -> list[str]:
    return list(rng.choice(VOCAB, n))


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_words_and_their_spans_agree():
    text = "The U.S.-led  'coalition' (2003) — didn't; Ünïcode_ok!"
    ws, spans = word_spans(text)
    assert ws == words(text) == ["the", "usled", "coalition", "2003", "didnt", "ünïcode_ok"]
    assert [text[a:b] for a, b in spans][1] == "U.S.-led"


def test_minhash_dedup_finds_planted_near_duplicates(tmp_path, capsys):
    """Copies with 1-2 of 150 words replaced (shingle Jaccard ~0.9) are found, copies with 15-30 replaced
    (0.45 and less) are not: precision and recall 1 at threshold 0.7, exact copies included."""
    rng = np.random.default_rng(0)
    base = [_random_words(rng, 150) for _ in range(40)]
    texts = [" ".join(b) for b in base]
    truth, similarities = set(), []
    for i, edits in enumerate([1] * 10 + [2] * 10 + [15] * 10 + [30] * 10):
        copy = list(base[i])
        for p in rng.choice(len(copy), edits, replace=False):
            copy[p] = f"new{i}_{p}"
        similarity = jaccard(shingles(texts[i], 5), shingles(" ".join(copy), 5))
        similarities.append(similarity)
        texts.append(" ".join(copy))
        if similarity >= 0.7:
            truth.add((f"d{i}", f"d{len(texts) - 1}"))
    texts.append("  " + texts[3].replace(" ", " \n "))  # an exact duplicate up to whitespace
    truth.add(("d3", f"d{len(texts) - 1}"))
    assert min(similarities[:20]) > 0.85 and max(similarities[20:]) < 0.45

    corpus, out = _write_jsonl(tmp_path / "corpus.jsonl", texts), tmp_path / "deduped"
    assert main(["data", "dedup", str(corpus), "--out", str(out), "--threshold", "0.7"]) == 0
    flagged = {(c["kept"], d["id"]) for c in _read_jsonl(CorpusDir(out).clusters_file) for d in c["duplicates"]}
    precision, recall = len(flagged & truth) / len(flagged), len(flagged & truth) / len(truth)
    assert (precision, recall) == (1.0, 1.0) and len(truth) == 21
    kept = [d["id"] for d in _read_jsonl(CorpusDir(out).documents_file)]
    assert kept == [f"d{i}" for i in range(len(texts)) if f"d{i}" not in {dup for _, dup in truth}]
    report = json.loads(CorpusDir(out).report_file.read_text())
    assert (report["exact_duplicates"], report["near_duplicates"], report["kept"]) == (1, 20, len(texts) - 21)
    assert "1 exact and 20 near duplicates" in capsys.readouterr().out


@pytest.mark.parametrize("alpha", [9.0, 2.0])
def test_pareto_keep_rate_matches_its_closed_form(alpha):
    """numpy's pareto(a) is Lomax: P(X > t) = (1 + t)^-a, so P(keep | s) = P(X > 1 - s) = (2 - s)^-a."""
    levels, n = np.array([0.0, 0.3, 0.6, 0.9, 1.0]), 100_000
    scores = np.repeat(levels, n)
    keep = pareto_keep(scores, alpha, seed=0)
    assert np.array_equal(keep, pareto_keep(scores, alpha, seed=0))
    for s, p in zip(levels, keep_probability(levels, alpha)):
        assert p == pytest.approx((2 - s) ** -alpha)
        rate = keep[scores == s].mean()
        assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n), (s, rate, p)  # 4 binomial standard errors
    assert keep[scores == 1.0].all() and keep[scores == 0.0].mean() < 0.3


def test_filter_keeps_reference_like_documents(tmp_path, capsys):
    """Raw text that is mostly noise with some reference-like prose, as GPT-3's Common Crawl was."""
    rng = np.random.default_rng(1)
    prose = np.array("the of and a to in is was for on that with as by his at from it he her".split())
    good = [" ".join(rng.choice(prose, 40)) for _ in range(220)]
    noise = [" ".join("".join(rng.choice(list("qxzjkv"), 5)) for _ in range(40)) for _ in range(400)]
    reference = _write_jsonl(tmp_path / "ref.jsonl", good[:200])
    raw = _write_jsonl(tmp_path / "raw.jsonl", good[200:] + noise)
    out = CorpusDir(tmp_path / "filtered")
    args = ["data", "filter", str(raw), "--reference", str(reference), "--out", str(out.path), "--features", "4096"]
    assert main(args) == 0
    report = json.loads(out.report_file.read_text())
    assert report["classifier"]["holdout_auc"] > 0.9 and report["documents"] == 420
    kept = _read_jsonl(out.documents_file)
    assert len(kept) == report["kept"] and all(0 <= d["quality"] <= 1 for d in kept)
    kept_good, kept_noise = sum(d["text"] in good for d in kept) / 20, sum(d["text"] in noise for d in kept) / 400
    assert kept_good >= 0.1 and kept_noise <= 0.02, (kept_good, kept_noise)  # at alpha 9 even s=0.8 keeps 19%
    assert abs(report["keep_rate"] - report["expected_keep_rate"]) < 4 * math.sqrt(0.25 / 420)
    assert sum(report["score_histogram"]["counts"]) == 420 and "held-out AUC" in capsys.readouterr().out


def _contamination_case(tmp_path: Path, rng: np.random.Generator) -> tuple[list[str], Path, str]:
    """Eval texts 0-3 and a corpus: doc 0's 13-gram is planted once (with other case and punctuation),
    doc 1's 13-gram sits in 11 corpus documents, doc 2 (7 words) is quoted whole, doc 3 appears nowhere."""
    planted, frequent, short = (_random_words(rng, k) for k in (13, 13, 7))
    texts = [
        " ".join(_random_words(rng, 10) + planted + _random_words(rng, 10)),
        " ".join(_random_words(rng, 5) + frequent + _random_words(rng, 5)),
        " ".join(short),
        " ".join(_random_words(rng, 30)),
    ]
    loud = " ".join(w.upper() + ("," if i % 3 == 0 else "") for i, w in enumerate(planted))
    corpus = [" ".join(_random_words(rng, 60)) + f' "{loud}." ' + " ".join(_random_words(rng, 60))]
    corpus += [" ".join(_random_words(rng, 20) + frequent + _random_words(rng, 20)) for _ in range(11)]
    corpus += ["As they say, " + " ".join(short) + " " + " ".join(_random_words(rng, 80))]
    corpus += [" ".join(_random_words(rng, 50)) for _ in range(5)]
    return texts, _write_jsonl(tmp_path / "corpus.jsonl", corpus), " ".join(planted)


def test_contamination_finds_a_planted_13gram_and_ignores_a_frequent_one(tmp_path):
    texts, corpus, planted = _contamination_case(tmp_path, np.random.default_rng(2))
    tasks = [EvalTexts("toy", "test", tuple(texts))]
    inputs, fmt = input_files([corpus]), CorpusFormat()
    report = decontaminate(inputs, fmt, tasks, ContaminationConfig(), output_dir(tmp_path / "dc"))
    dirty = read_dirty(CorpusDir(tmp_path / "dc").dirty_file("toy"))
    assert dirty.ids == {0, 2} and (dirty.split, dirty.num_docs) == ("test", 4)
    entries = json.loads(Path(dirty.path).read_text())["dirty"]
    assert entries[0] == {"doc_id": 0, "ngram": planted, "corpus_doc": "d0"}
    assert report["tasks"]["toy"] == {"split": "test", "num_docs": 4, "dirty": 2, "clean": 2}
    assert report["corpus"]["frequent_ngrams_ignored"] == 1 and report["corpus"]["contaminated"] == 2
    # The corpus is cut GPT-3's way: d0 loses the match and 200 characters either side; the short
    # pieces left (each under 200 characters) are dropped, and the frequent n-gram's documents stay.
    written = {d["id"]: d["text"] for d in _read_jsonl(CorpusDir(tmp_path / "dc").documents_file)}
    assert "d0" not in written and not any(i.startswith("d0#") for i in written)
    assert all(f"d{i}" in written for i in range(1, 12)) and report["corpus"]["dropped"] == 1
    assert [i for i in written if i.startswith("d12")] == ["d12#0"] and planted not in " ".join(written.values())
    # With the frequency limit above 11 documents, the frequent n-gram counts too.
    loose = ContaminationConfig(max_doc_freq=11)
    decontaminate(inputs, fmt, tasks, loose, output_dir(tmp_path / "loose"))
    assert read_dirty(CorpusDir(tmp_path / "loose").dirty_file("toy")).ids == {0, 1, 2}


def _write_task(tmp_path: Path, questions: list[str]) -> Path:
    rows = [{"question": q, "options": ["yes", "nope"], "label": i % 2} for i, q in enumerate(questions)]
    (tmp_path / "toy_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        "task: toy_qa",
        "output_type: multiple_choice",
        "data_files: {test: toy_test.jsonl}",
        "test_split: test",
        'doc_to_text: "Question: {{question}}\\nAnswer:"',
        'doc_to_choice: "{{options}}"',
        'doc_to_target: "{{label}}"',
        "metrics: [acc]",
    ]
    path = tmp_path / "toy_qa.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _bad_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A JSONL file whose line 601 is broken (after more documents than one hashing batch) and a good one."""
    good = [json.dumps({"text": f"document {i} " + "words " * 20}) for i in range(600)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good + ['{"text": "unterminated']) + "\n")
    return bad, _write_jsonl(tmp_path / "good.jsonl", [f"good document {i}" for i in range(5)])


COMMANDS = {
    "stats": lambda bad, good, out, task: ["stats", str(bad), "--out", str(out)],
    "filter": lambda bad, good, out, task: ["filter", str(bad), "--reference", str(good), "--out", str(out)],
    "filter-reference": lambda bad, good, out, task: ["filter", str(good), "--reference", str(bad), "--out", str(out)],
    "dedup": lambda bad, good, out, task: ["dedup", str(good), str(bad), "--out", str(out)],
    "decontaminate": lambda bad, good, out, task: ["decontaminate", str(bad), "--tasks", str(task), "--out", str(out)],
}


@pytest.mark.parametrize("kind", ["missing", "malformed"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_inputs_fail_naming_file_and_line_and_write_nothing(tmp_path, capsys, command, kind):
    bad, good = _bad_inputs(tmp_path)
    if kind == "missing":
        bad = tmp_path / "absent.jsonl"
    task, out = _write_task(tmp_path, ["Is it?"]), tmp_path / "out"
    assert main(["data", *COMMANDS[command](bad, good, out, task)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gptjax data: error: ") and len(error.strip().splitlines()) == 1
    assert (f"{bad}:601: invalid JSON" if kind == "malformed" else f"input file {bad} does not exist") in error
    assert not out.exists()


def test_a_complete_prepared_corpus_is_never_overwritten(tmp_path, capsys):
    _, good = _bad_inputs(tmp_path)
    assert main(["data", "stats", str(good), "--out", str(tmp_path / "stats.json")]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["documents"], stats["words"], stats["exact_duplicates"]) == (5, 15, 0)
    assert main(["data", "dedup", str(good), "--out", str(tmp_path / "out")]) == 0
    before = CorpusDir(tmp_path / "out").documents_file.read_text()
    assert main(["data", "dedup", str(good), "--out", str(tmp_path / "out")]) == 2
    assert "already holds a prepared corpus" in capsys.readouterr().err
    assert CorpusDir(tmp_path / "out").documents_file.read_text() == before


class _FakeLM:
    """Prefers the shorter continuation ("yes"), so even-numbered (label 0) documents are right."""

    info = ModelInfo("fake", params=10, non_embedding_params=5)
    tokenizer_name = "fake"
    max_length = 2048

    def loglikelihood(self, requests):
        return [LoglikelihoodResult(-float(len(cont)), False) for _, cont in requests]


def test_eval_scores_the_clean_subset_and_the_report_shows_both(tmp_path):
    rng = np.random.default_rng(3)
    questions = [" ".join(_random_words(rng, 20)) for _ in range(6)]
    task = _write_task(tmp_path, questions)
    # Docs 0 and 2 (both answered right) leak into the corpus with their answers.
    corpus = _write_jsonl(tmp_path / "web.jsonl", [f"Q: {questions[0]} A: yes", f"{questions[2]} yes. Fin"])
    texts = task_texts([str(task)])
    assert texts[0].texts[0] == f"Question: {questions[0]}\nAnswer: yes"
    out = CorpusDir(tmp_path / "dc")
    decontaminate(input_files([corpus]), CorpusFormat(), texts, ContaminationConfig(), output_dir(out.path))
    dirty = read_dirty_sets([out.path])
    assert dirty["toy_qa"].ids == {0, 2}

    results = evaluate(_FakeLM(), [str(task)], dirty=dirty, bootstrap_iters=10)
    (result,) = results["results"]
    assert result["metrics"]["acc"] == pytest.approx(3 / 6)  # docs 0, 2, 4 right
    clean = result["clean"]
    assert (clean["num_docs"], clean["num_dirty"]) == (4, 2) and clean["metrics"]["acc"] == pytest.approx(1 / 4)
    assert clean["dirty_file"] == str(out.dirty_file("toy_qa"))

    path = write_results(tmp_path / "results.json", results)
    report = build_report([path], tmp_path / "report")["report.md"].read_text()
    section = report.split("## Contamination: clean subset vs all")[1].split("\n## ")[0]
    assert "| toy_qa | acc ↑ | 0 | fake | 50.0 ± 22.4 | 6 | 25.0 ± 25.0 | 4 | -25.0 |" in section

    stale = DirtySet("toy_qa", "test", 7, frozenset({1}), "stale.json")
    with pytest.raises(ContaminationError, match="stale.json lists dirty documents of 7 test documents"):
        evaluate(_FakeLM(), [str(task)], dirty={"toy_qa": stale})


def test_malformed_dirty_file_is_named(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"task": "t", "split": "test", "num_docs": 3, "dirty": [{"doc_id": 5}]}))
    with pytest.raises(ContaminationError, match=r"x.json: dirty\[0\].doc_id must be an id below num_docs=3"):
        read_dirty(path)


def test_a_prepared_corpus_trains_through_a_mixture(tmp_path):
    prepared = {}
    for letter in "ab":
        lines = [letter * (30 + i) for i in range(40)]
        source = tmp_path / f"{letter}.txt"
        source.write_text("\n".join(lines + lines[:5]) + "\n")  # five exact duplicates to remove
        prepared[letter] = tmp_path / f"prepared_{letter}"
        assert main(["data", "dedup", str(source), "--out", str(prepared[letter])]) == 0
        assert len(_read_jsonl(CorpusDir(prepared[letter]).documents_file)) == 40
    spec = f"{prepared['a']}:4,{prepared['b']}:1"
    assert resolve(spec) == resolve(spec)  # registered once, under a name derived from the spec
    ds = make_dataset(DataConfig(task=spec, seed=1), 16, tmp_path / "cache")
    steps, batch_size, p = 100, 32, 0.8
    from_a = sum(int((ds.batch(s, batch_size)["inputs"] == ord("a")).any(axis=1).sum()) for s in range(steps))
    n = steps * batch_size
    assert abs(from_a - p * n) < 4 * math.sqrt(n * p * (1 - p))

    run = small_run(tmp_path / "run", tmp_path / "cache", steps=2, **{"data.task": spec})
    trainer, recorder = Trainer(run), LossRecorder()
    trainer.restore_or_init()
    trainer.add_hook(recorder, every=1)
    trainer.train()
    assert len(recorder.losses) == 2 and all(math.isfinite(x) for x in recorder.losses)

    with pytest.raises(ConfigError, match="unknown data.task .*nowhere'; valid tasks: .*or a prepared corpus by path"):
        resolve(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="its component 'wikitext2' is not NAME_OR_PATH:RATE"):
        resolve("wikitext2,tinyshakespeare:1")
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match="not a complete prepared corpus"):
        resolve(f"{tmp_path / 'half'}:1,{prepared['a']}:1")
