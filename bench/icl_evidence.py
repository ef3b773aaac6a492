"""Evidence that gptjax's tiny models learn in context, on the synthetic tasks of gptjax.data.synthetic.

Three studies, each trained from scratch with gptjax's trainer (the ICL probes as its hook, eval/icl) or,
for regression, gptjax.regression; every figure is printed and bench/README.md records a run:
1. Induction heads (Olsson et al. 2022): a 2-layer attention-only model on repeated random tokens; the
   probes every few steps give the induction score of the best head against the uniform baseline, the loss
   on the first copy (unigram entropy ln n_symbols) and on the repeats, and the ICL score; the phase change
   of the induction score and of the ICL score (eval.icl.scores.phase_change) in tokens. A 1-layer control
   trains the same way.
2. Few-shot classification (Chan et al. 2022, Reddy 2023): tiny presets on bursty sequences whose labels are
   remapped in every sequence; accuracy on held-out classes against K, and the K=0 (no-context) baseline at
   chance. Then fixed labels with Zipfian classes: with many classes the model learns in context, with few
   in its weights (ICL = 8-shot accuracy on held-out classes; IWL = accuracy on training classes with no
   help from the context).
3. In-context linear regression (Garg et al. 2022): error against the number of examples, beside least
   squares, 3-nearest-neighbours and averaging.

Run from the repository root: `python bench/icl_evidence.py [--out DIR] [--only induction,fewshot,regression]`
(bench/README.md records how long each study took). With --out, run directories, results files, the eval
report of the probes and the plots stay there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from eval.icl import regression as icl_regression  # noqa: E402
from eval.icl.hook import add_icl_hook  # noqa: E402
from eval.icl.report import ICL_SCORE, INDUCTION, icl_section, load_curves, plot_over_tokens  # noqa: E402
from eval.report import build_report  # noqa: E402
from eval.results import load_results  # noqa: E402
from gptjax import config, regression  # noqa: E402
from gptjax.config import ICLConfig, ModelConfig, OptimConfig, RunConfig  # noqa: E402
from gptjax.data import tasks  # noqa: E402
from gptjax.data.synthetic import LinearRegression  # noqa: E402
from gptjax.hooks import add_standard_hooks  # noqa: E402
from gptjax.rundir import RunDir  # noqa: E402
from gptjax.train import Trainer  # noqa: E402

INDUCTION_TASK = "repeat_tokens_varied"  # trained on; the probe reads `repeat_tokens` (fixed period 32)
INDUCTION_STEPS, INDUCTION_EVERY = 3000, 100
FEWSHOT_PRESETS = ("tiny-25k", "tiny-80k", "tiny-200k")
FEWSHOT_STEPS, SHOTS = 2000, (0, 1, 2, 4, 8)
IWL_PRESET, IWL_TASKS = "tiny-200k", ("fewshot_zipf_few", "fewshot_zipf_many")
REGRESSION = regression.RegressionConfig(
    model=ModelConfig(name="regression", vocab_size=1, n_ctx=24, n_layer=3, n_head=4, d_model=32),
    task=LinearRegression(dim=5, points=12),
    steps=3000,
    batch_size=64,
    optim=OptimConfig(learning_rate=3e-3, warmup_steps=200, weight_decay=0.0),
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
    print("\n== 1. Induction heads: attention-only models on repeated random tokens")
    icl = ICLConfig(probes=("induction", "icl_score"), every=INDUCTION_EVERY, examples=128, early=5, late=61)
    for layers in (2, 1):
        cfg = ModelConfig(
            name=f"attn-only-{layers}L", vocab_size=257, n_ctx=64, n_layer=layers, n_head=4, d_model=64, mlp=False
        )
        seconds = _train(_run(out, cfg.name, cfg, INDUCTION_TASK, INDUCTION_STEPS, icl, 3e-3))
        curves = load_curves(out / cfg.name)
        v = curves.values
        prefix = "icl/induction/0shot/"
        print(f"\n{cfg.name}: {INDUCTION_STEPS} steps x 32 x 64 tokens in {seconds:.0f} s")
        header = ("tokens", "induction", "prev-tok", "loss 1st copy", "loss repeats", "ICL score")
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (9, 9, 8, 13, 12, 9))))
        for i, tokens in enumerate(curves.tokens):
            if i % 3 == 2 or i == len(curves.tokens) - 1:
                row = [
                    v[prefix + m][i]
                    for m in ("induction_score", "previous_token_score", "loss_first_copy", "loss_repeats")
                ]
                print(f"{tokens:9.0f} {row[0]:9.3f} {row[1]:8.3f} {row[2]:13.3f} {row[3]:12.3f} {v[ICL_SCORE][i]:9.3f}")
        final = load_results(_last(out / cfg.name)).result("induction", 0)
        assert final is not None
        change = [curves.phase_change(key) or float("nan") for key in (INDUCTION, ICL_SCORE)]
        print(
            f"final: induction score {final.metrics['induction_score']:.3f} (uniform baseline "
            f"{final.metrics['uniform_attention']:.3f}), copying score {final.metrics['copying_score']:.3f}, "
            f"unigram entropy {np.log(94):.3f}; phase change at {change[0]:.0f} tokens (induction score) and "
            f"{change[1]:.0f} tokens (ICL score)"
        )
    for key, stem in ((INDUCTION, "induction_vs_tokens"), (ICL_SCORE, "icl_score_vs_tokens")):
        plot_over_tokens([load_curves(out / n) for n in ("attn-only-1L", "attn-only-2L")], key, out / stem)
    icl_section([out / "attn-only-1L", out / "attn-only-2L"], out / "plots")


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

    print("\n   In context or in weights: fixed labels, Zipfian classes (alpha 1), 90% bursty, noise 0.1")
    print(f"{'task':>18} {'classes':>7} {'ICL 8-shot':>10} {'IWL':>6}")
    for task in IWL_TASKS:
        icl = ICLConfig(probes=(task,), every=FEWSHOT_STEPS, shots=(8,), examples=512)
        _train(_run(out, f"{task}-{IWL_PRESET}", config.get_preset(IWL_PRESET), task, FEWSHOT_STEPS, icl, 3e-3))
        results = load_results(_last(out / f"{task}-{IWL_PRESET}"))
        in_context = results.result(task, 8).metrics["acc"]  # type: ignore[union-attr]
        in_weights = results.result(f"{task}_iwl", 8).metrics["acc"]  # type: ignore[union-attr]
        classes = tasks.synthetic_source(task).generator.n_classes  # type: ignore[union-attr]
        print(f"{task:>18} {classes:7d} {in_context:10.3f} {in_weights:6.3f}")


def linear_regression(out: Path) -> None:
    print("\n== 3. In-context linear regression (d = 5, no noise): squared error / d after k examples")
    source = tasks.synthetic_source(REGRESSION_TASK)
    cfg = REGRESSION
    start = time.perf_counter()
    params, curve = regression.train(cfg, every=500)
    print(
        f"trained {cfg.steps} steps x {cfg.batch_size} sequences in {time.perf_counter() - start:.0f} s; loss {curve}"
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep run directories, results and plots here (default: a temporary directory)")
    parser.add_argument("--only", default="induction,fewshot,regression", help="comma-separated studies to run")
    args = parser.parse_args()
    if REGRESSION_TASK not in tasks.task_names():
        tasks.register_synthetic_task(REGRESSION_TASK, REGRESSION.task)
    studies = {"induction": induction, "fewshot": fewshot, "regression": linear_regression}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.only.split(","):
            studies[name.strip()](out)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
