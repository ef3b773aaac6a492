"""eval.scoring / eval.gptjax_lm: the prefix-sharing, packed, sharded scorer against a one-request-at-a-time loop."""

from __future__ import annotations

import dataclasses
import functools
import random

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from eval.gptjax_lm import GptjaxLM
from eval.requests import GenerationRequest
from eval.scoring import HEAD_WIDTHS, BatchScorer, bucket_lengths, build_trees, head_calls
from gptjax.config import ConfigError, ModelConfig
from gptjax.model import forward, init_params
from gptjax.tokenizers import get_vocabulary

# init_std 0.2 gives O(1) logits, so agreement to 1e-5 is not trivially met.
CFG = ModelConfig(vocab_size=257, n_ctx=64, n_layer=2, n_head=2, d_model=32, init_std=0.2)
# GPT-3's alternation with a band narrower than most requests: a branch's band must count model positions.
BANDED = dataclasses.replace(CFG, attention_pattern=("dense", "banded"), band_width=8)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def byte_vocab():
    return get_vocabulary("byte")


def _features(params, rows, cfg=CFG):
    return forward(
        params,
        rows.tokens,
        cfg,
        positions=rows.positions,
        segment_ids=rows.segment_ids,
        branch_ids=rows.branch_ids,
        return_features=True,
    )


def _banded_features(params, rows):
    return _features(params, rows, BANDED)


@functools.cache
def _forward_row(cfg: ModelConfig):
    return jax.jit(lambda p, tokens: forward(p, tokens, cfg)[0])


def _logits(params, tokens: list[int], cfg: ModelConfig = CFG) -> np.ndarray:
    """Logits of one sequence, alone in its row (right padding cannot reach it under the causal mask)."""
    row = np.zeros((1, cfg.n_ctx), np.int32)
    row[0, : len(tokens)] = tokens
    return np.asarray(_forward_row(cfg)(params, row), np.float64)[: len(tokens)]


def _naive(params, ctx: list[int], cont: list[int], cfg: ModelConfig = CFG) -> tuple[float, bool]:
    """One request at a time, lm-eval's truncation, log-softmax then gather (as HFLM does)."""
    whole = (ctx + cont)[-(cfg.n_ctx + 1) :]
    logits = _logits(params, whole[:-1], cfg)
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    rows, targets = log_probs[-len(cont) :], np.array(whole[-len(cont) :])
    return float(rows[np.arange(len(cont)), targets].sum()), bool((rows.argmax(-1) == targets).all())


