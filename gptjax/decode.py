"""Autoregressive generation on the KV cache: greedy, sampling (temperature / top-k / top-p) and beam search.

Prompts of different lengths are left-padded so that every row's last prompt token sits in the same cache
slot and the cache's single scalar index serves the whole batch. Pad slots get segment id 0, so real tokens
never attend to them, and each row's positions count from its first real token: a padded row computes
exactly what it would compute alone. The prompt is prefilled in one call, then a `lax.while_loop` of
single-token steps (the first feeds the prompt's last token) runs until every row is done. Shapes depend
only on (batch, padded prompt length, max_new_tokens), and prompt lengths are rounded up to a multiple of
`pad_multiple`, so an eval sweep compiles a handful of programs rather than one per prompt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig
from gptjax.model import Cache, Params, forward_with_cache, init_cache

Array = jax.Array
Method = Literal["greedy", "sample", "beam"]


class Vocabulary(Protocol):
    """What `generate_text` needs from a tokenizer (seqio vocabularies fit; it must be hashable)."""

    def __hash__(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


# ---------------------------------------------------------------------------------------------------------
# Cache building blocks (also what the cache-consistency tests drive directly).


def left_pad(prompts: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts right-aligned in a [batch, length] int32 array (pad id 0), and their lengths."""
    tokens = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt) :] = prompt
    return tokens, np.array([len(p) for p in prompts], np.int32)


def prefill(params: Params, cfg: ModelConfig, tokens: Array, lengths: Array, cache_length: int) -> tuple[Array, Cache]:
    """Run left-padded prompts through a fresh `cache_length`-slot cache: (logits for every slot, cache)."""
    pad = tokens.shape[1] - lengths
    slots = jnp.arange(tokens.shape[1])[None]
    positions = jnp.maximum(slots - pad[:, None], 0)
    segment_ids = (slots >= pad[:, None]).astype(jnp.int32)
    cache = init_cache(cfg, tokens.shape[0], cache_length)
    return forward_with_cache(params, tokens, cache, cfg, positions=positions, segment_ids=segment_ids)


def decode_step(params: Params, cfg: ModelConfig, tokens: Array, positions: Array, cache: Cache) -> tuple[Array, Cache]:
    """Feed one token per row ([batch] ids at [batch] positions): (next-token logits [batch, vocab], cache)."""
    logits, cache = forward_with_cache(
        params, tokens[:, None], cache, cfg, positions=positions[:, None], segment_ids=jnp.ones_like(tokens[:, None])
    )
    return logits[:, 0], cache


# ---------------------------------------------------------------------------------------------------------
# Sampling filters: each maps logits to logits with the removed tokens at -inf, so they compose.


def _descending(logits: Array) -> tuple[Array, Array]:
    """(token ids in descending logit order, each token's place in it); ties put the lower id first, as
    argmax and lax.top_k do, so top_k=1 sampling is exactly greedy."""
    order = jnp.argsort(-logits, axis=-1, stable=True)
    return order, jnp.argsort(order, axis=-1)


def top_k_filter(logits: Array, k: int) -> Array:
    """Keep exactly the k highest logits per row."""
    return jnp.where(_descending(logits)[1] < k, logits, -jnp.inf)


def top_p_filter(logits: Array, p: float) -> Array:
    """Nucleus filter: keep the smallest set of most probable tokens whose total probability is >= p.

    A token is kept iff the tokens ahead of it in descending order hold less than p in total.
    """
    order, rank = _descending(logits)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(jnp.take_along_axis(mass_before < p, rank, axis=-1), logits, -jnp.inf)


# ---------------------------------------------------------------------------------------------------------
# The jitted decoding loops. Both return (tokens [batch, max_new], n_keep [batch], n_total [batch]): n_total
# tokens were generated, the first n_keep of them precede the stop sequence that ended the row.


def _stop_length(window: Array, table: Array, table_lengths: Array) -> Array:
    """Length of the longest stop sequence that `window` ([..., width], latest token last) ends with; 0 if none.

    `table` [n_stops, width] holds the stop sequences right-aligned, padded with -1.
    """
    hit = jnp.all((window[..., None, :] == table) | (table < 0), axis=-1) & (table_lengths > 0)
    return jnp.max(jnp.where(hit, table_lengths, 0), axis=-1)


