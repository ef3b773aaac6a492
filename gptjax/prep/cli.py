"""`gptjax data filter|dedup|decontaminate|stats`: GPT-3's data preparation over text / JSONL corpora.

Each command checks its options and inputs, refuses to overwrite a complete prepared corpus, reads all of
its input, then writes (gptjax.prep.corpus). `decontaminate` needs eval tasks rendered as text, which the
core cannot do (eval sits above it), so gptjax/cli.py passes `render_tasks` in (eval.contamination).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from gptjax.prep.contamination import ContaminationConfig, EvalTexts, decontaminate
from gptjax.prep.corpus import CorpusError, CorpusFormat, input_files, output_dir
from gptjax.prep.dedup import DedupConfig, dedup_corpus
from gptjax.prep.quality import QualityConfig, filter_corpus
from gptjax.prep.stats import corpus_stats
from gptjax.rundir import write_json

# (task names or YAML paths, benchmark dir, corpus dir) -> each task's scored documents as text
RenderTasks = Callable[[list[str], str | None, str | None], list[EvalTexts]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptjax data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = argparse.ArgumentParser(add_help=False)
    corpus.add_argument("inputs", nargs="+", metavar="INPUT", help="text or .jsonl files, local or gs://")
    corpus.add_argument("--field", default="text", help="the text field of JSONL records (default: text)")
    corpus.add_argument(
        "--doc-start",
        metavar="REGEX",
        help="plain text: a line matching REGEX starts a document (default: one per line)",
    )

    stats = sub.add_parser("stats", parents=[corpus], help="document, word and byte counts")
    stats.add_argument("--out", metavar="FILE.json", help="also write the statistics as JSON")

    writes = argparse.ArgumentParser(add_help=False, parents=[corpus])
    writes.add_argument("--out", required=True, metavar="DIR", help="the prepared corpus directory to write")

    q, d = QualityConfig(), DedupConfig()
    flt = sub.add_parser("filter", parents=[writes], help="GPT-3's quality classifier and Pareto keep rule")
    flt.add_argument("--reference", nargs="+", required=True, metavar="FILE", help="high-quality reference files")
    flt.add_argument("--alpha", type=float, default=q.alpha, help=f"Pareto shape (default {q.alpha:g})")
    flt.add_argument("--seed", type=int, default=q.seed)
    flt.add_argument("--ngram", type=int, default=q.ngram, help=f"word n-gram features up to n (default {q.ngram})")
    flt.add_argument("--features", type=int, default=q.features, help="hashed feature dimension (default 2^20)")
    flt.add_argument("--max-train-docs", type=int, default=q.max_train_docs, help="per class")
    flt.add_argument("--holdout", type=float, default=q.holdout, help=f"for the AUC (default {q.holdout})")
    flt.add_argument("--regularization", type=float, default=q.regularization, help="inverse L2 strength (C)")

    dd = sub.add_parser("dedup", parents=[writes], help="exact and MinHash-LSH fuzzy deduplication")
    dd.add_argument("--shingle", type=int, default=d.shingle, help=f"words per shingle (default {d.shingle})")
    dd.add_argument("--num-perm", type=int, default=d.num_perm, help=f"MinHash permutations (default {d.num_perm})")
    dd.add_argument("--threshold", type=float, default=d.threshold, help=f"Jaccard threshold (default {d.threshold})")
    dd.add_argument("--bands", type=int, help="LSH bands (with --rows; default: chosen for the threshold)")
    dd.add_argument("--rows", type=int, help="LSH rows per band")
    dd.add_argument("--seed", type=int, default=d.seed, help="of the MinHash permutations")

    c = ContaminationConfig()
    dc = sub.add_parser("decontaminate", parents=[writes], help="benchmark n-gram overlap; dirty ids per task")
    dc.add_argument("--tasks", required=True, help="comma-separated eval task names or task YAML paths")
    dc.add_argument("--ngram", type=int, default=c.ngram, help=f"default {c.ngram}")
    dc.add_argument("--max-doc-freq", type=int, default=c.max_doc_freq, help="ignore n-grams in more corpus docs")
    dc.add_argument("--window", type=int, default=c.window, help="characters cut on either side of a match")
    dc.add_argument("--min-piece", type=int, default=c.min_piece, help="shorter pieces of a cut document are dropped")
    dc.add_argument("--max-pieces", type=int, default=c.max_pieces, help="a document cut into more is dropped")
    dc.add_argument("--benchmark-dir", help="benchmark directory (default: <data root>/benchmarks)")
    dc.add_argument("--corpus-dir", help="eval corpus directory (default: <data root>/corpora)")
    return parser


def _config(cls: Any, args: argparse.Namespace) -> Any:
    """A command's config dataclass from the options of the same names (the others keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _fmt(args: argparse.Namespace) -> CorpusFormat:
    return CorpusFormat(args.field, args.doc_start)


