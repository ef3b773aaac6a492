"""Log-likelihood throughput of gptjax's eval path next to a one-request-at-a-time loop, same model.

HellaSwag validation (K=0 by default; 4 requests per document, through eval's own task definition), scored by
  (a) `GptjaxLM.loglikelihood`: BatchScorer's deduplicated requests as prefix trees packed into fixed-shape
      batches, once per `--batch-tokens` value; then, in a child process started with
      XLA_FLAGS=--xla_force_host_platform_device_count=2 (the device count is fixed when JAX starts), on one
      of the emulated devices and sharded over both, interleaved with (b) and (b') run again there;
  (b) a naive loop: each (context, continuation) tokenised and scored alone by a jitted forward at its exact
      length (one compile per distinct length: the honest naive baseline), and
  (b') the same loop with each request right-padded to BatchScorer's length bucket (a handful of compiles),
      which separates the cost of recompiling from the cost of batch-1 execution;
Every path is called once cold (compiles + run), then `--repeats` times in steady state. Compile time is what
JAX itself reports (tracing + lowering + XLA compile). All log-likelihoods are compared with (b)'s.

Run from the repository root: `.venv/bin/python bench/eval_throughput.py [--docs 200] [--preset gpt2-mini]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

# JAX is imported inside functions: `--host-devices` must reach XLA_FLAGS before the backend starts.

BENCH_PRESETS = {
    # gpt2-small's architecture (vocab 50257 GPT-2 BPE, n_ctx 1024, pre-norm, learned positions, tied head)
    # at 4 x 256 instead of 12 x 768, so that a few hundred requests score in about a minute on 2 CPU cores.
    "gpt2-mini": dict(base="gpt2-small", n_layer=4, d_model=256, n_head=4),
    "gpt2-micro": dict(base="gpt2-small", n_layer=2, d_model=128, n_head=2),
}
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def model_config(preset: str) -> Any:
    from gptjax.config import get_preset

    if preset in BENCH_PRESETS:
        spec = dict(BENCH_PRESETS[preset])
        return dataclasses.replace(get_preset(spec.pop("base")), name=preset, **spec)
    return get_preset(preset)


def tokenizer_for(cfg: Any) -> Any:
    from gptjax.tokenizers import get_vocabulary

    if cfg.vocab_size == 50257:
        return get_vocabulary("gpt2")
    if cfg.vocab_size == 257:
        return get_vocabulary("byte")
    raise SystemExit(
        f"preset {cfg.name} has vocab_size={cfg.vocab_size}; this benchmark knows the GPT-2 BPE "
        "(50257) and byte (257) vocabularies"
    )


def hellaswag_requests(n_docs: int, shots: int = 0, seed: int = 1234) -> list[tuple[str, str]]:
    """The requests `eval.evaluate` sends for the first `n_docs` HellaSwag validation documents at K=shots."""
    from eval.fewshot import LmEvalSampler
    from eval.task import Task

    task = Task("hellaswag")
    docs = task.eval_docs()[:n_docs]
    sampler = LmEvalSampler(task.fewshot_docs(), seed) if shots else None
    requests = []
    for i, doc in enumerate(docs):
        fewshot_ids = sampler.sample(shots, doc if task.excludes_eval_doc else None) if sampler else []
        requests += task.instance(i, doc, fewshot_ids).requests
    return requests


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, and the number of XLA compiles."""

    def __init__(self) -> None:
        import jax.monitoring

        self.seconds = 0.0
        self.compiles = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration
            self.compiles += event == COMPILE_EVENTS[-1]

    def snapshot(self) -> tuple[float, int]:
        return self.seconds, self.compiles


def timed(fn: Any, clock: CompileClock) -> tuple[Any, float, float, int]:
    """fn()'s result, wall seconds, compile seconds and compiles during the call."""
    s0, c0 = clock.snapshot()
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    s1, c1 = clock.snapshot()
    return out, wall, s1 - s0, c1 - c0


# -------------------------------------------------------------------------------------------------------------
# (b) The naive loop.


