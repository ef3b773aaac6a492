"""gptjax: train, evaluate and report on GPT-family models.

The composition root: the one place that wires the core (gptjax), eval and experiments together, e.g. a
training run gets eval's few-shot hook here. Each command imports its modules when it runs, because JAX and
TensorFlow take seconds to import and `gptjax --help` must stay under two (tests/test_cli.py checks it).
Every error a user can cause derives from `GptjaxError` and is printed as one line; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gptjax.errors import GptjaxError

DEFAULT_PRESET = "tiny-200k"


def _train(args: argparse.Namespace) -> int:
    from eval.hook import add_fewshot_hook
    from gptjax import config, sharding
    from gptjax.hooks import add_standard_hooks
    from gptjax.train import Trainer

    sharding.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    run = config.RunConfig(model=config.get_preset(args.preset), run_dir=args.run_dir)
    run = config.override(run, args.overrides)
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_fewshot_hook(trainer, add_standard_hooks(trainer))
    trainer.train()
    return 0


def _generate(args: argparse.Namespace) -> int:
    import jax

    from gptjax import decode
    from gptjax.runs import load_for_inference

    params, cfg, vocab, _ = load_for_inference(args.run_dir, args.step)
    options: dict = {"method": args.method, "num_beams": args.num_beams}
    if args.method == "sample":
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, rng=jax.random.key(args.seed))
    text = decode.generate_text(
        params,
        cfg,
        vocab,
        [args.prompt],
        max_new_tokens=args.max_new_tokens,
        until=args.until,
        eos_id=vocab.eos_id,
        left_truncate=True,
        **options,
    )[0]
    print(args.prompt + text)
    return 0


def _hf_import(args: argparse.Namespace) -> int:
    from gptjax import hf
    from gptjax.config import DataConfig, RunConfig
    from gptjax.train import write_initial_checkpoint

    cfg, params = hf.import_hf(args.hf_dir)
    write_initial_checkpoint(RunConfig(model=cfg, data=DataConfig(vocab=args.vocab), run_dir=args.out), params)
    print(f"imported {args.hf_dir} ({cfg.n_layer} layers, d_model {cfg.d_model}) into {args.out}")
    return 0


def _hf_export(args: argparse.Namespace) -> int:
    from gptjax import hf
    from gptjax.runs import load_for_inference

    params, cfg, _, _ = load_for_inference(args.run_dir, args.step)
    hf.export_hf(params, cfg, args.out, tokenizer_dir=args.tokenizer_dir)
    print(f"exported to {args.out}")
    return 0


# Commands implemented in their own modules, which parse their own arguments: (module, function, help).
FORWARDED = {
    "eval": ("eval.cli", "eval_command", "zero/one/few-shot evaluation of a checkpoint"),
    "report": ("eval.report", "report_command", "Markdown + HTML report from results JSON files"),
    "tokenizer": ("gptjax.tokenizers", "tokenizer_command", "train a SentencePiece vocabulary"),
    "sweep": ("experiments.cli", "sweep_command", "run a model-size/tokens sweep, fit scaling laws, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (resumes automatically in an existing run_dir)")
    train.add_argument("--preset", default=DEFAULT_PRESET, help=f"model preset (default {DEFAULT_PRESET})")
    train.add_argument("--run-dir", default="runs/default")
    train.add_argument("--coordinator", help="host:port of process 0 for multi-process runs")
    train.add_argument("--num-processes", type=int)
    train.add_argument("--process-id", type=int)
    train.add_argument("overrides", nargs="*", help="key=value, e.g. steps=500 model.n_layer=4 mesh.data=2")
    train.set_defaults(func=_train)

    gen = sub.add_parser("generate", help="generate text from a run's latest checkpoint")
    gen.add_argument("--run-dir", required=True)
    gen.add_argument("--step", type=int)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=100)
    gen.add_argument("--method", choices=["greedy", "sample", "beam"], default="greedy")
    gen.add_argument("--temperature", type=float, default=1.0, help="with --method sample")
    gen.add_argument("--top-k", type=int, help="with --method sample")
    gen.add_argument("--top-p", type=float, help="with --method sample")
    gen.add_argument("--num-beams", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--until", action="append", default=[], help="stop string (repeatable)")
    gen.set_defaults(func=_generate)

    imp = sub.add_parser("hf-import", help="import a local Hugging Face GPT-2 directory (safetensors)")
    imp.add_argument("hf_dir")
    imp.add_argument("--out", required=True, help="gptjax run directory to write (checkpoint at step 0)")
    imp.add_argument("--vocab", default="gpt2", help="vocabulary spec of the model (default gpt2)")
    imp.set_defaults(func=_hf_import)

    exp = sub.add_parser("hf-export", help="export a run's checkpoint as a Hugging Face GPT-2 directory")
    exp.add_argument("--run-dir", required=True)
    exp.add_argument("--step", type=int)
    exp.add_argument("--out", required=True)
    exp.add_argument("--tokenizer-dir", help="directory with the GPT-2 encoder.json + vocab.bpe to include")
    exp.set_defaults(func=_hf_export)

    for name, (_, _, text) in FORWARDED.items():
        sub.add_parser(name, help=text, add_help=False)  # listed in --help; dispatched in main()
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in FORWARDED:
        module, function, _ = FORWARDED[argv[0]]
        command = lambda: getattr(importlib.import_module(module), function)(argv[1:])  # noqa: E731
        name = argv[0]
    else:
        args = build_parser().parse_args(argv)
        command, name = (lambda: args.func(args)), args.command
    try:
        return command()
    except GptjaxError as err:
        print(f"gptjax {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