def _mask_padding(logits: Array, n_valid: Array) -> Array:
    """Logits of ids >= n_valid (a vocabulary padded beyond the tokenizer's) at -inf: never chosen."""
    return jnp.where(jnp.arange(logits.shape[-1]) < n_valid, logits, -jnp.inf)


def _prefill_all_but_last(
    params: Params, cfg: ModelConfig, tokens: Array, lengths: Array, max_new_tokens: int
) -> Cache:
    """Cache holding all prompt tokens but the last, which the loop's first step feeds.

    Only one position's logits are ever needed, and the prefill's unused [batch, length, vocab] logits are
    then dead code that XLA drops. The cache has room for the max_new_tokens - 1 new tokens fed back.
    """
    _, cache = prefill(params, cfg, tokens[:, :-1], lengths - 1, tokens.shape[1] + max_new_tokens - 1)
    return cache


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "sample", "top_k", "top_p"))
def _sample_loop(
    params: Params,
    tokens: Array,
    lengths: Array,
    stop_table: Array,
    stop_lengths: Array,
    n_valid: Array,
    rng: Array | None,
    temperature: Array,
    *,
    cfg: ModelConfig,
    max_new_tokens: int,
    sample: bool,
    top_k: int | None,
    top_p: float | None,
) -> tuple[Array, Array, Array]:
    batch = tokens.shape[0]

    def choose(logits: Array, t: Array) -> Array:
        if not sample:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = logits / temperature
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None:
            logits = top_p_filter(logits, top_p)
        assert rng is not None, "sampling needs a key (generate checks this)"
        return jax.random.categorical(jax.random.fold_in(rng, t), logits).astype(jnp.int32)

    def step(state: dict[str, Any]) -> dict[str, Any]:
        t, done = state["t"], state["done"]
        logits, cache = decode_step(params, cfg, state["last"], lengths - 1 + t, state["cache"])
        token = choose(_mask_padding(logits, n_valid), t)
        window = jnp.concatenate([state["window"][:, 1:], token[:, None]], axis=1)
        stop = _stop_length(window, stop_table, stop_lengths)
        newly_done = ~done & ((stop > 0) | (t + 1 == max_new_tokens))
        return {
            "t": t + 1,
            "last": token,
            "cache": cache,
            "window": window,
            "done": done | newly_done,
            "tokens": state["tokens"].at[:, t].set(token),
            "n_keep": jnp.where(newly_done, t + 1 - stop, state["n_keep"]),
            "n_total": jnp.where(newly_done, t + 1, state["n_total"]),
        }

    zeros = jnp.zeros((batch,), jnp.int32)
    state: dict[str, Any] = {
        "t": jnp.zeros((), jnp.int32),
        "last": tokens[:, -1],
        "cache": _prefill_all_but_last(params, cfg, tokens, lengths, max_new_tokens),
        "window": jnp.full((batch, stop_table.shape[1]), -1, jnp.int32),
        "done": jnp.zeros((batch,), bool),
        "tokens": jnp.zeros((batch, max_new_tokens), jnp.int32),
        "n_keep": zeros,
        "n_total": zeros,
    }
    state = jax.lax.while_loop(lambda s: ~jnp.all(s["done"]), step, state)
    return state["tokens"], state["n_keep"], state["n_total"]


