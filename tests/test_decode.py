"""Generation: KV-cache consistency, greedy / beam / sampling behaviour, stop sequences and the text wrapper."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from gptjax import decode
from gptjax.config import ModelConfig
from gptjax.model import forward, init_params

# Jitted once here: eager Flax dispatch would compile op by op, per shape, and dominate the runtime.
_init = jax.jit(init_params, static_argnums=0)
_forward = jax.jit(forward, static_argnums=2)

# init_std 0.2 gives O(1) logits, so the 1e-5 tolerance and the beam/greedy comparisons are not trivially met.
RANDOM_CFG = ModelConfig(vocab_size=64, n_ctx=64, n_layer=2, n_head=2, d_model=32, init_std=0.2)
GPT3_STYLE_CFG = dataclasses.replace(RANDOM_CFG, attention_pattern=("dense", "banded"), band_width=4)
ROTARY_CFG = dataclasses.replace(RANDOM_CFG, positions="rotary")  # keys enter the cache rotated

# Every bigram of the repeated pattern has one successor, so a two-token prompt fixes the continuation.
PATTERN = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
TRAIN_CFG = ModelConfig(vocab_size=16, n_ctx=64, n_layer=2, n_head=2, d_model=32)
STREAM = PATTERN * 12


@pytest.fixture(scope="module")
def random_params():
    return _init(RANDOM_CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def trained_params():
    """A tiny model trained (full batch: every phase of the pattern) until it continues PATTERN."""
    cfg, period = TRAIN_CFG, len(PATTERN)
    batch = np.array([STREAM[o : o + 33] for o in range(period)], np.int32)
    optimizer = optax.adam(1e-2)

    def loss_fn(params):
        logits = forward(params, batch[:, :-1], cfg)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = _init(cfg, jax.random.key(0))
    opt_state = optimizer.init(params)
    for _ in range(150):
        params, opt_state, loss = train_step(params, opt_state)
    assert float(loss) < 0.05, f"tiny model did not learn the pattern (loss {float(loss):.3f})"
    return params


def _full_logits(params, cfg, seqs):
    """Reference logits from one uncached forward pass; right padding to n_ctx cannot affect causal logits."""
    batch = np.zeros((len(seqs), cfg.n_ctx), np.int32)
    for row, seq in enumerate(seqs):
        batch[row, : len(seq)] = seq
    return np.asarray(_forward(params, batch, cfg))


def _log_probs(params, cfg, prompts, continuations):
    """Total log-probability of each continuation given its prompt, from the uncached forward pass."""
    logits = _full_logits(params, cfg, [p + c for p, c in zip(prompts, continuations)])
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    return [
        float(sum(log_probs[row, len(p) - 1 + i, tok] for i, tok in enumerate(c)))
        for row, (p, c) in enumerate(zip(prompts, continuations))
    ]


def _kept(filtered):
    """Per row, the token ids a filter left finite."""
    return [set(np.flatnonzero(np.isfinite(row))) for row in np.asarray(filtered)]


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13, 14]]


# ---------------------------------------------------------------------------------------------------------
# 1. cached decoding == full forward


@pytest.mark.parametrize("cfg", [RANDOM_CFG, GPT3_STYLE_CFG, ROTARY_CFG], ids=["dense", "gpt3-dense-banded", "rotary"])
def test_cached_decoding_matches_full_forward(cfg, random_params):
    # Banded layers have no parameters of their own; a rotary model has no wpe.
    params = random_params if cfg.positions == "learned" else _init(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompt_lengths, n_steps, padded = [3, 9, 6], 7, 12  # padded beyond the longest prompt on purpose
    seqs = [rng.integers(0, cfg.vocab_size, n + n_steps).astype(np.int32) for n in prompt_lengths]
    tokens, lengths = decode.left_pad([s[:n] for s, n in zip(seqs, prompt_lengths)], padded)

    prefill_logits, cache = jax.jit(decode.prefill, static_argnums=(1, 4))(
        params, cfg, tokens, lengths, padded + n_steps
    )
    step = jax.jit(decode.decode_step, static_argnums=1)
    step_logits = []
    for j in range(n_steps):
        fed = np.array([s[n + j] for s, n in zip(seqs, prompt_lengths)], np.int32)
        logits, cache = step(params, cfg, fed, lengths + j, cache)
        step_logits.append(logits)
    step_logits = np.stack(step_logits, axis=1)

    full = _full_logits(params, cfg, seqs)
    for row, n in enumerate(prompt_lengths):
        np.testing.assert_allclose(prefill_logits[row, padded - n :], full[row, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(step_logits[row], full[row, n : n + n_steps], rtol=1e-5, atol=1e-5)
    if "banded" in cfg.attention_pattern:  # the band must actually cut context for the test to mean anything
        assert np.abs(_full_logits(params, RANDOM_CFG, seqs) - full).max() > 1e-3


def test_greedy_generation_matches_uncached_argmax(random_params):
    """The loop's own bookkeeping (left padding, per-row positions, banded layers) against re-running the
    whole sequence for every new token."""
    cfg, n_new = GPT3_STYLE_CFG, 8
    expected = [list(p) for p in PROMPTS]
    for _ in range(n_new):
        logits = _full_logits(random_params, cfg, expected)
        for row, seq in enumerate(expected):
            seq.append(int(np.argmax(logits[row, len(seq) - 1])))
    out = decode.generate(random_params, cfg, PROMPTS, max_new_tokens=n_new)
    assert out == [seq[len(p) :] for p, seq in zip(PROMPTS, expected)]


# ---------------------------------------------------------------------------------------------------------
# 2. greedy on a trained model


def test_greedy_is_deterministic_and_reproduces_the_learnt_pattern(trained_params):
    starts, lengths, n_new = [0, 3, 7], [5, 12, 2], 12
    prompts = [STREAM[s : s + n] for s, n in zip(starts, lengths)]
    first = decode.generate(trained_params, TRAIN_CFG, prompts, max_new_tokens=n_new)
    again = decode.generate(trained_params, TRAIN_CFG, prompts, max_new_tokens=n_new)
    assert first == again
    assert first == [STREAM[s + n : s + n + n_new] for s, n in zip(starts, lengths)]


# ---------------------------------------------------------------------------------------------------------
# 3. beam search


def test_one_beam_is_greedy(random_params):
    greedy = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10)
    beam = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10, method="beam")
    assert beam == greedy
    # ... also when rows stop early: end on a token greedy emits mid-way in row 0.
    eos = greedy[0][4]
    greedy = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10, eos_id=eos)
    beam = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10, eos_id=eos, method="beam")
    assert beam == greedy and len(greedy[0]) <= 4


def test_wider_beam_finds_at_least_greedys_log_prob(random_params):
    greedy = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10)
    beam = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10, method="beam", num_beams=4)
    greedy_lp = _log_probs(random_params, RANDOM_CFG, PROMPTS, greedy)
    beam_lp = _log_probs(random_params, RANDOM_CFG, PROMPTS, beam)
    assert all(len(b) == 10 for b in beam)
    assert all(b >= g - 1e-4 for b, g in zip(beam_lp, greedy_lp)), (beam_lp, greedy_lp)
    assert any(b > g + 1e-2 for b, g in zip(beam_lp, greedy_lp)), "beam never beat greedy: test is vacuous"


def test_beam_finds_the_exhaustive_best_two_token_continuation(random_params):
    """Every one of the 64 * 64 two-token continuations scored by the uncached forward (log p(a) + log p(b | a),
    one row per first token a): 32 beams keep half the first tokens, enough here for beam search to return
    the true maximum, which greedy misses."""
    cfg, vocab = RANDOM_CFG, RANDOM_CFG.vocab_size
    beam = decode.generate(random_params, cfg, PROMPTS, max_new_tokens=2, method="beam", num_beams=vocab // 2)
    greedy = decode.generate(random_params, cfg, PROMPTS, max_new_tokens=2)
    misses = 0
    for prompt, got, greedy_row in zip(PROMPTS, beam, greedy):
        rows = [prompt + [a] for a in range(vocab)]
        log_probs = np.asarray(jax.nn.log_softmax(_full_logits(random_params, cfg, rows)))
        scores = log_probs[:, len(prompt) - 1, :].diagonal()[:, None] + log_probs[:, len(prompt), :]
        best = list(np.unravel_index(int(np.argmax(scores)), scores.shape))
        assert got == best, (prompt, got, best)
        misses += greedy_row != best
    assert misses > 0, "greedy already finds every maximum: the test would not tell beam search from greedy"


def test_beam_on_trained_model_follows_pattern_and_stops(trained_params):
    prompt = STREAM[2:5]  # 4 1 5 -> 9 2 6 5 3 3 1 4 1 5 ...
    out = decode.generate(
        trained_params,
        TRAIN_CFG,
        [prompt],
        max_new_tokens=12,
        method="beam",
        num_beams=3,
        stop_sequences=[[1, 5]],
        length_penalty=1.0,
    )
    assert out == [[9, 2, 6, 5, 3, 3, 1, 4]]


# ---------------------------------------------------------------------------------------------------------
# 4. sampling


def test_sampling_top_k_one_is_greedy_and_keys_are_deterministic(random_params):
    greedy = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10)
    top1 = decode.generate(
        random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10, method="sample", top_k=1, rng=jax.random.key(7)
    )
    assert top1 == greedy

    def sample(seed):
        return decode.generate(
            random_params,
            RANDOM_CFG,
            PROMPTS,
            max_new_tokens=10,
            method="sample",
            temperature=3.0,
            top_k=40,
            top_p=0.95,
            rng=jax.random.key(seed),
        )

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)
    assert sample(0) != greedy


def test_sampling_as_temperature_goes_to_zero_is_greedy(random_params):
    """At T = 1e-6 every logit gap above ~1e-4 becomes > 100 nats, so each key draws the argmax."""
    greedy = decode.generate(random_params, RANDOM_CFG, PROMPTS, max_new_tokens=10)
    for seed in range(3):
        cold = decode.generate(
            random_params,
            RANDOM_CFG,
            PROMPTS,
            max_new_tokens=10,
            method="sample",
            temperature=1e-6,
            rng=jax.random.key(seed),
        )
        assert cold == greedy


def test_top_p_keeps_the_minimal_set_reaching_p():
    probs = np.array([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]])
    logits = np.log(probs).astype(np.float32)

    def kept(p):
        return _kept(decode.top_p_filter(logits, p))

    assert kept(0.4) == [{1}, {0, 1}]  # row 0: the top token alone reaches p; row 1: ties go to lower ids
    assert kept(0.79) == [{1, 3}, {0, 1, 2, 3}]
    assert kept(0.6) == [{1, 3}, {0, 1, 2}]
    assert kept(0.9) == [{1, 2, 3}, {0, 1, 2, 3}]
    assert kept(1.0) == [{0, 1, 2, 3}] * 2
    filtered = np.asarray(decode.top_p_filter(logits, 0.79))
    np.testing.assert_array_equal(filtered[0, [1, 3]], logits[0, [1, 3]])  # kept logits are unchanged
    assert _kept(decode.top_k_filter(logits, 2)) == [{1, 3}, {0, 1}]


# ---------------------------------------------------------------------------------------------------------
# 5. stop sequences, limits and the text wrapper


def test_stop_sequences_truncate_each_row(trained_params):
    prompts = [STREAM[2:5], STREAM[0:4], STREAM[5:7]]  # continue with 9 2 6 .., 5 9 2 .., 6 5 3 ..
    stops = [[1, 5], [2, 6]]

    def gen(**kwargs):
        return decode.generate(trained_params, TRAIN_CFG, prompts, **{"max_new_tokens": 12, **kwargs})

    assert gen(stop_sequences=stops) == [[9], [5, 9], [6, 5, 3, 3, 1, 4]]  # row 2 passes "1 4"
    assert gen(stop_sequences=stops, include_stop=True) == [[9, 2, 6], [5, 9, 2, 6], [6, 5, 3, 3, 1, 4, 1, 5]]
    assert gen(eos_id=9) == [[], [5], [6, 5, 3, 3, 1, 4, 1, 5]]
    assert gen(stop_sequences=stops, max_new_tokens=3) == [[9], [5, 9, 2], [6, 5, 3]]  # row 1 cut mid-stop


def test_too_long_prompt_raises_or_is_left_truncated(trained_params):
    prompts = [STREAM[:3], STREAM[:60], STREAM[5:9]]
    with pytest.raises(ValueError, match=r"prompt 1 has 60 tokens.*72 positions.*n_ctx=64"):
        decode.generate(trained_params, TRAIN_CFG, prompts, max_new_tokens=12)
    truncated = decode.generate(trained_params, TRAIN_CFG, prompts, max_new_tokens=12, left_truncate=True)
    kept = [STREAM[:3], STREAM[8:60], STREAM[5:9]]  # the last n_ctx - max_new_tokens = 52 tokens
    assert truncated == decode.generate(trained_params, TRAIN_CFG, kept, max_new_tokens=12)
    with pytest.raises(ValueError, match="top_k=3"):
        decode.generate(trained_params, TRAIN_CFG, prompts[:1], max_new_tokens=12, top_k=3)


class PieceVocab:
    """Token i spells PIECES[i]; token 9 is a merged piece ending in "." as BPE vocabularies have."""

    PIECES = [".", "b", "c", "d", "e", "f", "g", "h", "i", "j.", "k", "l", "m", "n", "o", "p"]

    def encode(self, text):
        ids = []
        while text:
            i = max((i for i, p in enumerate(self.PIECES) if text.startswith(p)), key=lambda i: len(self.PIECES[i]))
            ids.append(i)
            text = text[len(self.PIECES[i]) :]
        return ids

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


def test_generate_text_cuts_at_stop_strings(trained_params):
    vocab = PieceVocab()
    context = vocab.decode(STREAM[:4])  # "dbeb" -> f j. c g f d d b e b f j. ...
    assert vocab.decode(STREAM[4:9]) == "fj.cgf"

    def gen(until):
        return decode.generate_text(
            trained_params, TRAIN_CFG, vocab, [context, context[1:], context[2:]], max_new_tokens=12, until=until
        )

    assert gen(["."]) == ["fj"] * 3  # "." found inside the merged token "j."
    assert gen(["cg", "."]) == ["fj"] * 3
    assert gen(["cg"]) == ["fj."] * 3  # a multi-token stop string
    assert gen(["pp"]) == [vocab.decode(STREAM[4:16])] * 3  # never found
