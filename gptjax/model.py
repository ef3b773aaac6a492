"""The GPT family (GPT-1, GPT-2, GPT-3 and tiny presets) as one pure-functional Flax module.

Parameters are a plain pytree; `forward(params, tokens, cfg)` is a pure function returning fp32 logits.
Every parameter is created with logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `norm`) so
the trainer can shard it through a rules table: no mesh axis names appear here.

Layers are a Python loop rather than `nn.scan`: GPT-3's alternating dense/banded layers and GPT-1's
post-norm stay plain code, and per-layer names (`h_0`, `h_1`, ...) map one-to-one onto Hugging Face GPT-2
checkpoints.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.config import ConfigError, ModelConfig

Array = jax.Array
Params = Any  # nested dict of arrays
Cache = dict[str, Any]
Blocks = tuple[tuple[int, int, int], ...] | None  # see attention_blocks; None = all keys (decoding)

# Activation logical axes (parameters use the same vocabulary; see gptjax.sharding.DEFAULT_RULES).
ACT_HIDDEN = ("batch", "length", "act_embed")


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _param(
    module: nn.Module,
    name: str,
    std: float | None,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype: jnp.dtype,
) -> Array:
    """A parameter initialised N(0, std) (or zeros when std is None), carrying logical axis names."""
    init = nn.initializers.zeros if std is None else nn.initializers.normal(std)
    # The box only carries the axis names: `param` hands the module the plain array.
    return typing.cast(Array, module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype))


class LayerNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d, pdt = self.cfg.d_model, _dtype(self.cfg.param_dtype)
        scale = typing.cast(
            Array, self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,), pdt)
        )
        bias = _param(self, "bias", None, (d,), ("norm",), pdt)
        x32 = x.astype(jnp.float32)  # statistics in fp32 whatever the compute dtype
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.cfg.layer_norm_eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


@jax.custom_vjp
def _materialize_gradient(x: Array) -> Array:
    """Identity whose gradient is materialised once per block (the one CPU-specific piece of the model).

    The residual stream's gradient is a running sum over all later layers. Left alone, XLA:CPU fuses that
    sum into every consumer and recomputes it there, so the backward pass grows quadratically with depth
    (bench/README.md, "The CPU gradient barrier", has the measurements). Other backends get an
    optimization barrier, which their compilers respect.
    """
    return x


def _materialize_gradient_fwd(x: Array) -> tuple[Array, None]:
    return x, None


def _materialize_gradient_bwd(_: None, g: Array) -> tuple[Array]:
    if jax.default_backend() == "cpu":
        # XLA:CPU removes optimization barriers before fusing, but never fuses a matmul into its consumers.
        # Multiplying by a 16 x 16 identity block is exact and costs 32 FLOPs per value.
        block = 16 if g.size % 16 == 0 else g.shape[-1]
        return ((g.reshape(-1, block) @ jnp.eye(block, dtype=g.dtype)).reshape(g.shape),)
    return (jax.lax.optimization_barrier(g),)


_materialize_gradient.defvjp(_materialize_gradient_fwd, _materialize_gradient_bwd)


def _residual_std(cfg: ModelConfig) -> float:
    return cfg.init_std / math.sqrt(2 * cfg.n_layer) if cfg.scale_residual_init else cfg.init_std


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array,
        blocks: Blocks,
        layer_cache: dict[str, Array] | None,
        cache_index: Array | int | None,
        deterministic: bool,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        d, h, k = cfg.d_model, cfg.n_head, cfg.d_head

        def project(name: str) -> Array:
            w = _param(self, f"{name}_kernel", cfg.init_std, (d, h, k), ("embed", "heads", "kv"), pdt)
            b = _param(self, f"{name}_bias", None, (h, k), ("heads", "kv"), pdt)
            return jnp.einsum("btd,dhk->bthk", x, w.astype(dt)) + b.astype(dt)

        q, key, value = project("query"), project("key"), project("value")
        new_cache = None
        if layer_cache is not None:
            assert cache_index is not None, "a layer cache comes with its write index"
            start = (0, cache_index, 0, 0)
            key = jax.lax.dynamic_update_slice(layer_cache["k"], key.astype(layer_cache["k"].dtype), start)
            value = jax.lax.dynamic_update_slice(layer_cache["v"], value.astype(layer_cache["v"].dtype), start)
            new_cache = {"k": key, "v": value}
            key, value = key.astype(dt), value.astype(dt)

        def attend(q_start: int, q_end: int | None, k_start: int) -> Array:
            keys, values = key[:, k_start:q_end], value[:, k_start:q_end]
            scores = jnp.einsum(
                "bqhk,bshk->bhqs", q[:, q_start:q_end], keys, preferred_element_type=jnp.float32
            ) / math.sqrt(k)
            scores = jnp.where(mask[:, None, q_start:q_end, k_start:q_end], scores, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1)
            probs = nn.Dropout(cfg.attn_dropout)(probs, deterministic=deterministic)
            return jnp.einsum("bhqs,bshk->bqhk", probs.astype(dt), values)

        if blocks is None:  # decoding: the cache's keys, all of them
            out = attend(0, None, 0)
        else:
            out = jnp.concatenate([attend(*block) for block in blocks], axis=1)
        wo = _param(self, "out_kernel", _residual_std(cfg), (h, k, d), ("heads", "kv", "embed"), pdt)
        bo = _param(self, "out_bias", None, (d,), ("embed",), pdt)
        y = jnp.einsum("bqhk,hkd->bqd", out, wo.astype(dt)) + bo.astype(dt)
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=deterministic), new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        w1 = _param(self, "fc_kernel", cfg.init_std, (cfg.d_model, cfg.d_ff), ("embed", "mlp"), pdt)
        b1 = _param(self, "fc_bias", None, (cfg.d_ff,), ("mlp",), pdt)
        w2 = _param(self, "proj_kernel", _residual_std(cfg), (cfg.d_ff, cfg.d_model), ("mlp", "embed"), pdt)
        b2 = _param(self, "proj_bias", None, (cfg.d_model,), ("embed",), pdt)
        hidden = jax.nn.gelu(x @ w1.astype(dt) + b1.astype(dt), approximate=True)  # GPT's tanh GELU
        y = hidden @ w2.astype(dt) + b2.astype(dt)
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=deterministic)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array,
        blocks: Blocks,
        layer_cache: dict[str, Array] | None,
        cache_index: Array | int | None,
        deterministic: bool,
    ) -> tuple[Array, dict[str, Array] | None]:
        x = _materialize_gradient(nn.with_logical_constraint(x, ACT_HIDDEN))
        attn, mlp = Attention(self.cfg, name="attn"), MLP(self.cfg, name="mlp")
        ln_1, ln_2 = LayerNorm(self.cfg, name="ln_1"), LayerNorm(self.cfg, name="ln_2")
        if self.cfg.norm == "pre":
            a, new_cache = attn(ln_1(x), mask, blocks, layer_cache, cache_index, deterministic)
            x = x + a
            return x + mlp(ln_2(x), deterministic), new_cache
        a, new_cache = attn(x, mask, blocks, layer_cache, cache_index, deterministic)  # GPT-1: post-norm
        x = ln_1(x + a)
        return ln_2(x + mlp(x, deterministic)), new_cache


def attention_masks(
    cfg: ModelConfig,
    q_slots: Array,
    k_slots: Array,
    q_segments: Array,
    k_segments: Array,
    branch_ids: Array | None = None,
    positions: Array | None = None,
) -> dict[str, Array]:
    """Boolean [batch, q, k] masks per attention kind: causal, same segment, and (banded) within the window.

    Slots are positions in the (cache) buffer; segments are document ids in packed rows (0 = padding,
    which only ever attends to padding, so no row is empty and no NaN appears). `branch_ids` (no cache)
    lay out prefix-shared rows: a segment's branch-0 tokens are a shared prefix that every later branch
    sees, and a branch b > 0 sees only that prefix and itself; the band then counts model `positions`,
    which restart for each branch, instead of slots.
    """
    causal = k_slots[None, :] <= q_slots[:, None]
    same_segment = q_segments[:, :, None] == k_segments[:, None, :]
    dense = causal[None] & same_segment
    distance = (q_slots[:, None] - k_slots[None, :])[None]
    if branch_ids is not None:
        assert positions is not None, "prefix-shared rows need their positions"
        shared_or_own = (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
        dense = dense & shared_or_own
        distance = positions[:, :, None] - positions[:, None, :]
    masks = {"dense": dense}
    if "banded" in cfg.attention_pattern:
        masks["banded"] = dense & (distance < cfg.band_width)
    return masks


def attention_blocks(cfg: ModelConfig, kind: str, length: int, band_in_slots: bool) -> Blocks:
    """Static (query start, query end, key start) blocks of `cfg.attention_block` query rows for a
    cache-free pass: keys from key start to query end hold every score the block's mask can keep (causal;
    within the band of a banded layer), so the scores of later and out-of-band keys are never computed.

    With prefix-shared rows the band counts positions, not slots (`attention_masks`), so only the causal
    bound is used then.
    """
    size = cfg.attention_block or length
    return tuple(
        (
            start,
            min(start + size, length),
            max(0, start - cfg.band_width + 1) if kind == "banded" and band_in_slots else 0,
        )
        for start in range(0, length, size)
    )


class GPT(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        cache: Cache | None = None,
        deterministic: bool = True,
        branch_ids: Array | None = None,
        return_features: bool = False,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        batch, length = tokens.shape
        if cache is None and length > cfg.n_ctx:
            raise ConfigError(f"sequence length {length} exceeds the model's context n_ctx={cfg.n_ctx}")
        offset = cache["index"] if cache is not None else 0
        if positions is None:
            positions = jnp.broadcast_to(offset + jnp.arange(length), (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if branch_ids is not None and cache is not None:
            raise ValueError("branch_ids (prefix-shared rows) are for cache-free forward passes only")

        wte = _param(self, "wte", cfg.init_std, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pdt)
        wpe = _param(self, "wpe", cfg.pos_init_std, (cfg.n_ctx, cfg.d_model), (None, "embed"), pdt)
        x = wte.astype(dt)[tokens] + wpe.astype(dt)[positions]
        x = nn.Dropout(cfg.embd_dropout)(x, deterministic=deterministic)

        q_slots = offset + jnp.arange(length)
        if cache is None:
            k_slots, k_segments = q_slots, segment_ids
        else:
            k_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32), (0, offset))
            k_slots = jnp.arange(k_segments.shape[1])
        masks = attention_masks(cfg, q_slots, k_slots, segment_ids, k_segments, branch_ids, positions)

        new_layers = []
        for i in range(cfg.n_layer):
            layer_cache = cache["layers"][i] if cache is not None else None
            kind = cfg.layer_kind(i)
            blocks = None if cache is not None else attention_blocks(cfg, kind, length, branch_ids is None)
            x, new_layer = Block(cfg, name=f"h_{i}")(x, masks[kind], blocks, layer_cache, offset, deterministic)
            new_layers.append(new_layer)
        if cfg.final_norm:
            x = LayerNorm(cfg, name="ln_f")(x)
        new_cache = None
        if cache is not None:
            new_cache = {"index": offset + length, "segment_ids": k_segments, "layers": tuple(new_layers)}
        if return_features:
            return x, new_cache
        if cfg.tie_embeddings:
            embedding = wte
        else:
            embedding = _param(self, "lm_head", cfg.init_std, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pdt).T
        return project_to_vocab(x, embedding), new_cache


def project_to_vocab(x: Array, output_embedding: Array) -> Array:
    """The LM head: fp32 logits [..., vocab] of features x [..., d_model] against `output_embedding`
    [vocab, d_model] (or a slice of its rows), computed in x's dtype with fp32 accumulation."""
    return jnp.einsum("...d,vd->...v", x, output_embedding.astype(x.dtype), preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# The functional API the rest of gptjax uses.


def init_boxed(cfg: ModelConfig, rng: Array) -> Params:
    """Parameters wrapped in flax `LogicallyPartitioned` boxes (for reading logical axes)."""
    tokens = jnp.zeros((1, min(8, cfg.n_ctx)), jnp.int32)
    return GPT(cfg).init({"params": rng}, tokens)["params"]


def init_params(cfg: ModelConfig, rng: Array) -> Params:
    """A plain pytree of freshly initialised parameters."""
    return nn.unbox(init_boxed(cfg, rng))


def abstract_params(cfg: ModelConfig) -> Params:
    """Shapes and dtypes of the parameters, computed without allocating them (works for 175B)."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def logical_axes(cfg: ModelConfig) -> Params:
    """Pytree (same structure as the params) of `PartitionSpec`s holding logical axis names."""
    boxed = jax.eval_shape(lambda: init_boxed(cfg, jax.random.key(0)))
    return nn.get_partition_spec(boxed)


def forward(
    params: Params,
    tokens: Array,
    cfg: ModelConfig,
    *,
    segment_ids: Array | None = None,
    positions: Array | None = None,
    dropout_rng: Array | None = None,
    branch_ids: Array | None = None,
    return_features: bool = False,
) -> Array:
    """fp32 logits [batch, length, vocab]. Dropout is applied iff `dropout_rng` is given.

    `branch_ids` [batch, length] share a prefix between several continuations in one row (see
    `attention_masks`; eval scores a question's answer choices this way). With `return_features`, the final
    (normalised) hidden states [batch, length, d_model] instead of logits: eval projects only the positions
    it scores, `project_to_vocab(features, output_embedding(params, cfg))`, in slices of the vocabulary.
    """
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    logits, _ = GPT(cfg).apply(
        {"params": params},
        tokens,
        segment_ids,
        positions,
        deterministic=dropout_rng is None,
        rngs=rngs,
        branch_ids=branch_ids,
        return_features=return_features,
    )
    return logits


def output_embedding(params: Params, cfg: ModelConfig) -> Array:
    """The LM head's [vocab, d_model] matrix: the token embedding when tied."""
    return params["wte"] if cfg.tie_embeddings else params["lm_head"].T


def init_cache(cfg: ModelConfig, batch: int, max_length: int, dtype: str | None = None) -> Cache:
    """An empty KV cache for incremental decoding of up to `max_length` tokens per row."""
    if max_length > cfg.n_ctx:
        raise ConfigError(f"cache length {max_length} exceeds the model's context n_ctx={cfg.n_ctx}")
    shape = (batch, max_length, cfg.n_head, cfg.d_head)
    dt = _dtype(dtype or cfg.dtype)
    layer = lambda: {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}  # noqa: E731
    return {
        "index": jnp.zeros((), jnp.int32),
        "segment_ids": jnp.zeros((batch, max_length), jnp.int32),
        "layers": tuple(layer() for _ in range(cfg.n_layer)),
    }


def forward_with_cache(
    params: Params,
    tokens: Array,
    cache: Cache,
    cfg: ModelConfig,
    *,
    positions: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Cache]:
    """Run `tokens` at cache slots [index, index + length) and return (fp32 logits, updated cache).

    Rows of different prompt lengths are left-padded: padded slots get segment id 0 (never attended to by
    real tokens) and each row's `positions` count from its first real token.
    """
    logits, new_cache = GPT(cfg).apply({"params": params}, tokens, segment_ids, positions, cache)
    return logits, typing.cast(Cache, new_cache)


# ---------------------------------------------------------------------------------------------------------
# Analytic sizes.


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # Kaplan et al.: excludes token and position embeddings (and an untied LM head)


def param_count(cfg: ModelConfig) -> ParamCount:
    d, a, f, v = cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.vocab_size
    per_layer = 4 * d * a + 3 * a + 2 * d * f + f + 6 * d  # qkv+out weights, qkv biases, mlp, 2 LNs + 2 biases
    non_embedding = cfg.n_layer * per_layer + (2 * d if cfg.final_norm else 0)
    embedding = v * d + cfg.n_ctx * d + (0 if cfg.tie_embeddings else d * v)
    return ParamCount(total=non_embedding + embedding, non_embedding=non_embedding)


FLOPS_CONVENTION = (
    "training FLOPs/token = 6*N_matmul + 12*sum_layers(d_attn*T_layer): N_matmul = non-embedding weight "
    "matrices + the LM head (d_model*vocab); attention counts QK^T and AV over all T_layer keys (no causal "
    "discount; T_layer = seq_len for dense layers, min(band_width, seq_len) for banded layers), as in PaLM's "
    "6N + 12LHQT. Biases, LayerNorm, softmax and embedding lookups are not counted."
)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training (forward + backward) FLOPs per token; see FLOPS_CONVENTION."""
    t = cfg.n_ctx if seq_len is None else seq_len
    d, a, f = cfg.d_model, cfg.d_attn, cfg.d_ff
    n_matmul = cfg.n_layer * (4 * d * a + 2 * d * f) + d * cfg.vocab_size
    keys = sum(t if cfg.layer_kind(i) == "dense" else min(cfg.band_width, t) for i in range(cfg.n_layer))
    return 6.0 * n_matmul + 12.0 * a * keys