def _random_requests(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Contexts of 1 to 90 tokens (some truncated on the left), each with 1 to 4 continuations (answer
    choices) of 1 to 20 tokens."""
    rnd = random.Random(seed)
    requests = []
    while len(requests) < n:
        ctx = [rnd.randrange(CFG.vocab_size) for _ in range(rnd.choice([1, 3, 10, 30, 60, 90]))]
        for _ in range(rnd.randint(1, 4)):
            cont = [rnd.randrange(CFG.vocab_size) for _ in range(rnd.choice([1, 2, 5, 20]))]
            requests.append((ctx, cont))
    return requests[:n]


def _auto_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


@pytest.mark.parametrize("sharded", [False, True])
def test_batched_scorer_matches_naive_loop(params, sharded: bool) -> None:
    requests = _random_requests(60)
    scorer = BatchScorer(
        _features, params, params["wte"], CFG.n_ctx, batch_tokens=256, mesh=_auto_mesh() if sharded else None
    )
    got = scorer(requests)
    for (ctx, cont), (logprob, greedy) in zip(requests, got):
        want_lp, want_greedy = _naive(params, ctx, cont)
        assert logprob == pytest.approx(want_lp, abs=1e-5, rel=1e-5)
        assert greedy == want_greedy
    # Answer choices shared their context; a few compiled body shapes (rows, bucket length), with a mesh
    # rows dividing over 8; the head's calls have fixed widths, capped at a group's slots (8 groups of 64).
    assert scorer.stats.trees < scorer.stats.unique == 60
    assert {length for _, length in scorer.stats.shapes} <= set(bucket_lengths(CFG.n_ctx))
    assert all(rows % (8 if sharded else 1) == 0 for rows, _ in scorer.stats.shapes)
    assert scorer.stats.head_widths <= ({64} if sharded else {min(w, 256) for w in HEAD_WIDTHS})


def test_prefix_trees_and_vocab_slices_match_naive_loop_with_banded_attention(params) -> None:
    """Branches restart nothing: their positions continue from the prefix, and the band counts positions;
    the sliced LM head reduces to the same log-softmax and argmax."""
    requests = _random_requests(40, seed=1)
    # vocab_slice 100: the LM head in three slices of the 257-token vocabulary.
    got = BatchScorer(_banded_features, params, params["wte"], BANDED.n_ctx, batch_tokens=256, vocab_slice=100)(
        requests
    )
    for (ctx, cont), (logprob, greedy) in zip(requests, got):
        want_lp, want_greedy = _naive(params, ctx, cont, BANDED)
        assert logprob == pytest.approx(want_lp, abs=1e-5, rel=1e-5)
        assert greedy == want_greedy


def test_build_trees_shares_prefixes_within_the_window() -> None:
    ctx = list(range(1, 11))
    choices = [[20], [21, 22], [23, 24, 25]]
    [tree] = build_trees([(ctx, c) for c in choices], max_length=64)
    assert tree.prefix == ctx and [b.tokens for b in tree.branches] == [[], [21], [23, 24]]
    assert (tree.length, tree.scored) == (10 + 0 + 1 + 2, 1 + 2 + 3)
    assert tree.positions == 1 + 0 + 1 + 2  # the context's last token predicts every first token, once
    # Branches that would overflow the window start a new tree with the same prefix; each request fits.
    trees = build_trees([(ctx, [v] * 20) for v in (7, 8, 9)], max_length=64)  # 10 + 19 + 19 + 19 > 64
    assert [len(t.branches) for t in trees] == [2, 1] and all(t.length <= 64 for t in trees)
    # Many one-token continuations share the prefix's last slot; scored positions are bounded too.
    trees = build_trees([(ctx, [v]) for v in range(100)], max_length=64)
    assert [t.scored for t in trees] == [64, 36] and all(t.length == 10 for t in trees)
    # Left truncation depends on the continuation's length, so differently truncated requests do not share.
    long_ctx = list(range(100))
    trees = build_trees([(long_ctx, [1]), (long_ctx, [1, 2])], max_length=64)
    assert [t.prefix[0] for t in trees] == [36, 37]  # (context + continuation)[-65:]
    # With tree_length, choices that fit a short row alone make short trees; a longer one is left to max_length.
    trees = build_trees([(ctx, [v] * 5) for v in range(4)] + [(ctx, [9] * 30)], max_length=64, tree_length=24)
    assert [(t.length, len(t.branches)) for t in trees] == [(10 + 4 + 4 + 4, 3), (10 + 4, 1), (10 + 29, 1)]


def test_head_calls_use_fixed_widths_and_keep_each_target_with_its_position() -> None:
    widths = [512, 256, 128, 64]
    # One group, 600 positions (one target each): a full call of 512, then the smallest width for 88.
    group = [(slot, slot % 7, slot // 10) for slot in range(600)]
    calls = head_calls([group], widths)
    assert [w for w, _, _ in calls] == [512, 128]
    assert [t for _, _, targets in calls for t in targets[0]] == group
    # A position predicting targets on both sides of a call boundary is in both calls; each call holds at most
    # width positions and 2 * width targets.
    shared = [(0, 1, 0)] + [(s, s, s) for s in range(1, 70)] + [(0, 2, 9)]
    calls = head_calls([shared], [64])
    assert [p[0] for _, p, _ in calls] == [list(range(64)), [64, 65, 66, 67, 68, 69, 0]]
    many = [(5, t, t) for t in range(300)]  # one position, 300 targets: 2 * 64 per call
    assert [len(t[0]) for _, _, t in head_calls([many], widths)] == [128, 128, 44]
    # Two data-parallel groups share every call's width: the larger group decides.
    calls = head_calls([group[:300], group[:40]], widths)
    assert [w for w, _, _ in calls] == [512] and [len(p) for p in calls[0][1]] == [300, 40]


def test_greedy_flag_is_true_for_the_argmax_continuation(params) -> None:
    ctx = [5, 6, 7]
    logits = _logits(params, ctx)[-1]
    scorer = BatchScorer(_features, params, params["wte"], CFG.n_ctx, batch_tokens=256)
    best, other = int(logits.argmax()), int(logits.argmin())
    assert [g for _, g in scorer([(ctx, [best]), (ctx, [other])])] == [True, False]


def test_identical_requests_run_once(params) -> None:
    scorer = BatchScorer(_features, params, params["wte"], CFG.n_ctx, batch_tokens=256)
    requests = _random_requests(5)
    results = scorer(requests + requests[::-1] + requests[:2])
    assert scorer.stats.requests == 12 and scorer.stats.unique == 5
    assert results[:5] == results[5:10][::-1] and results[10:] == results[:2]


def test_bucket_lengths() -> None:
    assert bucket_lengths(64) == [16, 32, 64]
    assert bucket_lengths(100, min_bucket=32) == [32, 64, 100]


def test_explicit_mesh_axes_are_rejected(params) -> None:
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    with pytest.raises(ValueError, match="needs AxisType.Auto axes"):
        BatchScorer(_features, params, params["wte"], CFG.n_ctx, mesh=mesh)


def test_vocab_mismatch_is_a_clear_error(params) -> None:
    with pytest.raises(ConfigError, match=r"vocab_size=257 but tokenizer 'gpt2-bpe-\w+' has 50257 ids"):
        GptjaxLM(params, CFG, get_vocabulary("gpt2"))


def test_lm_scores_strings_and_long_continuations(params, byte_vocab) -> None:
    lm = GptjaxLM(params, CFG, byte_vocab, batch_tokens=256, mesh=_auto_mesh())
    assert lm.info.params > lm.info.non_embedding_params > 0 and lm.tokenizer_name == "byte"
    short, long = ("Question: why?\nAnswer:", " because"), ("x" * 50, " " + "long continuation " * 6)
    results = lm.loglikelihood([short, long])
    ctx, cont = list(b"Question: why?\nAnswer:"), list(b" because")
    assert results[0].logprob == pytest.approx(_naive(params, ctx, cont)[0], abs=1e-5)
    assert not results[0].truncated and results[1].truncated
    # A continuation longer than the window is scored in window-sized chunks, each with its left context.
    ctx, cont = list(long[0].encode()), list(long[1].encode())
    chunks = [_naive(params, ctx + cont[:s], cont[s : s + CFG.n_ctx])[0] for s in range(0, len(cont), CFG.n_ctx)]
    assert len(chunks) == 2 and results[1].logprob == pytest.approx(sum(chunks), abs=1e-4)


def test_rolling_loglikelihood_sums_disjoint_windows(params, byte_vocab) -> None:
    lm = GptjaxLM(params, CFG, byte_vocab, batch_tokens=256)
    text = "The quick brown fox jumps over the lazy dog. " * 4  # 180 bytes: three windows of 64
    tokens = list(text.encode())
    want = _naive(params, [byte_vocab.eos_id], tokens[:64])[0]
    want += sum(_naive(params, tokens[:s], tokens[s : s + 64])[0] for s in range(64, len(tokens), 64))
    assert lm.loglikelihood_rolling([text])[0] == pytest.approx(want, abs=1e-4)


def test_generate_until_is_greedy_and_cut_at_stop_strings(params, byte_vocab) -> None:
    lm = GptjaxLM(params, CFG, byte_vocab, max_gen_toks=12, generate_batch_size=4)
    contexts = ["Question: what?\nAnswer:", "abc", "x" * 100]  # the last is left-truncated to 64 - 12 tokens
    got = lm.generate_until([GenerationRequest(c, ("\n", "."), None) for c in contexts])
    for context, text in zip(contexts, got):
        tokens = list(context.encode())[-(CFG.n_ctx - 12) :]
        for _ in range(12):
            tokens.append(int(_logits(params, tokens)[-1].argmax()))
        want = byte_vocab.decode(tokens[-12:])
        for stop in ("\n", ".", "<|endoftext|>"):
            want = want.split(stop)[0]
        assert text == want


def test_models_with_equal_configs_share_compiled_programs(params, byte_vocab) -> None:
    """In-training evaluation builds a GptjaxLM per evaluation; it must not recompile every time."""
    first, second = (GptjaxLM(params, CFG, byte_vocab, batch_tokens=256) for _ in range(2))
    assert first.scorer._body is second.scorer._body and first.scorer._head is second.scorer._head


@pytest.mark.parametrize("option", ["batch_tokens", "pack_length", "vocab_slice"])
def test_non_positive_sizes_are_rejected(params, option: str) -> None:
    with pytest.raises(ValueError, match=f"{option}=0 must be positive"):
        BatchScorer(_features, params, params["wte"], CFG.n_ctx, **{option: 0})