def make_naive(params: Any, cfg: Any, tokenizer: Any, buckets: list[int] | None) -> Any:
    """A function scoring string requests one at a time: tokenise, build one [1, length] row, call a jitted
    forward + log-softmax + gather, read the two scalars back. `buckets`: right-pad to the first bucket
    >= the row's length (None: exact length, so every new length compiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from eval.requests import encode_request, model_input
    from gptjax.model import forward

    @jax.jit
    def score_one(params: Any, tokens: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
        logits = forward(params, tokens, cfg)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
        greedy = jnp.argmax(logits, axis=-1) == targets
        return jnp.sum(jnp.where(mask, picked, 0.0)), jnp.all(greedy | ~mask)

    def run(requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in requests:
            ctx, cont = encode_request(tokenizer, context, continuation)
            inputs, _ = model_input(ctx, cont, cfg.n_ctx)
            targets = (ctx + cont)[-(cfg.n_ctx + 1) :][1:]
            n = len(inputs)
            length = n if buckets is None else next(b for b in buckets if b >= n)
            tokens = np.zeros((1, length), np.int32)
            target = np.zeros((1, length), np.int32)
            mask = np.zeros((1, length), bool)
            tokens[0, :n], target[0, :n], mask[0, n - len(cont) : n] = inputs, targets, True
            total, greedy = score_one(params, tokens, target, mask)
            out.append((float(total), bool(greedy)))
        return out

    return run


# -------------------------------------------------------------------------------------------------------------
# The measurements of one process.


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np

    from eval.gptjax_lm import GptjaxLM
    from eval.requests import encode_request, model_input
    from eval.scoring import bucket_lengths
    from gptjax.config import MeshConfig
    from gptjax.model import init_params, param_count
    from gptjax.sharding import make_mesh

    clock = CompileClock()
    cfg = model_config(args.preset)
    tokenizer = tokenizer_for(cfg)
    requests = hellaswag_requests(args.docs, args.shots)
    token_requests = [encode_request(tokenizer, c, k) for c, k in requests]
    lengths = [len(model_input(c, k, cfg.n_ctx)[0]) for c, k in token_requests]
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(args.seed))
    counts = param_count(cfg)
    n_devices = jax.device_count()
    mesh = make_mesh(MeshConfig(data=-1)) if n_devices > 1 else None
    report: dict[str, Any] = {
        "preset": cfg.name,
        "norm": cfg.norm,
        "n_layer": cfg.n_layer,
        "d_model": cfg.d_model,
        "n_head": cfg.n_head,
        "vocab_size": cfg.vocab_size,
        "n_ctx": cfg.n_ctx,
        "params": counts.total,
        "non_embedding_params": counts.non_embedding,
        "docs": args.docs,
        "shots": args.shots,
        "requests": len(requests),
        "distinct_lengths": len(set(lengths)),
        "mean_length": float(np.mean(lengths)),
        "real_tokens": int(sum(lengths)),
        "devices": n_devices,
        "device_kind": jax.devices()[0].device_kind,
        "paths": {},
    }

    # Every path: a first call (compiles + run), then `repeats` steady-state calls; the steady-state calls of
    # all paths are interleaved so that a change in the machine's load hits them alike.
    paths: dict[str, Any] = {}
    # With several (emulated) devices, (a) runs on one device and sharded, interleaved, for a fair ratio.
    variants = [("", None)]
    if mesh is not None:
        variants = [(f":host{n_devices}-unsharded", None), (f":sharded{n_devices}", mesh)]
    for bt in args.batch_tokens:
        for suffix, variant_mesh in variants:
            lm = GptjaxLM(params, cfg, tokenizer, batch_tokens=bt, mesh=variant_mesh)
            paths[f"a:batch_tokens={bt}{suffix}"] = (
                lambda lm=lm: [(r.logprob, r.is_greedy) for r in lm.loglikelihood(requests)],
                lm,
            )
    buckets = bucket_lengths(cfg.n_ctx)
    for name, lengths in (("b:exact", None), ("b:padded", buckets)):
        naive = make_naive(params, cfg, tokenizer, lengths)
        paths[name] = (lambda run=naive: run(requests), None)
    for name, (fn, lm) in paths.items():
        out, wall, compile_s, compiles = timed(fn, clock)
        entry = {
            "first_s": wall,
            "compile_s": compile_s,
            "compiles": compiles,
            "steady_s": [],
            "loglikelihoods": [lp for lp, _ in out],
            "is_greedy": [g for _, g in out],
        }
        if lm is not None:
            stats = lm.scorer.stats  # of the first call alone
            entry |= {
                "batches": stats.batches,
                "shapes": sorted(stats.shapes),
                "head_widths": sorted(stats.head_widths),
                "trees": stats.trees,
                "computed_tokens": stats.positions,
                "scored_positions": stats.scored,
            }
        else:
            entry["computed_tokens"] = (
                sum(lengths) if name == "b:exact" else sum(next(b for b in buckets if b >= n) for n in lengths)
            )
        report["paths"][name] = entry
        print(f"  [{name}] first call {wall:.1f}s ({compiles} compiles, {compile_s:.1f}s compiling)", flush=True)
    for repeat in range(args.repeats):
        for name, (fn, _) in paths.items():
            _, wall, _, compiles = timed(fn, clock)
            report["paths"][name]["steady_s"].append(wall)
            if compiles:
                print(f"  warning: [{name}] compiled {compiles} programs in a steady-state call", flush=True)
            print(f"  [{name}] steady-state call {repeat + 1}: {wall:.1f}s", flush=True)
    return report


# -------------------------------------------------------------------------------------------------------------
# Reporting.

LABELS = {"b:exact": "(b) naive, exact length", "b:padded": "(b') naive, padded to bucket"}


def label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    parts = name.split(":")
    if parts[0] == "b":  # the naive loop in the child process
        return f"{LABELS[':'.join(parts[:2])]}, {parts[2][len('host') :]} host devices"
    where = ""
    if len(parts) > 2:
        where = (
            f", sharded x{parts[2][len('sharded') :]}"
            if parts[2].startswith("sharded")
            else f", {parts[2].split('-')[0][len('host') :]} host devices, 1 used"
        )
    return f"(a) GptjaxLM {parts[1]}{where}"


def print_report(report: dict[str, Any]) -> None:
    paths = report["paths"]
    n = report["requests"]
    print(
        f"\nmodel {report['preset']}: {report['norm']}-norm GPT, n_layer={report['n_layer']} "
        f"d_model={report['d_model']} n_head={report['n_head']} vocab={report['vocab_size']} "
        f"n_ctx={report['n_ctx']}, "
        f"{report['params'] / 1e6:.1f}M parameters ({report['non_embedding_params'] / 1e6:.1f}M non-embedding), "
        f"fp32, random init"
    )
    print(
        f"{n} requests from {report['docs']} documents at K={report['shots']}: {report['real_tokens']} input "
        f"tokens, mean length {report['mean_length']:.1f}, {report['distinct_lengths']} distinct lengths; "
        f"host {report['device_kind']}, {os.cpu_count()} CPU cores"
    )
    width = max(len(label(k)) for k in paths)
    header = (
        f"{'path':{width}s} {'compiles':>8s} {'compile s':>9s} {'first call s':>12s} {'steady s':>8s} "
        f"{'req/s steady':>12s} {'req/s 1st':>9s} {'body x':>6s}"
    )
    print(header)
    print("-" * len(header))
    for name, e in paths.items():
        steady = min(e["steady_s"]) if e["steady_s"] else float("nan")
        print(
            f"{label(name):{width}s} {e['compiles']:8d} {e['compile_s']:9.1f} {e['first_s']:12.1f} {steady:8.1f} "
            f"{n / steady:12.1f} {n / e['first_s']:9.1f} {e['computed_tokens'] / report['real_tokens']:6.2f}"
        )
    print(
        "(compile s: JAX tracing + lowering + XLA compile inside the first call; steady: fastest later call; "
        "body x: token positions the model body computes, padding included, / real input tokens (below 1 when "
        "answer choices share their context); the LM head runs only at continuation positions)"
    )
    # Ratios only between paths measured in one process (interleaved); the child ran at another time.
    local = [k for k in paths if k.count(":") < 2]
    batched = [k for k in local if k.startswith("a:")]
    if "b:exact" not in paths or not batched:
        return
    steady = {k: min(paths[k]["steady_s"]) for k in paths}
    cold = {k: paths[k]["compile_s"] + steady[k] for k in paths}  # a cold call, robust to load changes
    best = min(batched, key=steady.get)
    print(
        f"\nratios (requests/s of the first / of the second) against the best (a), {label(best)}: "
        "steady state | cold call measured | cold call as compile s + steady s"
    )
    pairs = [(best, "b:exact"), (best, "b:padded")]
    pairs += [(k, ref) for k in local if k.startswith("c:") for ref in ("b:exact", best)]
    for a, b in pairs:
        print(
            f"  {label(a):{width}s} / {label(b):{width}s} {steady[b] / steady[a]:5.2f}x | "
            f"{paths[b]['first_s'] / paths[a]['first_s']:5.2f}x | {cold[b] / cold[a]:5.2f}x"
        )
    verdicts = [("one device", steady["b:exact"] / steady[best], cold["b:exact"] / cold[best])]
    for k in (k for k in paths if ":sharded" in k):  # measured interleaved with one device, in the child
        naive = f"b:exact:host{k.split(':sharded')[1]}"
        if naive in paths:
            print(
                f"  {label(k):{width}s} / {label(naive):{width}s} {steady[naive] / steady[k]:5.2f}x | "
                f"{paths[naive]['first_s'] / paths[k]['first_s']:5.2f}x | {cold[naive] / cold[k]:5.2f}x"
            )
            verdicts.append(
                (
                    f"sharded over {k.split(':sharded')[1]} host devices",
                    steady[naive] / steady[k],
                    cold[naive] / cold[k],
                )
            )
        base = k.replace(":sharded", ":host") + "-unsharded"
        if base in paths:
            print(
                f"  {label(k):{width}s} / {label(base):{width}s} {steady[base] / steady[k]:5.2f}x | "
                f"{paths[base]['first_s'] / paths[k]['first_s']:5.2f}x | {cold[base] / cold[k]:5.2f}x"
            )
        if base.split(":host")[0] in paths:
            base = base.split(":host")[0]
            print(
                f"  {label(base):{width}s} / {label(k):{width}s} {steady[k] / steady[base]:5.2f}x | "
                f"{paths[k]['first_s'] / paths[base]['first_s']:5.2f}x | {cold[k] / cold[base]:5.2f}x  "
                "(different processes, not interleaved)"
            )
    for where, steady_ratio, cold_ratio in verdicts:
        print(
            f"target (a) >= 5x (b), {where}: {'met' if steady_ratio >= 5 else 'NOT met'} in steady state "
            f"({steady_ratio:.2f}x), {'met' if cold_ratio >= 5 else 'NOT met'} for a cold call ({cold_ratio:.2f}x)"
        )
    print("\nlog-likelihood agreement with (b) naive exact length:")
    ref = paths["b:exact"]
    for name, e in paths.items():
        if name.startswith("b:exact"):
            continue
        diff = max(abs(x - y) for x, y in zip(e["loglikelihoods"], ref["loglikelihoods"]))
        mismatches = sum(x != y for x, y in zip(e["is_greedy"], ref["is_greedy"]))
        verdict = "ok" if diff < 1e-4 and not mismatches else "MISMATCH"
        print(f"  {label(name):{width}s} max |diff| {diff:.2e}, is_greedy mismatches {mismatches}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="HellaSwag validation documents (4 requests each)")
    parser.add_argument("--shots", type=int, default=0, help="few-shot examples per prompt (K)")
    parser.add_argument(
        "--preset",
        default="gpt2-mini",
        help=f"{', '.join(BENCH_PRESETS)} or any gptjax preset with the GPT-2 or byte vocabulary",
    )
    parser.add_argument(
        "--batch-tokens",
        default="256,1024,8192",
        help="comma-separated BatchScorer batch_tokens values for path (a) (GptjaxLM's default is 1024)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="steady-state calls per path (the fastest counts)")
    parser.add_argument(
        "--host-devices",
        type=int,
        default=2,
        help="also run (a) with the first --batch-tokens value sharded over this many emulated "
        "CPU devices, in a child process (1 = skip)",
    )
    parser.add_argument("--seed", type=int, default=0, help="parameter initialisation seed")
    parser.add_argument("--out", help="also write the figures as JSON here")
    # Internal: the child process that measures the sharded path.
    parser.add_argument("--child-devices", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_tokens = [int(b) for b in args.batch_tokens.split(",")]

    if args.child_devices:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.child_devices}".strip()
        report = measure(args)
        with open(args.out, "w") as f:
            json.dump(report, f)
        return

    print(f"HellaSwag validation, K={args.shots}, {args.docs} documents; preset {args.preset}", flush=True)
    report = measure(args)
    if args.host_devices > 1:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [
                sys.executable,
                __file__,
                "--docs",
                str(args.docs),
                "--shots",
                str(args.shots),
                "--preset",
                args.preset,
                "--batch-tokens",
                str(args.batch_tokens[0]),
                "--repeats",
                str(args.repeats),
                "--seed",
                str(args.seed),
                "--child-devices",
                str(args.host_devices),
                "--out",
                tmp.name,
            ]
            print(f"  child process: XLA_FLAGS=--xla_force_host_platform_device_count={args.host_devices}", flush=True)
            subprocess.run(cmd, check=True)
            with open(tmp.name) as f:
                child = json.load(f)
        report["paths"] |= {
            (f"{k}:host{args.host_devices}" if k.startswith("b:") else k): v for k, v in child["paths"].items()
        }
    print_report(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    **report,
                    "paths": {
                        k: {kk: vv for kk, vv in v.items() if kk not in ("loglikelihoods", "is_greedy")}
                        for k, v in report["paths"].items()
                    },
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
