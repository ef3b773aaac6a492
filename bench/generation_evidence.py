"""Evidence for the generation tasks (issue #16): what a scratchpad buys a tiny model on addition, what
self-consistency adds on top, and how fast the KV-cache decoder runs.

1. One tiny GPT per answer format of eval.arithmetic (plain, reversed, scratchpad, multipath), trained with
   the same budget (steps x batch of fresh problems, loss on the answer only, the `--problems` distinct
   held-out problems never trained on); greedy exact match on the held-out problems every `--eval-every` steps
   and at the end.
2. Self-consistency on the scratchpad model (one reasoning path per answer) and on the multipath model
   (three different paths to each answer), each at its first checkpoint whose greedy accuracy is in 40-80%
   (`--sc-formats` picks which): 20 sampled paths per problem at each temperature and seed, majority vote of
   the first N paths (eval.cot.majority_vote; unparsable paths abstain) for N in 1, 5, 10, 20; then maj@20
   against greedy on the same problems, paired: wins (vote right, greedy wrong), losses (the reverse) and the
   accuracy difference with its paired standard error (that of the mean per-problem difference), per seed and
   for the mean over seeds (per-problem differences averaged over seeds first).
3. Decode throughput of the final scratchpad model: greedy, top-k sampling and 4-beam search, generated
   tokens per second of the second (compiled) call.

    .venv/bin/python bench/generation_evidence.py [--steps 600] [--digits 2] [--problems 200]
        [--sc-formats scratchpad,multipath] [--top-p 0.9] [--top-k K]

Every number is printed; bench/README.md records a run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from eval import arithmetic, cot, generation  # noqa: E402
from eval import metrics as M  # noqa: E402
from gptjax import decode, train  # noqa: E402
from gptjax.config import ModelConfig, OptimConfig, RunConfig  # noqa: E402
from gptjax.plain_tokenizers import ByteTokenizer  # noqa: E402

VOCAB = ByteTokenizer()
MODEL = ModelConfig(name="adder", vocab_size=VOCAB.vocab_size, n_ctx=64, n_layer=2, n_head=4, d_model=64)
BATCH = 64
SC_NS, SC_TEMPERATURES, SC_SEEDS = (1, 5, 10, 20), (0.5, 0.7, 1.0), (0, 1, 2)


def batch_of(
    pairs: list[tuple[int, int]], fmt: arithmetic.Format, length: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Rows of one example each (right-padded, segment 0 after it; a multipath example's reasoning path drawn
    uniformly); the loss covers the target and its newline."""
    tokens = np.zeros((len(pairs), length + 1), np.int32)
    mask = np.zeros((len(pairs), length), np.int32)
    segments = np.zeros((len(pairs), length), np.int32)
    variants = rng.integers(arithmetic.N_VARIANTS[fmt], size=len(pairs))
    for row, ((a, b), variant) in enumerate(zip(pairs, variants)):
        ids = VOCAB.encode(arithmetic.example(a, b, fmt, int(variant)))
        tokens[row, : len(ids)] = ids
        mask[row, len(arithmetic.prompt(a, b)) - 1 : len(ids) - 1] = 1
        segments[row, : len(ids) - 1] = 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (len(pairs), length))
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": mask,
        "segment_ids": segments,
        "positions": np.ascontiguousarray(positions),
    }


def held_out(n: int, digits: int) -> list[tuple[int, int]]:
    """The first `n` distinct problems of seed 0's stream (with 200 2-digit problems: the 198 distinct ones of
    `arithmetic.problems(200, 2, seed=0)` and the next two)."""
    distinct = list(dict.fromkeys(arithmetic.problems(4 * n, digits, seed=0)))
    if len(distinct) < n or 2 * n > 81 * 10 ** (2 * digits - 2):
        raise SystemExit(f"--problems {n}: too many for {digits}-digit addition (training needs the other half)")
    return distinct[:n]


