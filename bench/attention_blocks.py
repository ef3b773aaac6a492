"""Forward + backward time of a preset's layers at full context, attention in one block and in blocks.

`model.attention_blocks` skips the key blocks that a causal (and banded) mask removes; this prints what that
saves for a published preset's shapes, with the layer count and vocabulary cut down (`--layers`, `--vocab`)
so that a CPU runs it in seconds. One pattern cycle (GPT-3: one dense and one banded layer) is the default.

Run as a script from the repository root: `python bench/attention_blocks.py [--preset gpt3-small]`.
"""

from __future__ import annotations

import argparse
import dataclasses

import gemm_floor
import jax
import numpy as np

from gptjax import model
from gptjax.config import get_preset


def seconds_per_step(cfg, tokens: jax.Array, repeats: int) -> float:
    """Fastest of `repeats` jitted gradient computations of the mean logit (after one compiling call)."""
    params = model.init_params(cfg, jax.random.key(0))
    grad = jax.jit(jax.grad(lambda p: model.forward(p, tokens, cfg).mean()))
    return gemm_floor.fastest(lambda: jax.block_until_ready(grad(params)), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt3-small")
    parser.add_argument("--layers", type=int, default=0, help="layers to keep (0 = one attention-pattern cycle)")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary to keep (the LM head is not the point)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    cfg = dataclasses.replace(
        preset,
        n_layer=args.layers or len(preset.attention_pattern),
        vocab_size=args.vocab,
        embd_dropout=0.0,
        attn_dropout=0.0,
        resid_dropout=0.0,
    )
    tokens = np.random.default_rng(0).integers(0, args.vocab, (args.batch, cfg.n_ctx)).astype(np.int32)
    block = preset.attention_block or 256
    one, blocked = (
        seconds_per_step(dataclasses.replace(cfg, attention_block=b), tokens, args.repeats) for b in (0, block)
    )
    print(
        f"{args.preset} x {cfg.n_layer} layers {cfg.attention_pattern[: cfg.n_layer]}, {args.batch} x {cfg.n_ctx} "
        f"tokens, forward + backward: one block {one * 1e3:,.0f} ms, blocks of {block} {blocked * 1e3:,.0f} ms "
        f"({one / blocked:.2f}x)"
    )


if __name__ == "__main__":
    main()