def _stats(args: argparse.Namespace) -> None:
    stats = corpus_stats(input_files(args.inputs), _fmt(args))
    if args.out:
        write_json(args.out, stats)
    print(json.dumps({k: v for k, v in stats.items() if k != "inputs"}, indent=1))


def _filter(args: argparse.Namespace) -> None:
    cfg = _config(QualityConfig, args)
    fmt, inputs, reference, out = (
        _fmt(args),
        input_files(args.inputs),
        input_files(args.reference),
        output_dir(args.out),
    )
    r = filter_corpus(inputs, reference, fmt, cfg, out)
    auc = r["classifier"]["holdout_auc"]
    print(
        f"kept {r['kept']}/{r['documents']} documents ({r['keep_rate']:.1%}; {r['expected_keep_rate']:.1%} expected "
        f"from the scores at alpha={cfg.alpha:g}); held-out AUC {'n/a' if auc is None else f'{auc:.4f}'}; "
        f"wrote {out.path}"
    )


def _dedup(args: argparse.Namespace) -> None:
    cfg = _config(DedupConfig, args)
    fmt, inputs, out = _fmt(args), input_files(args.inputs), output_dir(args.out)
    r = dedup_corpus(inputs, fmt, cfg, out)
    print(
        f"kept {r['kept']}/{r['documents']} documents: {r['exact_duplicates']} exact and {r['near_duplicates']} near "
        f"duplicates in {r['clusters']} clusters (LSH {r['lsh']['bands']} bands x {r['lsh']['rows']} rows); "
        f"wrote {out.path}"
    )


def _decontaminate(args: argparse.Namespace, render_tasks: RenderTasks | None) -> None:
    if render_tasks is None:
        raise CorpusError("decontaminate needs eval tasks; run it as `gptjax data decontaminate`")
    cfg = _config(ContaminationConfig, args)
    fmt, inputs, out = _fmt(args), input_files(args.inputs), output_dir(args.out)
    tasks = render_tasks([t for t in args.tasks.split(",") if t], args.benchmark_dir, args.corpus_dir)
    r = decontaminate(inputs, fmt, tasks, cfg, out)
    for name, t in r["tasks"].items():
        print(f"{name:>16} {t['split']:<10} docs={t['num_docs']:<6} dirty={t['dirty']:<6} clean={t['clean']}")
    corpus = r["corpus"]
    print(
        f"corpus: {corpus['contaminated']}/{corpus['documents']} documents contaminated ({corpus['cut']} cut, "
        f"{corpus['dropped']} dropped; {corpus['frequent_ngrams_ignored']} frequent n-grams ignored); wrote {out.path}"
    )


def data_command(argv: Sequence[str], render_tasks: RenderTasks | None = None) -> int:
    args = build_parser().parse_args(list(argv))
    commands: dict[str, Callable[[argparse.Namespace], Any]] = {
        "stats": _stats,
        "filter": _filter,
        "dedup": _dedup,
        "decontaminate": lambda a: _decontaminate(a, render_tasks),
    }
    commands[args.command](args)
    return 0


__all__ = ["RenderTasks", "build_parser", "data_command"]
