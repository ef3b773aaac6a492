"""Evidence for the generation tasks (issue #16): what a scratchpad buys a tiny model on addition, what
self-consistency adds on top, and how fast the KV-cache decoder runs.

1. One tiny GPT per answer format of eval.arithmetic (plain, reversed, scratchpad, multipath), trained with
   the same budget (steps x batch of fresh problems, loss on the answer only, the 200 held-out problems
   never trained on); greedy exact match on the held-out problems every `--eval-every` steps and at the end.
2. Self-consistency on the scratchpad model (one reasoning path per answer) and on the multipath model
   (three different paths to each answer), each at its first checkpoint whose greedy accuracy is in 40-80%:
   20 sampled paths per problem at each temperature and seed, majority vote of the first N paths
   (eval.cot.majority_vote; unparsable paths abstain) for N in 1, 5, 10, 20.
3. Decode throughput of the final scratchpad model: greedy, top-k sampling and 4-beam search, generated
   tokens per second of the second (compiled) call.

    .venv/bin/python bench/generation_evidence.py [--steps 600] [--digits 2] [--top-p 0.9] [--top-k K]

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
from gptjax import decode, train  # noqa: E402
from gptjax.config import ModelConfig, OptimConfig, RunConfig  # noqa: E402
from gptjax.plain_tokenizers import ByteTokenizer  # noqa: E402

VOCAB = ByteTokenizer()
MODEL = ModelConfig(name="adder", vocab_size=VOCAB.vocab_size, n_ctx=64, n_layer=2, n_head=4, d_model=64)
N_TEST, BATCH = 200, 64
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


def greedy_accuracy(params, fmt: arithmetic.Format, test: list[tuple[int, int]]) -> float:
    result = generation.evaluate(params, MODEL, VOCAB, arithmetic.task(test, fmt), bootstrap_iters=0, batch_size=N_TEST)
    return result["metrics"]["exact_match"]


def train_format(fmt: arithmetic.Format, args, test: list[tuple[int, int]]):
    """(final params, [(step, greedy accuracy, params)] at every evaluation)."""
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
            acc = greedy_accuracy(state.params, fmt, test)
            history.append((i, acc, state.params))
            print(
                f"  {fmt:10s} step {i:5d}  loss {float(metrics['loss']):.4f}  greedy exact match {acc:.3f}", flush=True
            )
    print(f"  {fmt:10s} trained in {time.perf_counter() - start:.0f} s", flush=True)
    return state.params, history


def self_consistency(params, fmt: arithmetic.Format, test: list[tuple[int, int]], args) -> None:
    base = arithmetic.task(test, fmt)
    refs = [str(a + b) for a, b in test]
    print("T     seed  " + "  ".join(f"maj@{n:<3d}" for n in SC_NS))
    for temperature in SC_TEMPERATURES:
        means = np.zeros(len(SC_NS))
        for seed in SC_SEEDS:
            task = base.with_decoding(
                method="sample",
                temperature=temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=seed,
                num_samples=max(SC_NS),
            )
            samples = generation.evaluate(params, MODEL, VOCAB, task, bootstrap_iters=0, batch_size=400)["samples"]
            accs = np.array(
                [
                    np.mean([cot.majority_vote(s["answers"][:n], True)[0] == r for s, r in zip(samples, refs)])
                    for n in SC_NS
                ]
            )
            means += accs / len(SC_SEEDS)
            print(f"{temperature:.1f}   {seed:4d}  " + "  ".join(f"{a:7.3f}" for a in accs), flush=True)
        print(f"{temperature:.1f}   mean  " + "  ".join(f"{a:7.3f}" for a in means), flush=True)


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
    parser.add_argument("--top-k", type=int, default=None, help="self-consistency samples with top-k too")
    parser.add_argument("--top-p", type=float, default=None, help="self-consistency samples with top-p too")
    args = parser.parse_args()
    test = arithmetic.problems(N_TEST, args.digits, seed=0)
    print(f"model {MODEL.n_layer}x{MODEL.d_model}, {args.steps} steps x {BATCH} problems, {args.digits}-digit addition")
    final, histories = {}, {}
    for fmt in arithmetic.FORMATS:
        final[fmt], histories[fmt] = train_format(fmt, args, test)
    print("greedy exact match at the end: " + ", ".join(f"{f} {h[-1][1]:.3f}" for f, h in histories.items()))
    for fmt in ("scratchpad", "multipath"):
        mid = [(s, acc, p) for s, acc, p in histories[fmt] if 0.4 <= acc <= 0.8]
        if mid:
            step, acc, params = mid[0]
            print(f"self-consistency at {fmt} step {step} (greedy {acc:.3f}), {N_TEST} problems:")
            self_consistency(params, fmt, test, args)
        else:
            print(f"no {fmt} checkpoint had greedy accuracy in 40-80%: {[round(a, 3) for _, a, _ in histories[fmt]]}")
    print("decode throughput (final scratchpad model, 32 new tokens):")
    throughput(final["scratchpad"])


if __name__ == "__main__":
    main()
