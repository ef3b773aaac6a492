"""The GPT family (GPT-1, GPT-2, GPT-3 and tiny presets) as one pure-functional Flax module.

Parameters are a plain pytree; `forward(params, tokens, cfg)` is a pure function returning fp32 logits.
Every parameter is created with logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `norm`) so
the trainer can shard it through a rules table: no mesh axis names appear here.

Layers are a Python loop by default: per-layer names (`h_0`, `h_1`, ...) map one-to-one onto Hugging Face
GPT-2 checkpoints. With `model.scan_layers`, one period of `attention_pattern` (GPT-3: a dense and a banded
block) is the body of an `nn.scan` over stacked parameters (`layers/block_j`, leading axis = period index), so
compile time stops growing with depth; `stack_layers` / `unstack_layers` convert between the layouts exactly,
and decoding runs the unrolled layout.

Positions are GPT's learned embeddings `wpe`, added to the input, or with `model.positions="rotary"` (Su et al.
2021) a rotation of each query and key by its position and no `wpe`: position enters only queries and keys, as
in Olsson et al.'s small attention-only models, so scores depend on relative offsets only; keys enter the
decoding cache rotated, and Hugging Face export (GPT-2 layout) refuses the config.

Three knobs change how the same math is computed, never what: `model.remat` (REMAT_POLICIES, applied per
block over the activations named with `checkpoint_name`), `model.attention_impl` (XLA einsums, Pallas splash
attention on TPU, cuDNN on GPU) and `model.loss_chunk` (train.py's chunked LM head and loss).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from gptjax.config import AttentionKind, ConfigError, ModelConfig

Array = jax.Array
Params = Any  # nested dict of arrays
Cache = dict[str, Any]
Blocks = tuple[tuple[int, int, int], ...] | None  # see attention_blocks; None = all keys (decoding)

# Activation logical axes (parameters use the same vocabulary; see gptjax.sharding.DEFAULT_RULES).
ACT_HIDDEN = ("batch", "length", "act_embed")
LAYERS_AXIS = "layers"  # the stacked axis of scanned parameters

_QKV_NAMES = ("query_proj", "key_proj", "value_proj")
_save = jax.checkpoint_policies.save_only_these_names
# What each block keeps for the backward pass (the rest is recomputed), named as MaxText names them. The
# names are the `checkpoint_name`s in Attention and MLP; "dots" are matmul outputs (before their bias).
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,  # no rematerialisation: everything autodiff saves stays live until the backward pass
    "full": jax.checkpoint_policies.nothing_saveable,  # only each block's input; the whole block is recomputed
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # projections; not attention's scores
    "minimal_with_context": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _save("context")
    ),  # and attention's output, so a fused kernel's forward is not run again
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # every matmul, attention's [q, k] scores too
    "save_qkv_proj": _save(*_QKV_NAMES),
    "save_dot_except_mlp": _save(*_QKV_NAMES, "context", "out_proj"),
}
SPLASH_BLOCK = 512  # query and key rows per splash attention tile (MaxText's default), or the length if shorter


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


def _platform() -> str:
    """The platform being compiled for: the mesh's (an ahead-of-time TPU compile on a CPU host has a TPU
    mesh), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return jax.default_backend() if device is None else device.platform


def _materialize_gradient_bwd(_: None, g: Array) -> tuple[Array]:
    if _platform() == "cpu":
        # XLA:CPU removes optimization barriers before fusing, but never fuses a matmul into its consumers.
        # Multiplying by a 16 x 16 identity block is exact and costs 32 FLOPs per value.
        block = 16 if g.size % 16 == 0 else g.shape[-1]
        return ((g.reshape(-1, block) @ jnp.eye(block, dtype=g.dtype)).reshape(g.shape),)
    return (jax.lax.optimization_barrier(g),)


_materialize_gradient.defvjp(_materialize_gradient_fwd, _materialize_gradient_bwd)


ROTARY_BASE = 10000.0  # Su et al. 2021


def rotary(x: Array, positions: Array) -> Array:
    """Rotary position embedding (Su et al. 2021; GPT-NeoX's half split): x [batch, t, heads, d_head] at
    `positions` [batch, t], dimension i paired with i + d_head / 2 and the pair rotated by the angle
    position * ROTARY_BASE ** (-2i / d_head). A query and a key so rotated have a dot product that depends
    on their content and their offset only."""
    half = x.shape[-1] // 2
    freq = ROTARY_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[:, :, None, None] * freq  # [batch, t, 1, half]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _residual_std(cfg: ModelConfig) -> float:
    return cfg.init_std / math.sqrt(2 * cfg.n_layer) if cfg.scale_residual_init else cfg.init_std


