"""`gptjax eval`: zero/one/few-shot evaluation of a run's checkpoint or a Hugging Face GPT-2 directory."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax

from eval.gptjax_lm import GptjaxLM
from eval.registry import get_spec
from eval.runner import evaluate, write_results
from gptjax import sharding
from gptjax.rundir import RunDir


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptjax eval", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="RUN_DIR", help="a gptjax run directory")
    source.add_argument("--hf", metavar="DIR", help="a Hugging Face GPT-2 directory (safetensors)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--tokenizer", default="gpt2", help="vocabulary spec for --hf models (default gpt2)")
    parser.add_argument(
        "--tasks", required=True, help="comma-separated task names or task YAML paths (see eval/README.md)"
    )
    parser.add_argument("--shots", type=_int_list, default=[0], help="comma-separated K values, e.g. 0,1,8")
    parser.add_argument("--limit", type=int, help="first N documents of each task")
    parser.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed (lm-eval's default)")
    parser.add_argument("--data-dir", help="benchmark directory (default: <data root>/benchmarks)")
    parser.add_argument("--out", help="results JSON (default: <run_dir>/eval/<step>.json for --checkpoint)")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=1024,
        help="tokens per scoring batch (1024 suits CPU caches; raise it on accelerators)",
    )
    return parser


def eval_command(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.hf and not args.out:
        parser.error("--out is required with --hf (a --checkpoint run writes to <run_dir>/eval/<step>.json)")
    tasks = [t for t in args.tasks.split(",") if t]
    for task in tasks:
        get_spec(task)  # unknown names fail before any model is loaded
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    options: dict[str, Any] = {"mesh": mesh, "batch_tokens": max(args.batch_tokens, 1)}
    if args.checkpoint:
        lm = GptjaxLM.from_run(args.checkpoint, args.step, **options)
    else:
        lm = GptjaxLM.from_hf(args.hf, tokenizer=args.tokenizer, **options)
    out = args.out or RunDir(args.checkpoint).eval_results(lm.info.step)
    results = evaluate(lm, tasks, shots=args.shots, limit=args.limit, seed=args.seed, data_dir=args.data_dir)
    if jax.process_index() == 0:
        write_results(out, results)
        for r in results["results"]:
            shown = ", ".join(
                f"{k}={v:.4g}"
                for k, v in r["metrics"].items()
                if not k.endswith("_stderr") and isinstance(v, (int, float))
            )
            print(f"{r['task']:>16} K={r['num_fewshot']:<2} n={r['num_docs']:<5} {shown}")
        print(f"results written to {out}")
    return 0
