"""`gptjax eval`: zero/one/few-shot evaluation of a run's checkpoint or a Hugging Face GPT-2 directory.

Everything that can be checked without the model is checked first: arguments (a usage error, exit 2), task
definitions and their data files, the Hugging Face directory's tokenizer and config; only then are the
weights read. The time each phase took is printed at the end.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax

from eval.gptjax_lm import GptjaxLM
from eval.phases import PhaseTimer, default_compilation_cache, enable_compilation_cache
from eval.registry import FEWSHOT_EXCLUSIONS
from eval.runner import evaluate, load_tasks, write_results
from gptjax import sharding
from gptjax.plain_tokenizers import parse_spec
from gptjax.prep.contamination import ContaminationError, read_dirty_sets
from gptjax.rundir import RunDir


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _shown(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith("_stderr") and isinstance(v, (int, float))
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptjax eval", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="RUN_DIR", help="a gptjax run directory")
    source.add_argument("--hf", metavar="DIR", help="a Hugging Face GPT-2 directory (safetensors)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer spec for an --hf directory that holds no tokenizer files (default gpt2); a directory's own "
        "tokenizer is always used, and one that differs from --tokenizer is an error",
    )
    parser.add_argument(
        "--tasks", required=True, help="comma-separated task names or task YAML paths (see eval/README.md)"
    )
    parser.add_argument(
        "--shots", type=_int_list, help="comma-separated K values, e.g. 0,1,8 (default: each task's num_fewshot, 0)"
    )
    parser.add_argument(
        "--fewshot-exclusion",
        choices=FEWSHOT_EXCLUSIONS,
        help="which scored documents are left out of their own few-shot examples: scored_split (gptjax's default: "
        "also whenever the examples come from the scored split) or lm_eval (lm-eval 0.4's rule, to reproduce "
        "its examples); default: each task's own",
    )
    parser.add_argument("--limit", type=int, help="first N documents of each task")
    parser.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed (lm-eval's default)")
    parser.add_argument("--data-dir", help="benchmark directory (default: <data root>/benchmarks)")
    parser.add_argument("--out", help="results JSON (default: <run_dir>/eval/<step>.json for --checkpoint)")
    parser.add_argument(
        "--dirty",
        action="append",
        default=[],
        metavar="PATH",
        help="a dirty-id file or `gptjax data decontaminate` output directory (repeatable): each task is also "
        "scored on its clean subset",
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=1024,
        help="tokens per scoring batch (1024 suits CPU caches; raise it on accelerators)",
    )
    parser.add_argument(
        "--compilation-cache",
        default=default_compilation_cache(),
        metavar="DIR",
        help="JAX's persistent compilation cache, shared by concurrent runs, or `off` (default: "
        "$GPTJAX_COMPILATION_CACHE, else ~/.cache/gptjax/jax-compilation)",
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2), found before any file is read."""
    if args.hf and not args.out:
        parser.error("--out is required with --hf (a --checkpoint run writes to <run_dir>/eval/<step>.json)")
    if args.hf and args.step is not None:
        parser.error("--step applies to --checkpoint runs only")
    if args.checkpoint and args.tokenizer:
        parser.error("--tokenizer applies to --hf only (a run evaluates with its own data.vocab)")
    if args.tokenizer:
        try:
            parse_spec(args.tokenizer)
        except ValueError as err:
            parser.error(f"--tokenizer: {err}")
    if args.shots is not None and (not args.shots or min(args.shots) < 0):
        parser.error(f"--shots must list K values >= 0, got {args.shots}")
    for name in ("limit", "batch_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def eval_command(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    check_arguments(parser, args)
    with PhaseTimer() as timer:
        enable_compilation_cache(args.compilation_cache)
        with timer.phase("tasks"):  # unknown names and missing files fail before any model is loaded
            tasks = load_tasks(
                [t for t in args.tasks.split(",") if t],
                args.shots,
                data_dir=args.data_dir,
                fewshot_exclusion=args.fewshot_exclusion,
            )
            names = [task.name for task in tasks]
            dirty = read_dirty_sets(args.dirty) if args.dirty else {}
            if args.dirty and (uncovered := [n for n in names if n not in dirty]):
                raise ContaminationError(
                    f"--dirty {args.dirty} has no dirty-id file for {uncovered} (it has {sorted(dirty)})"
                )
        with timer.phase("model"):
            mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
            options: dict[str, Any] = {"mesh": mesh, "batch_tokens": args.batch_tokens}
            if args.checkpoint:
                lm = GptjaxLM.from_run(args.checkpoint, args.step, **options)
            else:
                lm = GptjaxLM.from_hf(args.hf, tokenizer=args.tokenizer, **options)
        out = args.out or RunDir(args.checkpoint).eval_results(lm.info.step)
        with timer.phase("evaluation"):
            results = evaluate(lm, tasks, shots=args.shots, limit=args.limit, seed=args.seed, dirty=dirty)
        if jax.process_index() == 0:
            with timer.phase("write"):
                write_results(out, results)
            for r in results["results"]:
                print(f"{r['task']:>16} K={r['num_fewshot']:<2} n={r['num_docs']:<5} {_shown(r['metrics'])}")
                if "clean" in r:
                    clean = r["clean"]
                    print(f"{'clean':>16} K={r['num_fewshot']:<2} n={clean['num_docs']:<5} {_shown(clean['metrics'])}")
            print(f"results written to {out} (tokenizer: {results['tokenizer_source'] or results['tokenizer']})")
    if jax.process_index() == 0:
        print(timer.summary())
    return 0