class Attention(nn.Module):
    """Causal self-attention of one layer kind. `impl` is the kernel (see `attention_impl`): "xla" reads the
    boolean `mask` [batch, q, k] and skips the key `blocks` it removes; "splash" and "cudnn" build their
    masks from the kind and `segment_ids` [batch, q]. Under `model.positions="rotary"` queries and keys are
    rotated by their `positions` [batch, q] before attention (keys before they enter the cache)."""

    cfg: ModelConfig
    kind: AttentionKind
    impl: str
    blocks: Blocks

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        segment_ids: Array,
        positions: Array,
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
            return checkpoint_name(jnp.einsum("btd,dhk->bthk", x, w.astype(dt)) + b.astype(dt), f"{name}_proj")

        q, key, value = project("query"), project("key"), project("value")
        if cfg.positions == "rotary":
            q, key = rotary(q, positions), rotary(key, positions)
        new_cache = None
        if layer_cache is not None:
            assert cache_index is not None, "a layer cache comes with its write index"
            start = (0, cache_index, 0, 0)
            key = jax.lax.dynamic_update_slice(layer_cache["k"], key.astype(layer_cache["k"].dtype), start)
            value = jax.lax.dynamic_update_slice(layer_cache["v"], value.astype(layer_cache["v"].dtype), start)
            new_cache = {"k": key, "v": value}
            key, value = key.astype(dt), value.astype(dt)

        def attend(q_start: int, q_end: int | None, k_start: int) -> Array:
            assert mask is not None, "the XLA path reads the boolean mask"
            keys, values = key[:, k_start:q_end], value[:, k_start:q_end]
            scores = jnp.einsum(
                "bqhk,bshk->bhqs", q[:, q_start:q_end], keys, preferred_element_type=jnp.float32
            ) / math.sqrt(k)
            scores = jnp.where(mask[:, None, q_start:q_end, k_start:q_end], scores, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1)
            # Kept only when a caller makes "intermediates" mutable (eval/icl's induction probe); else a no-op.
            self.sow("intermediates", "attention_probs", probs)
            probs = nn.Dropout(cfg.attn_dropout)(probs, deterministic=deterministic)
            return jnp.einsum("bhqs,bshk->bqhk", probs.astype(dt), values)

        if self.impl == "splash":
            out = splash_attention(q, key, value, segment_ids, self.kind, cfg.band_width)
        elif self.impl == "cudnn":
            out = dot_product_attention(q, key, value, segment_ids, self.kind, cfg.band_width, "cudnn")
        elif self.blocks is None:  # decoding: the cache's keys, all of them
            out = attend(0, None, 0)
        else:
            out = jnp.concatenate([attend(*block) for block in self.blocks], axis=1)
        out = checkpoint_name(out, "context")
        wo = _param(self, "out_kernel", _residual_std(cfg), (h, k, d), ("heads", "kv", "embed"), pdt)
        bo = _param(self, "out_bias", None, (d,), ("embed",), pdt)
        y = checkpoint_name(jnp.einsum("bqhk,hkd->bqd", out, wo.astype(dt)) + bo.astype(dt), "out_proj")
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
        pre = checkpoint_name(x @ w1.astype(dt) + b1.astype(dt), "mlpwi")
        hidden = jax.nn.gelu(pre, approximate=True)  # GPT's tanh GELU
        y = checkpoint_name(hidden @ w2.astype(dt) + b2.astype(dt), "mlpwo")
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=deterministic)


class Block(nn.Module):
    cfg: ModelConfig
    kind: AttentionKind
    impl: str
    blocks: Blocks

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        segment_ids: Array,
        positions: Array,
        layer_cache: dict[str, Array] | None,
        cache_index: Array | int | None,
        deterministic: bool,
    ) -> tuple[Array, dict[str, Array] | None]:
        x = _materialize_gradient(nn.with_logical_constraint(x, ACT_HIDDEN))
        attn = Attention(self.cfg, self.kind, self.impl, self.blocks, name="attn")
        ln_1 = LayerNorm(self.cfg, name="ln_1")
        pre = self.cfg.norm == "pre"  # GPT-2/3; GPT-1 is post-norm
        a, new_cache = attn(
            ln_1(x) if pre else x, mask, segment_ids, positions, layer_cache, cache_index, deterministic
        )
        x = x + a if pre else ln_1(x + a)
        if not self.cfg.mlp:  # attention-only (Elhage et al. 2021; Olsson et al. 2022)
            return x, new_cache
        mlp, ln_2 = MLP(self.cfg, name="mlp"), LayerNorm(self.cfg, name="ln_2")
        return (x + mlp(ln_2(x), deterministic) if pre else ln_2(x + mlp(x, deterministic))), new_cache