def _reorder(cache: Cache, rows: Array) -> Cache:
    return {
        **cache,
        "segment_ids": cache["segment_ids"][rows],
        "layers": jax.tree.map(lambda x: x[rows], cache["layers"]),
    }


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "num_beams"))
def _beam_loop(
    params: Params,
    tokens: Array,
    lengths: Array,
    stop_table: Array,
    stop_lengths: Array,
    n_valid: Array,
    length_penalty: Array,
    *,
    cfg: ModelConfig,
    max_new_tokens: int,
    num_beams: int,
) -> tuple[Array, Array, Array]:
    """Beam search keeping `num_beams` alive and `num_beams` finished hypotheses per row.

    Finished hypotheses are ranked by sum(log p) / n_generated ** length_penalty. As in Hugging Face, a
    candidate may only finish if it ranks within the top `num_beams` of its step, which makes one beam with
    length_penalty=0 exactly greedy. A row stops once no alive beam can still beat its worst finished one
    (log-probs only fall, so the bound is exact, not a heuristic).
    """
    batch, k, m = tokens.shape[0], num_beams, max_new_tokens
    cache = _prefill_all_but_last(params, cfg, tokens, lengths, m)
    beam_lengths = jnp.repeat(lengths, k)
    rows = jnp.arange(batch)[:, None]

    def step(state: dict[str, Any]) -> dict[str, Any]:
        t, done = state["t"], state["done"]
        logits, cache = decode_step(params, cfg, state["last"], beam_lengths - 1 + t, state["cache"])
        logits = _mask_padding(logits, n_valid).reshape(batch, k, -1)
        # Each beam's best 2k continuations, ranked on the logits so ties break as greedy's argmax does;
        # then the best 2k overall, so k can stay alive even if k of them finish.
        _, beam_tokens = jax.lax.top_k(logits, 2 * k)
        log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), beam_tokens, axis=-1)
        totals = (state["alive_score"][..., None] + log_probs).reshape(batch, -1)
        scores, flat = jax.lax.top_k(totals, 2 * k)  # [batch, 2k], best first
        parent = flat // (2 * k)
        token = jnp.take_along_axis(beam_tokens.reshape(batch, -1), flat, axis=-1)
        seqs = jnp.take_along_axis(state["alive_tokens"], parent[..., None], axis=1).at[:, :, t].set(token)
        window = jnp.take_along_axis(state["window"], parent[..., None], axis=1)
        window = jnp.concatenate([window[..., 1:], token[..., None]], axis=-1)
        stop = _stop_length(window, stop_table, stop_lengths)
        finished = (jnp.arange(2 * k) < k) & ((stop > 0) | (t + 1 == m))

        normalized = scores / (t + 1.0) ** length_penalty
        newly_finished = jnp.where(finished & ~done[:, None], normalized, -jnp.inf)
        fin_score, pick = jax.lax.top_k(jnp.concatenate([state["fin_score"], newly_finished], 1), k)

        def pick_from(old: Array, new: Array) -> Array:
            return jnp.take_along_axis(jnp.concatenate([old, new], 1), pick, axis=1)

        alive_score, alive = jax.lax.top_k(jnp.where(finished, -jnp.inf, scores), k)
        best_possible = alive_score[:, 0] / jnp.where(length_penalty > 0, m, t + 1.0) ** length_penalty
        return {
            "t": t + 1,
            "alive_score": alive_score,
            "last": jnp.take_along_axis(token, alive, axis=1).reshape(-1),
            "alive_tokens": jnp.take_along_axis(seqs, alive[..., None], axis=1),
            "window": jnp.take_along_axis(window, alive[..., None], axis=1),
            "cache": _reorder(cache, (rows * k + jnp.take_along_axis(parent, alive, axis=1)).reshape(-1)),
            "fin_score": fin_score,
            "fin_tokens": jnp.take_along_axis(jnp.concatenate([state["fin_tokens"], seqs], 1), pick[..., None], 1),
            "fin_keep": pick_from(state["fin_keep"], t + 1 - stop),
            "fin_total": pick_from(state["fin_total"], jnp.full_like(stop, t + 1)),
            "done": done | (best_possible <= fin_score[:, -1]) | (t + 1 == m),
        }

    no_score = jnp.full((batch, k), -jnp.inf)
    state = {
        "t": jnp.zeros((), jnp.int32),
        "last": jnp.repeat(tokens[:, -1], k),
        "cache": jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, cache),
        "alive_score": no_score.at[:, 0].set(0.0),  # all beams start as one: the prompt
        "alive_tokens": jnp.zeros((batch, k, m), jnp.int32),
        "window": jnp.full((batch, k, stop_table.shape[1]), -1, jnp.int32),
        "fin_score": no_score,
        "fin_tokens": jnp.zeros((batch, k, m), jnp.int32),
        "fin_keep": jnp.zeros((batch, k), jnp.int32),
        "fin_total": jnp.zeros((batch, k), jnp.int32),
        "done": jnp.zeros((batch,), bool),
    }
    state = jax.lax.while_loop(lambda s: ~jnp.all(s["done"]), step, state)
    return state["fin_tokens"][:, 0], state["fin_keep"][:, 0], state["fin_total"][:, 0]


