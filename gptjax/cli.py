"""gptjax: train, evaluate and report on GPT-family models.

The composition root: the one place that wires the core (gptjax), eval and experiments together, e.g. a
training run gets eval's few-shot hook here. Each command imports its modules when it runs, because JAX and
TensorFlow take seconds to import and `gptjax --help` must stay under two (tests/test_cli.py checks it).
Every error a user can cause derives from `GptjaxError` and is printed as one line; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

from gptjax.errors import GptjaxError

DEFAULT_PRESET = "tiny-200k"


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gptjax.sharding.maybe_initialize_distributed`, shared by train and sweep."""
    parser.add_argument("--coordinator", help="host:port of process 0 for multi-process runs")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)


def _train(args: argparse.Namespace) -> int:
    from eval.hook import add_fewshot_hook
    from eval.icl.hook import add_icl_hook
    from gptjax import config, sharding
    from gptjax.hooks import add_standard_hooks
    from gptjax.train import Trainer

    sharding.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    run = config.RunConfig(model=config.get_preset(args.preset), run_dir=args.run_dir)
    run = config.override(run, args.overrides)
    if args.dry_run:
        from gptjax import plan

        print(plan.report(plan.plan_local(run), args.json))
        return 0
    trainer = Trainer(run)
    trainer.restore_or_init()
    logger = add_standard_hooks(trainer)
    add_fewshot_hook(trainer, logger)
    add_icl_hook(trainer, logger)
    trainer.train()
    return 0


def _plan(args: argparse.Namespace) -> int:
    from gptjax import config, plan, tpu

    run = config.override(config.RunConfig(model=config.get_preset(args.preset)), args.overrides)
    if args.batch_per_chip or not any(o.split("=")[0].strip() == "batch_size" for o in args.overrides):
        per_chip = args.batch_per_chip or 1
        run = config.override(run, [f"batch_size={per_chip * tpu.slice_type(args.tpu).chips}"])
    result = plan.plan_slice(
        run, args.tpu, search=not args.no_search, max_per_chip=args.max_batch_per_chip, flops=not args.no_flops
    )
    print(plan.report(result, args.json))
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
    from gptjax.finetune.transforms import added_tokens
    from gptjax.rundir import RunDir
    from gptjax.runs import load_for_inference

    params, cfg, _, _ = load_for_inference(args.run_dir, args.step)
    added = added_tokens(RunDir(args.run_dir).read_config())
    hf.export_hf(params, cfg, args.out, tokenizer_dir=args.tokenizer_dir, added_tokens=added)
    print(f"exported to {args.out}")
    return 0


def _render_tasks(tasks: list[str], benchmark_dir: str | None, corpus_dir: str | None) -> list:
    from eval.contamination import task_texts  # eval (and JAX with it) only for `data decontaminate`

    return task_texts(tasks, benchmark_dir, corpus_dir)


def data_command(argv: list[str]) -> int:
    """`gptjax data ...` (gptjax.prep.cli), given eval's rendering of tasks for `decontaminate`."""
    from gptjax.prep.cli import data_command as run

    return run(argv, render_tasks=_render_tasks)