def greedy_correct(params, fmt: arithmetic.Format, test: list[tuple[int, int]]) -> np.ndarray:
    """Greedy exact match per held-out problem (0/1)."""
    task = arithmetic.task(test, fmt)
    result = generation.evaluate(params, MODEL, VOCAB, task, bootstrap_iters=0, batch_size=min(len(test), 500))
    return np.array([s["exact_match"] for s in result["samples"]], float)


def train_format(fmt: arithmetic.Format, args, test: list[tuple[int, int]]):
    """(final params, [(step, greedy correct per problem, params)] at every evaluation)."""
    run = RunConfig(
        model=MODEL,
        optim=OptimConfig(learning_rate=args.lr, warmup_steps=min(100, args.steps // 4), weight_decay=0.0),
        steps=args.steps,
        batch_size=BATCH,
    )
    tx = train.make_optimizer(run)
    state = train.init_state(run, tx, jax.random.key_data(jax.random.key(0)))
    step = jax.jit(train.make_train_step(run, tx))
    held_out = set(test)
    top = 10**args.digits - 1
    length = len(arithmetic.prompt(top, top)) + arithmetic.max_target_length([(top, top)], fmt) + 2
    fresh = (
        p for i in range(10**9) for p in arithmetic.problems(BATCH, args.digits, seed=1000 + i) if p not in held_out
    )
    history, start, rng = [], time.perf_counter(), np.random.default_rng(0)
    for i in range(1, args.steps + 1):
        state, metrics = step(state, batch_of([next(fresh) for _ in range(BATCH)], fmt, length, rng))
        if i % args.eval_every == 0 or i == args.steps:
            correct = greedy_correct(state.params, fmt, test)
            history.append((i, correct, state.params))
            print(
                f"  {fmt:10s} step {i:5d}  loss {float(metrics['loss']):.4f}  greedy exact match {correct.mean():.3f}",
                flush=True,
            )
    print(f"  {fmt:10s} trained in {time.perf_counter() - start:.0f} s", flush=True)
    return state.params, history


def self_consistency(params, fmt: arithmetic.Format, test: list[tuple[int, int]], greedy: np.ndarray, args) -> None:
    """Accuracy of maj@N per temperature and seed (and their mean), then maj@20 paired against `greedy`."""
    base = arithmetic.task(test, fmt)
    refs = [str(a + b) for a, b in test]
    print("T     seed  " + "  ".join(f"maj@{n:<3d}" for n in SC_NS) + "  seconds")
    paired = {}
    for temperature in SC_TEMPERATURES:
        correct = np.zeros((len(SC_SEEDS), len(SC_NS), len(test)))
        for i, seed in enumerate(SC_SEEDS):
            task = base.with_decoding(
                method="sample",
                temperature=temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=seed,
                num_samples=max(SC_NS),
            )
            start = time.perf_counter()
            samples = generation.evaluate(params, MODEL, VOCAB, task, bootstrap_iters=0, batch_size=400)["samples"]
            for j, n in enumerate(SC_NS):
                correct[i, j] = [cot.majority_vote(s["answers"][:n], True)[0] == r for s, r in zip(samples, refs)]
            accs = correct[i].mean(axis=1)
            seconds = time.perf_counter() - start
            print(f"{temperature:.1f}   {seed:4d}  " + "  ".join(f"{a:7.3f}" for a in accs) + f"  {seconds:7.0f}")
        print(f"{temperature:.1f}   mean  " + "  ".join(f"{a:7.3f}" for a in correct.mean(axis=(0, 2))), flush=True)
        paired[temperature] = correct[:, -1]
    print(f"maj@{max(SC_NS)} - greedy ({greedy.mean():.3f}), paired over the {len(test)} problems:")
    print("T     seed    maj    wins  losses  difference  paired SE  difference / SE")
    for temperature, votes in paired.items():
        for seed, rows in [(str(s), votes[i : i + 1]) for i, s in enumerate(SC_SEEDS)] + [("mean", votes)]:
            wins, losses, diff, se = paired_difference(rows, greedy)
            print(
                f"{temperature:.1f}   {seed:>4s}  {rows.mean():.3f}  {wins:6.1f}  {losses:6.1f}  {diff:+10.3f}"
                f"  {se:9.3f}  {diff / se if se else float('nan'):+15.2f}",
                flush=True,
            )


def paired_difference(votes: np.ndarray, greedy: np.ndarray) -> tuple[float, float, float, float]:
    """(wins, losses, accuracy difference, its paired standard error) of 0/1 `votes` (seeds x problems) against
    0/1 `greedy` (problems) on the same problems: wins and losses counted per seed and averaged; each problem's
    difference averaged over seeds before the standard error of their mean."""
    wins = ((votes == 1) & (greedy == 0)).sum(axis=1).mean()
    losses = ((votes == 0) & (greedy == 1)).sum(axis=1).mean()
    diff = (votes - greedy).mean(axis=0)
    se = M.mean_stderr(list(diff))
    return float(wins), float(losses), float(diff.mean()), float("nan") if se is None else se


def throughput(params) -> None:
    prompts = [VOCAB.encode(arithmetic.prompt(a, b)) for a, b in arithmetic.problems(BATCH, 3, seed=7)]
    options = {
        "greedy": {},
        "sample top-k 2": {"method": "sample", "top_k": 2, "rng": jax.random.key(0)},
        "beam 4": {"method": "beam", "num_beams": 4},
    }
    for name, kwargs in options.items():
        for _ in range(2):  # the first call compiles
            start = time.perf_counter()
            out = decode.generate(params, MODEL, prompts, max_new_tokens=32, **kwargs)
            seconds = time.perf_counter() - start
        n = sum(len(o) for o in out)
        print(f"  {name:15s} batch {BATCH}: {n} tokens in {seconds:.3f} s = {n / seconds:,.0f} tokens/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--problems", type=int, default=200, help="distinct held-out problems")
    parser.add_argument(
        "--sc-formats", default="scratchpad,multipath", help="comma-separated formats to run self-consistency on"
    )
    parser.add_argument("--top-k", type=int, default=None, help="self-consistency samples with top-k too")
    parser.add_argument("--top-p", type=float, default=None, help="self-consistency samples with top-p too")
    args = parser.parse_args()
    sc_formats = args.sc_formats.split(",") if args.sc_formats else []
    if not set(sc_formats) <= set(arithmetic.FORMATS):
        parser.error(f"--sc-formats {args.sc_formats!r}: formats are {', '.join(arithmetic.FORMATS)}")
    test = held_out(args.problems, args.digits)
    print(f"model {MODEL.n_layer}x{MODEL.d_model}, {args.steps} steps x {BATCH} problems, {args.digits}-digit addition")
    final, histories = {}, {}
    for fmt in arithmetic.FORMATS:
        final[fmt], histories[fmt] = train_format(fmt, args, test)
    print("greedy exact match at the end: " + ", ".join(f"{f} {h[-1][1].mean():.3f}" for f, h in histories.items()))
    for fmt in sc_formats:
        mid = [(s, c, p) for s, c, p in histories[fmt] if 0.4 <= c.mean() <= 0.8]
        if mid:
            step, greedy, params = mid[0]
            print(f"self-consistency at {fmt} step {step} (greedy {greedy.mean():.3f}), {len(test)} problems:")
            self_consistency(params, fmt, test, greedy, args)
        else:
            accs = [round(float(c.mean()), 3) for _, c, _ in histories[fmt]]
            print(f"no {fmt} checkpoint had greedy accuracy in 40-80%: {accs}")
    print("decode throughput (final scratchpad model, 32 new tokens):")
    throughput(final["scratchpad"])


if __name__ == "__main__":
    main()