def block_class(cfg: ModelConfig, training: bool) -> type[Block]:
    """Block, rematerialised per `cfg.remat` for cache-free passes (`deterministic` is static)."""
    if cfg.remat == "none" or not training:
        return Block
    # Scan already keeps XLA from merging the recomputation into the forward pass; unrolled blocks need
    # prevent_cse for that.
    return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers, static_argnums=(7,))


class Period(nn.Module):
    """One period of `attention_pattern`'s blocks: the body that `scan_layers` repeats n_layer / period times."""

    cfg: ModelConfig
    impl: str
    blocks: tuple[Blocks, ...]  # per block of the period
    deterministic: bool

    @nn.compact
    def __call__(
        self, x: Array, masks: dict[str, Array] | None, segment_ids: Array, positions: Array
    ) -> tuple[Array, None]:
        cls = block_class(self.cfg, training=True)
        for j, kind in enumerate(self.cfg.attention_pattern):
            mask = None if masks is None else masks[kind]
            block = cls(self.cfg, kind, self.impl, self.blocks[j], name=f"block_{j}")
            x, _ = block(x, mask, segment_ids, positions, None, None, self.deterministic)
        return x, None


def attention_impl(cfg: ModelConfig, length: int, general_masks: bool) -> str:
    """The attention kernel of a pass over `length` positions. Decoding and prefix-shared rows
    (`general_masks`) need masks no kernel takes, so they use XLA; auto means splash on TPU (when the length
    tiles into 128-row blocks and there is no attention dropout), cuDNN on GPU, XLA elsewhere. An explicit
    splash runs in Pallas interpret mode off TPU (slow; for tests)."""
    if general_masks or cfg.attention_impl == "xla":
        return "xla"
    if cfg.attention_impl == "splash" and length % 128:
        raise ConfigError(f"model.attention_impl='splash' tiles 128 positions at a time; got a length of {length}")
    if cfg.attention_impl != "auto":
        return cfg.attention_impl
    platform = _platform()
    if platform == "tpu" and length % 128 == 0 and cfg.attn_dropout == 0:
        return "splash"
    if platform in ("gpu", "cuda") and cfg.attn_dropout == 0:
        return "cudnn"
    return "xla"


