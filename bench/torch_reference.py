"""A plain PyTorch (eager, fp32, CPU) twin of gptjax's pre-norm GPT-2 model and of its optimiser.

The throughput benchmark sets gptjax's jitted train step against this nanoGPT-style implementation. For
that comparison to be honest the two must be the same model with the same update rule, not merely models
of similar size: tests/test_torch_reference.py loads gptjax-initialised parameters into it and checks the
logits, and checks a few optimiser steps against the equivalent optax chain.

Run `python bench/torch_reference.py --bench small` for tokens/s on random data.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptjax.config import ConfigError, ModelConfig, OptimConfig


@dataclass(frozen=True)
class BenchConfig:
    model: ModelConfig
    batch_size: int  # sequences of model.n_ctx tokens


BENCH_CONFIGS: dict[str, BenchConfig] = {
    "nano": BenchConfig(
        ModelConfig(name="bench-nano", vocab_size=65, n_ctx=64, n_layer=4, n_head=4, d_model=128), batch_size=12
    ),
    # attention_block only schedules gptjax's attention (skipping the masked future, as torch's SDPA does);
    # both sides compute the same model.
    "small": BenchConfig(
        ModelConfig(name="bench-small", vocab_size=65, n_ctx=256, n_layer=6, n_head=6, d_model=384, attention_block=64),
        batch_size=8,
    ),
}


def _check_supported(cfg: ModelConfig) -> None:
    """Only the GPT-2 form is implemented; anything else would silently benchmark a different model."""
    unsupported = {
        "model.norm": cfg.norm != "pre",
        "model.final_norm": not cfg.final_norm,
        "model.tie_embeddings": not cfg.tie_embeddings,
        "model.attention_pattern": set(cfg.attention_pattern) != {"dense"},
        "model.embd_dropout": cfg.embd_dropout > 0,
        "model.attn_dropout": cfg.attn_dropout > 0,
        "model.resid_dropout": cfg.resid_dropout > 0,
        "model.dtype": cfg.dtype != "float32",
        "model.param_dtype": cfg.param_dtype != "float32",
    }
    bad = [f"{name}={getattr(cfg, name.split('.')[1])!r}" for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ConfigError(
            f"the torch reference implements only the fp32 pre-norm, tied, dense, dropout-free "
            f"GPT-2 form; unsupported: {', '.join(bad)}"
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.d_attn = cfg.n_head, cfg.d_head, cfg.d_attn
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_attn)  # query | key | value, each heads-major
        self.c_proj = nn.Linear(cfg.d_attn, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in self.c_attn(x).split(self.d_attn, dim=-1)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, self.d_attn))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """fp32 logits [batch, length, vocab] for int64 tokens [batch, length]."""
        length = tokens.shape[1]
        if length > self.cfg.n_ctx:
            raise ConfigError(f"sequence length {length} exceeds the model's context n_ctx={self.cfg.n_ctx}")
        x = self.wte(tokens) + self.wpe(torch.arange(length, device=tokens.device))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied LM head, no bias


@torch.no_grad()
def _init_like_gptjax(model: GPT) -> None:
    """gptjax's initialisation: N(0, init_std), residual projections scaled by 1/sqrt(2 n_layer), wpe std
    pos_init_std, zero biases, unit LayerNorm scales."""
    cfg = model.cfg
    residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layer) if cfg.scale_residual_init else cfg.init_std
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif ".ln_" in name or name.startswith("ln_"):
            p.fill_(1.0)
        elif name == "wpe.weight":
            p.normal_(0.0, cfg.pos_init_std)
        elif name.endswith("c_proj.weight"):
            p.normal_(0.0, residual_std)
        else:
            p.normal_(0.0, cfg.init_std)


def build(cfg: ModelConfig) -> GPT:
    """The torch model for `cfg`, initialised as gptjax initialises (seed with torch.manual_seed)."""
    _check_supported(cfg)
    model = GPT(cfg)
    _init_like_gptjax(model)
    return model


def gptjax_state_dict(params: Any, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """gptjax parameters (`model.init_params` layout) as a state dict of this module."""

    def t(x: Any) -> torch.Tensor:
        return torch.tensor(np.asarray(x, dtype=np.float32))

    d, a = cfg.d_model, cfg.d_attn
    state = {
        "wte.weight": t(params["wte"]),
        "wpe.weight": t(params["wpe"]),
        "ln_f.weight": t(params["ln_f"]["scale"]),
        "ln_f.bias": t(params["ln_f"]["bias"]),
    }
    for i in range(cfg.n_layer):
        p, pre = params[f"h_{i}"], f"h.{i}."
        attn, mlp = p["attn"], p["mlp"]
        qkv = ("query", "key", "value")
        state |= {
            pre + "ln_1.weight": t(p["ln_1"]["scale"]),
            pre + "ln_1.bias": t(p["ln_1"]["bias"]),
            pre + "ln_2.weight": t(p["ln_2"]["scale"]),
            pre + "ln_2.bias": t(p["ln_2"]["bias"]),
            # [d, heads, head_dim] kernels -> torch's [out, in] with heads-major output features
            pre + "attn.c_attn.weight": t(
                np.concatenate([np.asarray(attn[f"{n}_kernel"]).reshape(d, a) for n in qkv], axis=1).T
            ),
            pre + "attn.c_attn.bias": t(np.concatenate([np.asarray(attn[f"{n}_bias"]).reshape(a) for n in qkv])),
            pre + "attn.c_proj.weight": t(np.asarray(attn["out_kernel"]).reshape(a, d).T),
            pre + "attn.c_proj.bias": t(attn["out_bias"]),
            pre + "mlp.c_fc.weight": t(np.asarray(mlp["fc_kernel"]).T),
            pre + "mlp.c_fc.bias": t(mlp["fc_bias"]),
            pre + "mlp.c_proj.weight": t(np.asarray(mlp["proj_kernel"]).T),
            pre + "mlp.c_proj.bias": t(mlp["proj_bias"]),
        }
    return state


def load_gptjax_params(model: GPT, params: Any) -> GPT:
    model.load_state_dict(gptjax_state_dict(params, model.cfg), strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------
# The optimiser: AdamW with GPT-3's settings from OptimConfig, global-norm clipping, warm-up + cosine.


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of optim.learning_rate at 0-based update `step`, as optax.warmup_cosine_decay_schedule:
    linear from 0 over warmup_steps, then cosine to min_lr_ratio at decay_steps (counted from step 0)."""
    decay_steps = optim.decay_steps or total_steps
    if step < optim.warmup_steps:
        return step / optim.warmup_steps
    progress = min(1.0, (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _decayed(name: str, param: nn.Parameter, optim: OptimConfig) -> bool:
    if name in ("wte.weight", "wpe.weight"):
        return optim.decay_embeddings
    return param.ndim >= 2 or optim.decay_biases_and_norms  # 1-D: biases and LayerNorm parameters


@dataclass
class Optimizer:
    adamw: torch.optim.AdamW
    schedule: torch.optim.lr_scheduler.LambdaLR
    params: list[nn.Parameter]
    grad_clip: float

    def step(self) -> None:
        # torch divides by (norm + 1e-6) where optax divides by norm: a relative 1e-6 only while clipping.
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.adamw.step()
        self.schedule.step()


def make_optimizer(model: nn.Module, optim: OptimConfig, total_steps: int) -> Optimizer:
    """AdamW + clipping + schedule exactly as `optim` specifies (the fields gptjax's trainer reads)."""
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if _decayed(n, p, optim)], "weight_decay": optim.weight_decay},
        {"params": [p for n, p in named if not _decayed(n, p, optim)], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(adamw, lambda step: lr_factor(step, optim, total_steps))
    return Optimizer(adamw, schedule, [p for _, p in named], optim.grad_clip)


def train_steps(model: nn.Module, opt: Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """One update per (inputs, targets) int64 [batch, length] pair; returns the mean token losses."""
    model.train()
    losses = []
    for inputs, targets in batches:
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.adamw.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def random_batches(
    vocab_size: int, n: int, batch: int, seq_len: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` (inputs, next-token targets) pairs of uniformly random tokens: throughput needs no real text."""
    data = torch.randint(vocab_size, (n, batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return [(rows[:, :-1], rows[:, 1:]) for rows in data]


def measure_tokens_per_s(cfg: ModelConfig, batch: int, seq_len: int, steps: int, warmup: int, seed: int = 0) -> float:
    """Training tokens/s of the full step (forward, backward, clip, AdamW) after `warmup` untimed steps."""
    torch.manual_seed(seed)
    model = build(cfg)
    opt = make_optimizer(model, OptimConfig(), total_steps=warmup + steps)
    batches = random_batches(cfg.vocab_size, warmup + steps, batch, seq_len, seed)
    train_steps(model, opt, batches[:warmup])
    start = time.perf_counter()
    train_steps(model, opt, batches[warmup:])
    return steps * batch * seq_len / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bench", choices=sorted(BENCH_CONFIGS), action="append", help="benchmark config (repeatable; default: all)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.bench or sorted(BENCH_CONFIGS):
        bench = BENCH_CONFIGS[name]
        tps = measure_tokens_per_s(bench.model, bench.batch_size, bench.model.n_ctx, args.steps, args.warmup)
        print(
            f"{name}: {tps:,.0f} tokens/s (torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"batch {bench.batch_size} x {bench.model.n_ctx}, {args.steps} timed steps)"
        )


if __name__ == "__main__":
    main()