# ---------------------------------------------------------------------------------------------------------
# Host-side API.


def _check_tokens(what: str, seqs: Sequence[Sequence[int]], vocab_size: int) -> None:
    for i, seq in enumerate(seqs):
        if len(seq) == 0:
            raise ValueError(f"{what} {i} is empty")
        bad = [tok for tok in seq if not 0 <= tok < vocab_size]
        if bad:
            raise ValueError(f"{what} {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")


def _bucket(n: int) -> int:
    """The next power of two >= n, at least 4."""
    return max(4, 1 << (n - 1).bit_length())


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: Method = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 0.0,
    stop_sequences: Sequence[Sequence[int]] = (),
    eos_id: int | None = None,
    rng: Array | None = None,
    include_stop: bool = False,
    left_truncate: bool = False,
    pad_multiple: int = 64,
    valid_vocab: int | None = None,
) -> list[list[int]]:
    """The new tokens for each prompt, at most `max_new_tokens` of them.

    A row stops when its generated tokens end with one of `stop_sequences` (or with `eos_id`, a one-token
    stop sequence); the stop tokens are left out of the result unless `include_stop`. `method="sample"`
    applies temperature, then top-k, then top-p, and needs an explicit `rng` key: the same key gives the
    same samples. `method="beam"` returns the best of `num_beams` hypotheses by sum(log p) / length **
    length_penalty (length counts stop tokens); one beam with length_penalty=0 is exactly greedy. A prompt
    longer than n_ctx - max_new_tokens is an error unless `left_truncate`, which keeps its last tokens.
    Prompt lengths are padded up to a multiple of `pad_multiple` to limit recompilation. With `valid_vocab`,
    ids >= valid_vocab (padding rows of the embedding, which no tokenizer decodes) are never generated.
    """
    if method not in ("greedy", "sample", "beam"):
        raise ValueError(f"method={method!r}; valid methods are 'greedy', 'sample', 'beam'")
    if method != "sample" and (top_k is not None or top_p is not None or temperature != 1.0):
        raise ValueError(
            f"temperature/top_k/top_p only apply to method='sample', got method={method!r} with "
            f"temperature={temperature}, top_k={top_k}, top_p={top_p}"
        )
    if method == "sample":
        if rng is None:
            raise ValueError("method='sample' needs an explicit PRNG key: rng=jax.random.key(seed)")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 (use method='greedy' for argmax decoding)")
        if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
            raise ValueError(f"top_k={top_k} must be in [1, vocab_size={cfg.vocab_size}]")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if num_beams != 1 and method != "beam":
        raise ValueError(f"num_beams={num_beams} needs method='beam', got method={method!r}")
    if not 1 <= num_beams <= cfg.vocab_size // 2:
        raise ValueError(f"num_beams={num_beams} must be in [1, vocab_size // 2 = {cfg.vocab_size // 2}]")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple={pad_multiple} must be >= 1")
    n_valid = cfg.vocab_size if valid_vocab is None else valid_vocab
    if not 2 * num_beams <= n_valid <= cfg.vocab_size:
        raise ValueError(f"valid_vocab={valid_vocab} must be in [2 * num_beams, vocab_size={cfg.vocab_size}]")
    if not prompts:
        raise ValueError("no prompts to generate from")
    _check_tokens("prompt", prompts, cfg.vocab_size)
    stops = [list(s) for s in stop_sequences] + ([[eos_id]] if eos_id is not None else [])
    _check_tokens("stop sequence", stops, cfg.vocab_size)

    room = cfg.n_ctx - max_new_tokens  # the longest prompt that fits
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in n_ctx={cfg.n_ctx}")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) > room:
        if not left_truncate:
            raise ValueError(
                f"prompt {longest} has {len(prompts[longest])} tokens; with max_new_tokens={max_new_tokens} that "
                f"needs {len(prompts[longest]) + max_new_tokens} positions but n_ctx={cfg.n_ctx} (pass "
                f"left_truncate=True to keep the last {room} tokens of long prompts)"
            )
        prompts = [p[-room:] for p in prompts]
    length = min(-(-max(len(p) for p in prompts) // pad_multiple) * pad_multiple, room)
    tokens, lengths = left_pad(prompts, length)

    # The table's shape is bucketed too, so typical stop sets share one compiled program.
    width = _bucket(max((len(s) for s in stops), default=1))
    stop_table = np.full((_bucket(len(stops)), width), -1, np.int32)
    stop_lengths = np.zeros((len(stop_table),), np.int32)
    for i, stop in enumerate(stops):
        stop_table[i, width - len(stop) :] = stop
        stop_lengths[i] = len(stop)

    if method == "beam":
        out, n_keep, n_total = _beam_loop(
            params,
            tokens,
            lengths,
            stop_table,
            stop_lengths,
            jnp.int32(n_valid),
            jnp.float32(length_penalty),
            cfg=cfg,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
        )
    else:
        out, n_keep, n_total = _sample_loop(
            params,
            tokens,
            lengths,
            stop_table,
            stop_lengths,
            jnp.int32(n_valid),
            rng if method == "sample" else None,
            jnp.float32(temperature),
            cfg=cfg,
            max_new_tokens=max_new_tokens,
            sample=method == "sample",
            top_k=top_k,
            top_p=top_p,
        )
    ends = np.asarray(n_total if include_stop else n_keep)
    return [row[:n].tolist() for row, n in zip(np.asarray(out), ends)]


@functools.lru_cache(maxsize=4)
def _token_texts(vocab: Vocabulary, size: int) -> tuple[str, ...]:
    return tuple(vocab.decode([i]) for i in range(size))


def generate_text(
    params: Params,
    cfg: ModelConfig,
    vocab: Vocabulary,
    contexts: Sequence[str],
    *,
    max_new_tokens: int,
    until: Sequence[str] = (),
    eos_id: int | None = None,
    **kwargs: Any,
) -> list[str]:
    """lm-eval-style generation: each context's continuation, cut before the first occurrence of any `until`.

    Stop strings are matched on the decoded text, so one inside a merged token ("\\n\\n" for "\\n") or
    spread over tokens still cuts there. Rows stop early on a stop string's own encoding or on any single
    token whose text contains one; for that the vocabulary is decoded token by token, once per vocabulary
    object (which must be hashable). Only ids the vocabulary decodes are generated (`valid_vocab`). Other
    keyword arguments go to `generate`.
    """
    until = [s for s in until if s]
    # seqio vocabularies expose their size; the model's vocab_size may be padded beyond it.
    texts = _token_texts(vocab, min(cfg.vocab_size, getattr(vocab, "vocab_size", cfg.vocab_size)))
    stops = [vocab.encode(s) for s in until]
    stops += [[i] for i, text in enumerate(texts) if any(s in text for s in until)]
    outputs = generate(
        params,
        cfg,
        [vocab.encode(c) for c in contexts],
        max_new_tokens=max_new_tokens,
        stop_sequences=[s for s in stops if s],
        eos_id=eos_id,
        include_stop=True,
        **{"valid_vocab": len(texts), **kwargs},
    )
    results = []
    for ids in outputs:
        if eos_id is not None and ids and ids[-1] == eos_id:
            ids = ids[:-1]
        text = vocab.decode(ids)
        results.append(text[: min([text.find(s) for s in until if s in text], default=len(text))])
    return results


__all__ = [
    "Vocabulary",
    "left_pad",
    "prefill",
    "decode_step",
    "top_k_filter",
    "top_p_filter",
    "generate",
    "generate_text",
]
