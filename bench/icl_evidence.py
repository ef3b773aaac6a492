"""Evidence that gptjax's tiny models learn in context, on the synthetic tasks of gptjax.data.synthetic.

Four studies, each trained from scratch with gptjax's trainer (the ICL probes as its hook, eval/icl) or,
for regression, gptjax.regression; every figure is printed and bench/README.md records a run:
1. Induction heads (Olsson et al. 2022): a 2-layer attention-only model with rotary positions on random tokens
   whose segments are copied at random distances (so only content finds the earlier copy), probed on 16
   random tokens repeated; the probes every few steps
   give the induction score of the best head against the uniform baseline, the loss on the first copy
   (unigram entropy ln n_symbols) and on the repeats, and the ICL score; the phase change of the induction
   score and of the ICL score (eval.icl.scores.phase_change) in tokens. A 1-layer control trains the same way.
   1b (`--only induction_text`, not in the default list): Olsson et al.'s own setting, attention-only models of
   2 and 1 layers trained on natural text (Tiny Shakespeare bytes) and probed on repeated random bytes.
2. Few-shot classification (Chan et al. 2022, Reddy 2023): tiny presets on bursty sequences whose labels are
   remapped in every sequence; accuracy on held-out classes against K, and the K=0 (no-context) baseline at
   chance. Then ("iwl") fixed labels with 64, 512 and 3840 classes: with few the model learns them in its
   weights, with many in context (ICL = 8-shot accuracy on held-out classes; IWL = accuracy on training
   classes with no context or with other classes' pairs as context).
3. In-context linear regression (Garg et al. 2022, with their curriculum over dimensions and points): error
   against the number of examples, beside least squares, 3-nearest-neighbours and averaging.

Run from the repository root: `python bench/icl_evidence.py [--out DIR] [--only induction,regression,iwl,fewshot]
[--jobs 2]` (the studies run two at a time, each in a single-threaded process, one per core; each prints its
wall and CPU time; bench/README.md records a run). With --out, run directories,
results files, the eval report of the probes and the plots stay there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from eval.icl import regression as icl_regression  # noqa: E402
from eval.icl import scores  # noqa: E402
from eval.icl.hook import add_icl_hook  # noqa: E402
from eval.icl.report import ICL_SCORE, INDUCTION, icl_section, load_curves, plot_over_tokens  # noqa: E402
from eval.report import build_report  # noqa: E402
from eval.results import load_results  # noqa: E402
from experiments.runner import worker_environment  # noqa: E402
from gptjax import config, regression  # noqa: E402
from gptjax.config import ICLConfig, ModelConfig, OptimConfig, RunConfig  # noqa: E402
from gptjax.data import tasks  # noqa: E402
from gptjax.data.synthetic import LinearRegression  # noqa: E402
from gptjax.hooks import add_standard_hooks  # noqa: E402
from gptjax.rundir import RunDir  # noqa: E402
from gptjax.train import Trainer  # noqa: E402

INDUCTION_TASK, INDUCTION_PROBE = "copied_segments_64", "repeat_tokens_16"  # trained on; probed on (period 16)
# Rotary positions: with learned ones the models read copies at fixed distances and no induction head formed.
INDUCTION_MODEL = ModelConfig(
    vocab_size=257, n_ctx=64, n_head=4, d_model=128, init_std=0.08, mlp=False, positions="rotary"
)
INDUCTION_STEPS, INDUCTION_EVERY, INDUCTION_BATCH, INDUCTION_LR = 1000, 50, 64, 3e-3
# Natural text (Olsson et al.): contexts repeat words and names, which an induction head can exploit at any offset.
TEXT_TASK, TEXT_MODEL = "tinyshakespeare", ModelConfig(vocab_size=257, n_ctx=256, n_head=4, d_model=128, mlp=False)
TEXT_STEPS, TEXT_EVERY, TEXT_BATCH, TEXT_LR = 1000, 50, 16, 3e-3
FEWSHOT_PRESETS = ("tiny-25k", "tiny-80k", "tiny-200k")
FEWSHOT_STEPS, SHOTS = 2000, (0, 1, 2, 4, 8)
IWL_PRESET, IWL_TASKS = "tiny-200k", ("fewshot_fixed_64", "fewshot_fixed_512", "fewshot_fixed_3840")
# Depth, not width, brings the model to least squares at k >= d (bench/README.md: 6 layers against 3).
REGRESSION = regression.RegressionConfig(
    model=ModelConfig(name="regression", vocab_size=1, n_ctx=24, n_layer=6, n_head=4, d_model=32),
    task=LinearRegression(dim=5, points=12),
    steps=10000,
    batch_size=64,
    optim=OptimConfig(learning_rate=3e-3, warmup_steps=200, weight_decay=0.0),
    curriculum=regression.Curriculum(dim_start=2, points_start=4, every=1000),  # the whole task from step 4000
)
REGRESSION_TASK = "linear_regression_d5"  # d = 5, 12 points (k = 0 .. 11)


def _train(run: RunConfig) -> float:
    """Train with the standard hooks and the ICL probes; returns the wall time in seconds."""
    start = time.perf_counter()
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_icl_hook(trainer, add_standard_hooks(trainer, progress=False))
    trainer.train()
    return time.perf_counter() - start


def _run(out: Path, name: str, model: ModelConfig, task: str, steps: int, icl: ICLConfig, lr: float) -> RunConfig:
    length = tasks.synthetic_source(task).generator.length
    return RunConfig(
        model=dataclasses.replace(model, n_ctx=max(model.n_ctx, length)) if model.n_ctx < length else model,
        run_dir=str(out / name),
        steps=steps,
        batch_size=32,
        seq_len=length,
        data=config.DataConfig(task=task, cache_dir=str(out / "cache")),
        optim=OptimConfig(learning_rate=lr, warmup_steps=100, weight_decay=0.0),
        logging=config.LoggingConfig(every=100),
        held_out=config.HeldOutConfig(every=steps, batches=4),
        checkpoint=config.CheckpointConfig(every=steps),
        icl=icl,
    )


def _last(run_dir: Path) -> Path:
    return RunDir(run_dir).icl_results_files()[-1]


def induction(out: Path) -> None:
    print("\n== 1. Induction heads: attention-only models on randomly copied segments, probed on repeated tokens")
    length = tasks.synthetic_source(INDUCTION_TASK).generator.length
    early, late = 5, length - 1  # the ICL score's tokens, on held-out sequences of the training task
    icl = ICLConfig(
        probes=("induction", "icl_score"),
        every=INDUCTION_EVERY,
        examples=128,
        early=early,
        late=late,
        induction_task=INDUCTION_PROBE,
    )
    names = []
    for layers in (2, 1):
        cfg = dataclasses.replace(INDUCTION_MODEL, name=f"attn-only-{layers}L", n_layer=layers)
        names.append(cfg.name)
        run = dataclasses.replace(
            _run(out, cfg.name, cfg, INDUCTION_TASK, INDUCTION_STEPS, icl, INDUCTION_LR), batch_size=INDUCTION_BATCH
        )
        seconds = _train(run)
        print(f"\n{cfg.name}: {INDUCTION_STEPS} steps x {INDUCTION_BATCH} x {length} tokens in {seconds:.0f} s")
        _print_induction(out / cfg.name, early, late, every=2)
    _plot_induction(out, names, "")


def _print_induction(run_dir: Path, early: int, late: int, every: int) -> None:
    """The induction probes of a run over training tokens (every `every`-th probe and the last: best head's
    induction score, best head per layer, previous-token score, losses on the probe, ICL score) and the
    final scores and phase changes."""
    curves = load_curves(run_dir)
    v = curves.values
    prefix = "icl/induction/0shot/"
    files = RunDir(run_dir).icl_results_files()
    header = ("tokens", "induction", "per layer", "prev-tok", "loss 1st copy", "loss repeats", f"ICL {late}-{early}")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (10, 9, 15, 8, 13, 12, 9))))
    for i, tokens in enumerate(curves.tokens):
        if i % every == every - 1 or i == len(curves.tokens) - 1:
            row = [
                v[prefix + m][i] for m in ("induction_score", "previous_token_score", "loss_first_copy", "loss_repeats")
            ]
            layers = " ".join(f"{x:.3f}" for x in _per_layer(files[i]))
            print(
                f"{tokens:10.0f} {row[0]:9.3f} {layers:>15} {row[1]:8.3f} {row[2]:13.3f} {row[3]:12.3f} "
                f"{v[ICL_SCORE][i]:9.3f}"
            )
    final = load_results(files[-1]).result("induction", 0)
    assert final is not None
    change = [curves.phase_change(key) or float("nan") for key in (INDUCTION, ICL_SCORE)]
    details = _induction_details(files[-1])
    print(
        f"final: induction score {final.metrics['induction_score']:.3f} (best head {details['best_head']}; "
        f"best per layer {', '.join(f'{x:.3f}' for x in _per_layer(files[-1]))}; uniform baseline "
        f"{final.metrics['uniform_attention']:.3f}), copying score {final.metrics['copying_score']:.3f}, "
        f"unigram entropy {details['unigram_entropy']:.3f}; phase change at {change[0]:.0f} tokens "
        f"(induction score) and {change[1]:.0f} tokens (ICL score)"
    )


def _induction_details(results_file: Path) -> dict:
    return next(r for r in json.loads(results_file.read_text())["results"] if r["task"] == "induction")["details"]


def _per_layer(results_file: Path) -> list[float]:
    """The best head's induction score in each layer."""
    return [max(heads) for heads in _induction_details(results_file)["induction"]]