def _splash_spec(mesh: Any, batch: int, heads: int) -> PartitionSpec:
    """The shard_map spec of [batch, heads, length, d_head] operands: batch and heads split as the logical
    rules split them (when their sizes divide), length and d_head whole (the kernel needs every key)."""

    def axes(name: str, size: int) -> Any:
        spec = nn.logical_to_mesh_axes((name,))
        entry = spec[0] if spec else None
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        names = tuple(a for a in names if mesh.shape.get(a, 1) > 1)
        if not names or size % math.prod(mesh.shape[a] for a in names):
            return None
        return names if len(names) > 1 else names[0]

    return PartitionSpec(axes("batch", batch), axes("heads", heads), None, None)


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, kind: str, band_width: int) -> Array:
    """Pallas splash attention (block-sparse flash attention) of [batch, length, heads, d_head] operands:
    causal, within `band_width` for a banded layer, and within each segment of packed rows. Under a mesh it
    runs per shard (shard_map over batch and heads); off TPU in Pallas interpret mode."""
    batch, length, heads, d_head = q.shape
    mesh = jax.sharding.get_abstract_mesh()
    block = min(SPLASH_BLOCK, length)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    shape = (length, length)
    if kind == "banded":
        head_mask: splash.Mask = splash.LocalMask(shape, window_size=(band_width - 1, 0), offset=0)
    else:
        head_mask = splash.CausalMask(shape)
    interpret = _platform() != "tpu"

    def attend(q: Array, k: Array, v: Array, segments: Array) -> Array:
        mask = splash.MultiHeadMask([head_mask] * q.shape[1])  # the heads of this shard
        kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)
        return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(segments, segments))

    to_heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    args = (to_heads_first(q / math.sqrt(d_head)), to_heads_first(k), to_heads_first(v), segment_ids)
    if not mesh.empty:
        spec = _splash_spec(mesh, batch, heads)
        attend = jax.shard_map(
            attend, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(spec[0])), out_specs=spec, check_vma=False
        )
    return to_heads_first(attend(*args))


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    segment_ids: Array,
    kind: str,
    band_width: int,
    implementation: Literal["xla", "cudnn"],
) -> Array:
    """`jax.nn.dot_product_attention` (implementation "cudnn" on GPU) with gptjax's masks: causal, the band of
    a banded layer, and packed rows' segments."""
    same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    window = (band_width - 1, 0) if kind == "banded" else None
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=same_segment,
        is_causal=True,
        local_window_size=window,
        implementation=implementation,
    )


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
        x = wte.astype(dt)[tokens]
        if cfg.positions == "learned":
            wpe = _param(self, "wpe", cfg.pos_init_std, (cfg.n_ctx, cfg.d_model), (None, "embed"), pdt)
            x = x + wpe.astype(dt)[positions]
        x = nn.Dropout(cfg.embd_dropout)(x, deterministic=deterministic)

        q_slots = offset + jnp.arange(length)
        if cache is None:
            k_slots, k_segments = q_slots, segment_ids
        else:
            k_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32), (0, offset))
            k_slots = jnp.arange(k_segments.shape[1])
        impl = attention_impl(cfg, length, general_masks=cache is not None or branch_ids is not None)
        masks = None
        if impl == "xla":
            masks = attention_masks(cfg, q_slots, k_slots, segment_ids, k_segments, branch_ids, positions)

        def blocks(kind: AttentionKind) -> Blocks:
            return None if cache is not None else attention_blocks(cfg, kind, length, branch_ids is None)

        new_layers = []
        if cfg.scan_layers:
            assert cache is None, "decoding runs the unrolled layout (forward_with_cache unstacks)"
            periods = nn.scan(
                Period,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.n_layer // len(cfg.attention_pattern),
                metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
            )
            period_blocks = tuple(blocks(kind) for kind in cfg.attention_pattern)
            x, _ = periods(cfg, impl, period_blocks, deterministic, name="layers")(x, masks, segment_ids, positions)
        else:
            cls = block_class(cfg, training=cache is None)
            for i in range(cfg.n_layer):
                layer_cache = cache["layers"][i] if cache is not None else None
                kind = cfg.layer_kind(i)
                mask = None if masks is None else masks[kind]
                block = cls(cfg, kind, impl, blocks(kind), name=f"h_{i}")
                x, new_layer = block(x, mask, segment_ids, positions, layer_cache, offset, deterministic)
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
    real tokens) and each row's `positions` count from its first real token. Scanned parameters are
    unstacked first: decoding runs the unrolled layout, with one cache entry per layer.
    """
    if cfg.scan_layers:
        params, cfg = unstack_layers(params, cfg), dataclasses.replace(cfg, scan_layers=False)
    logits, new_cache = GPT(cfg).apply({"params": params}, tokens, segment_ids, positions, cache)
    return logits, typing.cast(Cache, new_cache)


def stack_layers(params: Params, cfg: ModelConfig) -> Params:
    """Unrolled parameters (`h_0` ... `h_{n-1}`) in the scanned layout of `cfg`: layer i is entry i // p of
    `layers/block_{i % p}`, p = len(cfg.attention_pattern). Exact (values are only moved)."""
    p = len(cfg.attention_pattern)
    rest = {name: value for name, value in params.items() if not name.startswith("h_")}
    stacked = {
        f"block_{j}": jax.tree.map(
            lambda *layers: jnp.stack(layers), *[params[f"h_{i}"] for i in range(j, cfg.n_layer, p)]
        )
        for j in range(p)
    }
    return rest | {"layers": stacked}


def unstack_layers(params: Params, cfg: ModelConfig) -> Params:
    """The inverse of `stack_layers`: scanned parameters as `h_0` ... `h_{n-1}` (numpy or jax arrays)."""
    p = len(cfg.attention_pattern)
    rest = {name: value for name, value in params.items() if name != "layers"}
    return rest | {
        f"h_{i}": jax.tree.map(lambda x, i=i: x[i // p], params["layers"][f"block_{i % p}"]) for i in range(cfg.n_layer)
    }


# ---------------------------------------------------------------------------------------------------------
# Analytic sizes.


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # Kaplan et al.: excludes token and position embeddings (and an untied LM head)


def param_count(cfg: ModelConfig) -> ParamCount:
    d, a, f, v = cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.vocab_size
    per_layer = 4 * d * a + 3 * a + 2 * d * f + f + 6 * d  # qkv+out weights, qkv biases, mlp, 2 LNs + 2 biases
    if not cfg.mlp:
        per_layer = 4 * d * a + 3 * a + 3 * d  # attention-only: no MLP and no second LayerNorm
    non_embedding = cfg.n_layer * per_layer + (2 * d if cfg.final_norm else 0)
    embedding = v * d + (cfg.n_ctx * d if cfg.positions == "learned" else 0) + (0 if cfg.tie_embeddings else d * v)
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
    n_matmul = cfg.n_layer * (4 * d * a + (2 * d * f if cfg.mlp else 0)) + d * cfg.vocab_size
    keys = sum(t if cfg.layer_kind(i) == "dense" else min(cfg.band_width, t) for i in range(cfg.n_layer))
    return 6.0 * n_matmul + 12.0 * a * keys
