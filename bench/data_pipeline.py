"""Figures for GPT-3's data pipeline (gptjax.prep) on the shared data; bench/README.md records them.

- dedup: WikiText-2 paragraphs (>= 50 words) with planted copies edited by word substitution to known
  shingle Jaccard similarities (0.5 ... 0.95, and whitespace-only copies at 1.0), shuffled in; precision
  (flagged pairs whose exact Jaccard is >= the threshold) and recall (planted pairs at or above the
  threshold that are flagged) for several MinHash settings, with the detection rate per planted level.
- quality: the classifier trained on WikiText-2 paragraphs (reference) vs noised copies of other
  paragraphs (raw) at several noise levels, and vs Penn Treebank text; ROC AUC on held-out clean and noised
  paragraphs disjoint from training, and the Pareto keep rates of each.
- contamination: rendered benchmark documents planted in Shakespeare paragraphs, found again (recall),
  and the cleaned corpus checked a second time; then the clean-subset size of every shared benchmark
  against every shared corpus.

Run from the repository root: `.venv/bin/python bench/data_pipeline.py [--part dedup|quality|contamination]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from eval.contamination import task_texts
from eval.data import wikitext_pages
from eval.registry import list_tasks
from gptjax.paths import data_dir
from gptjax.prep.contamination import ContaminationConfig, decontaminate
from gptjax.prep.corpus import CorpusFormat, input_files, output_dir, words
from gptjax.prep.dedup import DedupConfig, Deduplicator, jaccard, shingles
from gptjax.prep.quality import QualityClassifier, QualityConfig, keep_probability, pareto_keep
from gptjax.rundir import CorpusDir

CORPORA = data_dir() / "corpora"
LEVELS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
PER_LEVEL = 50
BINS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.01)  # exact-Jaccard bins of the planted copies


def _bin(b: int) -> str:
    return "1.0" if BINS[b] == 1.0 else f"[{BINS[b]:g},{BINS[b + 1]:g})"


def wikitext_paragraphs() -> list[str]:
    lines = (CORPORA / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8").split("\n")
    return [line.strip() for line in lines if len(line.split()) >= 50 and not line.strip().startswith("=")]


def _write(path: Path, texts: Sequence[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


# ---------------------------------------------------------------------------------------------------------
# Dedup.


def edited_copy(words: list[str], target: float, vocab: list[str], rng: np.random.Generator, k: int) -> list[str]:
    """`words` with the number of random substitutions (in a fixed random order) whose shingle Jaccard
    similarity to the original is closest to `target` (bisection: similarity falls with substitutions)."""
    order, original = rng.permutation(len(words)), shingles(" ".join(words), k)
    substitutes = rng.choice(vocab, len(words))

    def edited(r: int) -> list[str]:
        out = list(words)
        for p, w in zip(order[:r], substitutes[:r]):
            out[p] = w
        return out

    def similarity(r: int) -> float:
        return jaccard(original, shingles(" ".join(edited(r)), k))

    lo, hi = 0, len(words)  # similarity(lo) > target >= similarity(hi), found in log2(len) steps
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if similarity(mid) > target else (lo, mid)
    return edited(min((lo, hi), key=lambda r: abs(similarity(r) - target)))


def dedup_bench(rng: np.random.Generator) -> dict:
    paragraphs = wikitext_paragraphs()
    vocab = sorted({w for p in paragraphs for w in p.split()})
    bases = rng.choice(len(paragraphs), len(LEVELS) * PER_LEVEL, replace=False)
    texts, planted = list(paragraphs), []  # planted: (original index, copy index, level, exact Jaccard)
    for n, base in enumerate(bases):
        level, words = LEVELS[n // PER_LEVEL], paragraphs[base].split()
        copy = (
            " ".join(words).replace(" ", "  ") if level == 1.0 else " ".join(edited_copy(words, level, vocab, rng, 5))
        )
        planted.append((int(base), len(texts), level, jaccard(shingles(paragraphs[base], 5), shingles(copy, 5))))
        texts.append(copy)
    order = rng.permutation(len(texts))  # copies and originals shuffled together
    shuffled = [texts[i] for i in order]
    print(f"dedup: {len(paragraphs)} WikiText-2 paragraphs + {len(planted)} planted copies, 5-word shingles")
    bins = np.digitize([j for _, _, _, j in planted], BINS) - 1
    counts = np.bincount(bins, minlength=len(BINS) - 1)
    print("  planted copies per exact-Jaccard bin: " + " ".join(f"{_bin(b)}:{c}" for b, c in enumerate(counts)))
    results = {}
    configs = {
        "num_perm=128, t=0.8 (default)": DedupConfig(),
        "num_perm=256, t=0.8": DedupConfig(num_perm=256),
        "num_perm=128, t=0.8, LSH 32x4": DedupConfig(bands=32, rows=4),
        "num_perm=128, t=0.7": DedupConfig(threshold=0.7),
        "num_perm=10, t=0.8 (GPT-3's 10 hashes)": DedupConfig(num_perm=10),
    }
    for name, cfg in configs.items():
        start = time.perf_counter()
        dedup = Deduplicator(cfg)
        matches = dedup.add(shuffled)
        seconds = time.perf_counter() - start
        flagged = {frozenset((int(order[m.kept]), int(order[i]))) for i, m in enumerate(matches) if m is not None}
        exact_j = {pair: jaccard(*(shingles(texts[i], cfg.shingle) for i in pair)) for pair in flagged}
        positives = {frozenset((a, b)) for a, b, _, j in planted if j >= cfg.threshold}
        precision = sum(j >= cfg.threshold for j in exact_j.values()) / max(len(flagged), 1)
        recall = len(positives & flagged) / len(positives)
        natural = [pair for pair in flagged if all(i < len(paragraphs) for i in pair)]
        hits = np.array([frozenset((a, b)) in flagged for a, b, _, _ in planted])
        per_level = {_bin(b): float(hits[bins == b].mean()) for b in range(len(BINS) - 1) if (bins == b).any()}
        results[name] = {
            "bands_rows": (dedup.lsh.b, dedup.lsh.r),
            "flagged": len(flagged),
            "precision": precision,
            "recall": recall,
            "natural_pairs": len(natural),
            "detected_per_level": per_level,
            "docs_per_second": len(shuffled) / seconds,
        }
        rates = " ".join(f"{b}:{r:.2f}" for b, r in per_level.items())
        print(
            f"  {name:<40} LSH {dedup.lsh.b}x{dedup.lsh.r}: flagged {len(flagged)}, precision {precision:.3f}, "
            f"recall {recall:.3f}, original-original pairs {len(natural)}, {len(shuffled) / seconds:,.0f} docs/s"
        )
        print(f"  {'':<40} detected per exact-Jaccard bin: {rates}")
    return results


# ---------------------------------------------------------------------------------------------------------
# Quality.


def noised(text: str, p: float, rng: np.random.Generator) -> str:
    """Each word, with probability p, is dropped, repeated, swapped with the next, or replaced by a string
    of random letters of its length: the kind of damage that marks low-quality crawl text."""
    words, out, i = text.split(), [], 0
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    while i < len(words):
        w = words[i]
        if rng.random() >= p:
            out.append(w)
        else:
            op = rng.integers(4)
            if op == 1:
                out += [w, w]
            elif op == 2 and i + 1 < len(words):
                out += [words[i + 1], w]
                i += 1
            elif op == 3:
                out.append("".join(rng.choice(letters, len(w))))
        i += 1
    return " ".join(out)


def _auc_and_keep(
    reference: list[str], raw: list[str], test_clean: list[str], test_raw: list[str], rng: np.random.Generator
) -> dict:
    cfg = QualityConfig()
    classifier = QualityClassifier(cfg)
    training = classifier.fit(reference, raw, rng)
    clean_scores, raw_scores = classifier.score(test_clean), classifier.score(test_raw)
    labels = [1] * len(clean_scores) + [0] * len(raw_scores)
    scores = np.concatenate([clean_scores, raw_scores])
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "holdout_auc": training["holdout_auc"],
        "keep_clean": float(pareto_keep(clean_scores, cfg.alpha, 0).mean()),
        "keep_raw": float(pareto_keep(raw_scores, cfg.alpha, 1).mean()),
        "expected_keep_clean": float(keep_probability(clean_scores, cfg.alpha).mean()),
        "expected_keep_raw": float(keep_probability(raw_scores, cfg.alpha).mean()),
        "median_scores": (float(np.median(clean_scores)), float(np.median(raw_scores))),
    }


def quality_bench(rng: np.random.Generator) -> dict:
    paragraphs = [wikitext_paragraphs()[i] for i in rng.permutation(len(wikitext_paragraphs()))]
    ref, train_raw, test_clean, test_raw = (
        paragraphs[:600],
        paragraphs[600:1200],
        paragraphs[1200:1416],
        paragraphs[1416:],
    )
    print(
        f"quality: reference {len(ref)} WikiText-2 paragraphs; raw {len(train_raw)} other paragraphs, noised; "
        f"test {len(test_clean)} clean vs {len(test_raw)} noised, disjoint from training (alpha 9)"
    )
    results = {}
    for p in (0.02, 0.05, 0.1, 0.2, 0.4):
        r = _auc_and_keep(
            ref, [noised(t, p, rng) for t in train_raw], test_clean, [noised(t, p, rng) for t in test_raw], rng
        )
        results[f"noise {p}"] = r
        _print_quality(f"noise p={p}", r)
    ptb = (CORPORA / "ptb" / "ptb.valid.txt").read_text().split("\n")
    chunks = [" ".join(line.strip() for line in ptb[i : i + 8]) for i in range(0, len(ptb) - 8, 8)]
    r = _auc_and_keep(ref, chunks[:300], test_clean, chunks[300:], rng)
    results["penn treebank"] = r
    _print_quality("PTB valid (8-line chunks)", r)
    return results


def _print_quality(name: str, r: dict) -> None:
    print(
        f"  {name:<26} AUC {r['auc']:.4f} (classifier's own held-out {r['holdout_auc']:.4f}); median score "
        f"{r['median_scores'][0]:.3f} clean vs {r['median_scores'][1]:.3f}; kept {r['keep_clean']:.1%} clean "
        f"(expected {r['expected_keep_clean']:.1%}) vs {r['keep_raw']:.1%} raw (expected {r['expected_keep_raw']:.1%})"
    )


# ---------------------------------------------------------------------------------------------------------
# Contamination.

BENCHMARKS = ("lambada_openai", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
              "boolq", "copa", "triviaqa")  # fmt: skip
PLANTED_PER_TASK = 20


def shakespeare_paragraphs() -> list[str]:
    text = (CORPORA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def shared_corpora() -> dict[str, list[str]]:
    tokenized = CORPORA / "wikitext-2-tokenized"
    stories = (CORPORA / "tinystories" / "tinystories_sample.txt").read_text(encoding="utf-8")
    return {
        "tinyshakespeare (paragraphs)": shakespeare_paragraphs(),
        "wikitext-2-raw test (articles)": wikitext_pages((CORPORA / "wikitext-2-raw" / "wiki.test.raw").read_text()),
        "wikitext-2-tokenized valid+test (lines)": [
            line for f in ("valid.txt", "test.txt") for line in (tokenized / f).read_text().split("\n") if line.strip()
        ],
        "ptb valid+test (lines)": [
            line
            for f in ("ptb.valid.txt", "ptb.test.txt")
            for line in (CORPORA / "ptb" / f).read_text().split("\n")
            if line.strip()
        ],  # fmt: skip
        "tinystories sample": [s for s in stories.split("<|endoftext|>") if s.strip()],
    }


def _decontaminate(tmp: Path, name: str, texts: Sequence[str], tasks: list, cfg: ContaminationConfig) -> dict:
    corpus = _write(tmp / f"{name}.jsonl", texts)
    return decontaminate(input_files([corpus]), CorpusFormat(), tasks, cfg, output_dir(tmp / name))


def contamination_bench(rng: np.random.Generator, tmp: Path) -> dict:
    cfg = ContaminationConfig()
    start = time.perf_counter()
    tasks = task_texts(BENCHMARKS)
    print(f"contamination: rendered {sum(len(t.texts) for t in tasks)} documents of {len(tasks)} tasks in "
          f"{time.perf_counter() - start:.1f} s; 13-grams, n-grams in > 10 corpus documents ignored")  # fmt: skip
    paragraphs = shakespeare_paragraphs()
    hosts = rng.choice(len(paragraphs), PLANTED_PER_TASK * len(tasks), replace=False)
    planted: dict[str, set[int]] = {}
    for t, task in enumerate(tasks):
        ids = rng.choice(len(task.texts), PLANTED_PER_TASK, replace=False)
        planted[task.task] = {int(i) for i in ids}
        for i, host in zip(ids, hosts[t * PLANTED_PER_TASK :]):
            cut = len(paragraphs[host]) // 2
            paragraphs[host] = f"{paragraphs[host][:cut]} {task.texts[i]} {paragraphs[host][cut:]}"
    start = time.perf_counter()
    report = _decontaminate(tmp, "planted", paragraphs, tasks, cfg)
    seconds = time.perf_counter() - start
    found = {t.task: _dirty(tmp / "planted", t.task) for t in tasks}
    print(f"  planted {PLANTED_PER_TASK} documents per task into {len(paragraphs)} Shakespeare paragraphs "
          f"({seconds:.1f} s): {report['corpus']}")  # fmt: skip
    for task in tasks:
        hit = len(planted[task.task] & found[task.task].keys())
        extra = {i: ngram for i, ngram in found[task.task].items() if i not in planted[task.task]}
        # Another document is dirty because it shares the matched n-gram with a planted one (HellaSwag
        # contexts, BoolQ passages and WinoGrande twins recur across documents).
        planted_words = [" ".join(words(task.texts[i])) for i in planted[task.task]]
        shared = sum(any(ngram in w for w in planted_words) for ngram in extra.values())
        print(
            f"  {task.task:>16}: found {hit}/{PLANTED_PER_TASK} planted; {len(extra)} other documents dirty, "
            f"{shared} of them through an n-gram of a planted document"
        )
    cleaned = [json.loads(line)["text"] for line in CorpusDir(tmp / "planted").documents_file.read_text().splitlines()]
    again = _decontaminate(tmp, "again", cleaned, tasks, cfg)
    print(f"  the cleaned corpus checked again: {sum(t['dirty'] for t in again['tasks'].values())} dirty documents")

    all_tasks = list_tasks()
    every = task_texts(all_tasks)
    sizes: dict[str, dict] = {}
    print(f"  clean subsets of {len(all_tasks)} eval tasks against each shared corpus (dirty / documents):")
    for name, texts in shared_corpora().items():
        r = _decontaminate(tmp, f"shared_{len(sizes)}", texts, every, cfg)
        sizes[name] = {task: (t["dirty"], t["num_docs"]) for task, t in r["tasks"].items()}
        dirty = ", ".join(f"{task} {d}/{n}" for task, (d, n) in sizes[name].items() if d)
        print(f"    {name} ({len(texts)} docs): {dirty or 'no task has a dirty document'}")
    return {"planted": {t: (len(planted[t] & found[t].keys()), len(found[t].keys() - planted[t])) for t in planted},
            "shared": sizes}  # fmt: skip


def _dirty(directory: Path, task: str) -> dict[int, str]:
    """Dirty document id -> the n-gram that made it dirty."""
    return {d["doc_id"]: d["ngram"] for d in json.loads(CorpusDir(directory).dirty_file(task).read_text())["dirty"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("dedup", "quality", "contamination"), action="append")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        parts: dict[str, Callable[[], object]] = {
            "dedup": lambda: dedup_bench(rng),
            "quality": lambda: quality_bench(rng),
            "contamination": lambda: contamination_bench(rng, Path(tmp)),
        }
        for part in args.part or list(parts):
            start = time.perf_counter()
            parts[part]()
            print(f"({part}: {time.perf_counter() - start:.0f} s)\n")


if __name__ == "__main__":
    main()