def _plot_induction(out: Path, names: list[str], suffix: str) -> None:
    for key, stem in ((INDUCTION, "induction_vs_tokens"), (ICL_SCORE, "icl_score_vs_tokens")):
        plot_over_tokens([load_curves(out / n) for n in reversed(names)], key, out / f"{stem}{suffix}")
    icl_section([out / n for n in reversed(names)], out / f"plots{suffix}")


def induction_text_run(out: Path, layers: int) -> float:
    """Train one attention-only model of `layers` layers on natural text with the induction probes; wall seconds."""
    cfg = dataclasses.replace(TEXT_MODEL, name=f"attn-only-{layers}L-text", n_layer=layers)
    run = RunConfig(
        model=cfg,
        run_dir=str(out / cfg.name),
        steps=TEXT_STEPS,
        batch_size=TEXT_BATCH,
        data=config.DataConfig(task=TEXT_TASK, cache_dir=str(out / "cache")),
        optim=OptimConfig(learning_rate=TEXT_LR, warmup_steps=TEXT_STEPS // 10, weight_decay=0.0),
        logging=config.LoggingConfig(every=100),
        held_out=config.HeldOutConfig(every=TEXT_STEPS, batches=4),
        checkpoint=config.CheckpointConfig(every=TEXT_STEPS),
        icl=ICLConfig(
            probes=("induction", "icl_score"), every=TEXT_EVERY, examples=128, induction_task="repeat_tokens"
        ),
    )
    return _train(run)


def induction_text(out: Path) -> None:
    """Olsson et al.'s setting: attention-only models trained on natural text (bytes of Tiny Shakespeare),
    probed on repeated random printable bytes (period 32, so no fixed offset is learned from the probe)."""
    print(f"\n== 1b. Induction heads: attention-only models on {TEXT_TASK} bytes, probed on repeated random bytes")
    names = []
    for layers in (2, 1):
        seconds = induction_text_run(out, layers)
        names.append(f"attn-only-{layers}L-text")
        print(f"\n{names[-1]}: {TEXT_STEPS} steps x {TEXT_BATCH} x {TEXT_MODEL.n_ctx} tokens in {seconds:.0f} s")
        _print_induction(out / names[-1], *scores.scaled_positions(TEXT_MODEL.n_ctx), every=2)
    _plot_induction(out, names, "_text")


def fewshot(out: Path) -> None:
    print("\n== 2. Few-shot classification on held-out classes (labels remapped in every sequence)")
    icl = ICLConfig(probes=("fewshot_bursty",), every=FEWSHOT_STEPS // 4, shots=SHOTS, examples=512)
    print(f"{'preset':>10} {'steps':>5} {'s':>4} " + " ".join(f"{f'K={k}':>6}" for k in SHOTS))
    finals = []
    for preset in FEWSHOT_PRESETS:
        model = config.get_preset(preset)
        seconds = _train(_run(out, f"bursty-{preset}", model, "fewshot_bursty", FEWSHOT_STEPS, icl, 3e-3))
        finals.append(_last(out / f"bursty-{preset}"))
        results = load_results(finals[-1])
        accs = [results.result("fewshot_bursty", k).metrics["acc"] for k in SHOTS]  # type: ignore[union-attr]
        print(f"{preset:>10} {FEWSHOT_STEPS:5d} {seconds:4.0f} " + " ".join(f"{a:6.3f}" for a in accs))
    n_labels = tasks.synthetic_source("fewshot_bursty").generator.n_labels  # type: ignore[union-attr]
    print(f"chance = 1/{n_labels} labels = {1 / n_labels:.3f}; K=0 is the no-context baseline")
    build_report([str(p) for p in finals], out / "fewshot_report")


def in_context_or_in_weights(out: Path) -> None:
    print("\n== 2b. In context or in weights: fixed labels, 90% bursty, noise 0.1, few to many classes")
    print("   ICL = accuracy on held-out classes after 8 context pairs (labels remapped: only the context tells);")
    print("   IWL = accuracy on training classes whose context has other classes (K=8) or nothing (K=0)")
    print(f"{'task':>18} {'classes':>7} {'step':>5} {'ICL 8-shot':>10} {'IWL K=0':>7} {'IWL K=8':>7}")
    for task in IWL_TASKS:
        icl = ICLConfig(probes=(task,), every=FEWSHOT_STEPS // 4, shots=(0, 8), examples=512)
        _train(_run(out, f"{task}-{IWL_PRESET}", config.get_preset(IWL_PRESET), task, FEWSHOT_STEPS, icl, 3e-3))
        classes = tasks.synthetic_source(task).generator.n_classes  # type: ignore[union-attr]
        for path in RunDir(out / f"{task}-{IWL_PRESET}").icl_results_files():
            results = load_results(path)
            accs = [results.result(t, k).metrics["acc"] for t, k in ((task, 8), (f"{task}_iwl", 0), (f"{task}_iwl", 8))]  # type: ignore[union-attr]
            print(f"{task:>18} {classes:7d} {results.step:5d} {accs[0]:10.3f} {accs[1]:7.3f} {accs[2]:7.3f}")


def linear_regression(out: Path) -> None:
    print("\n== 3. In-context linear regression (d = 5, no noise): squared error / d after k examples")
    source = tasks.synthetic_source(REGRESSION_TASK)
    cfg = REGRESSION
    start = time.perf_counter()
    params, curve = regression.train(cfg, every=1000)
    seconds = time.perf_counter() - start
    print(f"trained {cfg.steps} steps x {cfg.batch_size} sequences in {seconds:.0f} s ({cfg.curriculum})")
    print("training loss (mean squared error of y over the active points) by step:")
    print(", ".join(f"{step}: {loss:.3f}" for step, loss in curve))
    xs, ys, _ = source.generator.sample(source.seed, "test", np.arange(2048))  # type: ignore[union-attr]
    results = icl_regression.regression_results(
        REGRESSION_TASK, source, regression.predict(params, cfg.model, xs, ys), xs, ys, range(xs.shape[1])
    )
    print(f"{'k':>3} {'model':>7} {'lstsq':>7} {'1-k/d':>6} {'3-NN':>7} {'average':>7}")
    for r in results:
        m = r["metrics"]
        theory = r["details"]["noise_free_lstsq_theory"]
        row = (m["normalized_mse"], m["lstsq_mse"], theory, m["knn3_mse"], m["averaging_mse"])
        print(f"{r['num_fewshot']:3d} " + " ".join(f"{x:{w}.3f}" for x, w in zip(row, (7, 7, 6, 7, 7))))


STUDIES: dict[str, Callable[[Path], None]] = {
    "induction": induction,
    "induction_text": induction_text,
    "fewshot": fewshot,
    "iwl": in_context_or_in_weights,
    "regression": linear_regression,
}


def run_studies(names: list[str], out: Path) -> None:
    """The studies one after the other in this process, each with its wall and CPU time."""
    if REGRESSION_TASK not in tasks.task_names():
        tasks.register_synthetic_task(REGRESSION_TASK, REGRESSION.task)
    for name in names:
        wall, cpu = time.perf_counter(), time.process_time()
        STUDIES[name](out)
        print(f"[{name}: {time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU]", flush=True)


def run_in_processes(names: list[str], out: Path, jobs: int) -> list[str]:
    """Each study in its own single-threaded process (sweeps' worker flags), `jobs` at a time; a study's output
    is printed when it ends, its log beside it in `out`. Returns the studies that failed."""
    env = worker_environment()
    pending, running, failed = list(names), {}, []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            command = [sys.executable, __file__, "--only", name, "--out", str(out), "--jobs", "1"]
            with open(out / f"{name}.log", "w") as log, open(out / f"{name}.stderr", "w") as err:
                running[name] = subprocess.Popen(command, stdout=log, stderr=err, env=env)  # the child keeps them
            print(f"[{name}: started]", flush=True)
        time.sleep(1)
        for name, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            print((out / f"{name}.log").read_text(), end="", flush=True)
            if process.returncode:
                failed.append(name)
                tail = (out / f"{name}.stderr").read_text().splitlines()[-20:]
                print(f"[{name}: FAILED, exit {process.returncode}; its stderr ends]", *tail, sep="\n", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep run directories, results and plots here (default: a temporary directory)")
    parser.add_argument(
        "--only", default="induction,regression,iwl,fewshot", help="comma-separated studies, started in this order"
    )
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once, each in its own process (1: here)")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",")]
    if unknown := sorted(set(names) - set(STUDIES)):
        parser.error(f"unknown studies {unknown}; choose from {sorted(STUDIES)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.jobs <= 1 or len(names) == 1:
            run_studies(names, out)
            failed = []
        else:
            failed = run_in_processes(names, out, args.jobs)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() + children.ru_utime + children.ru_stime
    if len(names) > 1:  # one study has printed its own times
        print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, CPU {cpu:.0f} s (all threads and processes)")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