# Commands implemented in their own modules, which parse their own arguments: (module, function, help).
FORWARDED = {
    "data": ("gptjax.cli", "data_command", "prepare corpora: quality filter, dedup, decontaminate, stats"),
    "eval": ("eval.cli", "eval_command", "zero/one/few-shot evaluation of a checkpoint"),
    "icl": ("eval.icl.runs", "icl_command", "in-context-learning probes of a checkpoint: K-shot, induction heads"),
    "finetune": ("gptjax.finetune.run", "finetune_command", "GPT-1 supervised fine-tuning on a labelled task"),
    "report": ("eval.report", "report_command", "Markdown + HTML report from results JSON files"),
    "tokenizer": ("gptjax.tokenizers", "tokenizer_command", "train a SentencePiece vocabulary"),
    "sweep": ("experiments.cli", "sweep_command", "run a model-size/tokens sweep, fit scaling laws, report"),
    "align": ("gptjax.rlhf.cli", "align_command", "InstructGPT's SFT -> reward model -> PPO(-ptx) on the toy task"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (resumes automatically in an existing run_dir)")
    train.add_argument("--preset", default=DEFAULT_PRESET, help=f"model preset (default {DEFAULT_PRESET})")
    train.add_argument("--run-dir", default="runs/default")
    add_distributed_arguments(train)
    train.add_argument("--dry-run", action="store_true", help="compile the step on these devices and report memory")
    train.add_argument("--json", action="store_true", help="with --dry-run: the report as JSON")
    train.add_argument("overrides", nargs="*", help="key=value, e.g. steps=500 model.n_layer=4 mesh.data=2")
    train.set_defaults(func=_train)

    plan = sub.add_parser("plan", help="compile the train step for a TPU slice on this machine: memory, fit, batch")
    plan.add_argument("--preset", default=DEFAULT_PRESET, help=f"model preset (default {DEFAULT_PRESET})")
    plan.add_argument("--tpu", required=True, help="slice type, e.g. v5e-16, v4-64, v5p-128")
    plan.add_argument("--batch-per-chip", type=int, help="sequences per chip (default: batch_size, else 1)")
    plan.add_argument("--max-batch-per-chip", type=int, default=64, help="cap of the largest-batch search")
    plan.add_argument("--no-search", action="store_true", help="skip the largest-batch search")
    plan.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting compiles")
    plan.add_argument("--json", action="store_true", help="the report as JSON")
    plan.add_argument("overrides", nargs="*", help="key=value, e.g. model.remat=full model.scan_layers=true")
    plan.set_defaults(func=_plan)

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


# Device files of TPU chips (v4/v5p: accel, v5e/v6e: vfio) and NVIDIA GPUs.
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def default_jax_platforms(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """With libtpu installed (the `tpu` and `test` extras), JAX probes for TPU chips at start-up and, on a
    machine without any, libtpu prints alarming lines (TPU_WORKER_HOSTNAMES, "could not determine TPU
    accelerator type"). Where no accelerator device file exists and nobody chose a platform, JAX is pointed
    at the CPU before it is imported. A TPU VM keeps JAX's own choice (tpu_scripts set JAX_PLATFORMS=tpu)."""
    if "JAX_PLATFORMS" in environ or importlib.util.find_spec("libtpu") is None:
        return
    if not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES):
        environ["JAX_PLATFORMS"] = "cpu"


# What TensorFlow's native libraries print to stderr as they load and probe for CUDA on a machine without a
# GPU: notices, though "E0000 ... failed call to cuInit" reads like an error. TF_CPP_MIN_LOG_LEVEL cannot
# hide them: most are written before TensorFlow's logging reads it.
TENSORFLOW_NOTICES = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "port.cc:153] oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "cuda_platform.cc",
    "cuda_executor.cc",
)


@contextlib.contextmanager
def _without_notices(notices: tuple[str, ...]) -> Iterator[None]:
    """Capture file descriptor 2 (native libraries write there, not to sys.stderr) and write back every
    line that contains none of `notices`, also when the body raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(True) if not any(n.encode() in line for n in notices)]
            os.write(2, b"".join(kept))


def import_quietly(module: str) -> ModuleType:
    """Import a command's module without TensorFlow's CPU-machine start-up notices: where no GPU device file
    exists, the import (and, if it loaded TensorFlow, TensorFlow's device probe, which would otherwise print
    on its first op) runs with `TENSORFLOW_NOTICES` filtered out of stderr."""
    if any(glob.glob("/dev/nvidia[0-9]*")):
        return importlib.import_module(module)
    with _without_notices(TENSORFLOW_NOTICES):
        imported = importlib.import_module(module)
        if "tensorflow" in sys.modules:
            sys.modules["tensorflow"].config.list_physical_devices()
    return imported


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    default_jax_platforms()
    if argv and argv[0] in FORWARDED:
        module, function, _ = FORWARDED[argv[0]]
        command = lambda: getattr(import_quietly(module), function)(argv[1:])  # noqa: E731
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
