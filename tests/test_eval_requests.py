"""eval.requests: string -> token requests exactly as lm-eval's TemplateLM / HFLM / utils build them."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import postprocess_generated_text

from eval.requests import (
    disjoint_window,
    encode_pair,
    encode_request,
    model_input,
    rolling_requests,
    rolling_windows,
    split_request,
    truncate_generation,
)
from gptjax.tokenizers import get_vocabulary

PAIRS = [
    ("Question: Is it?\nAnswer:", " yes"),
    ("The man turned on the faucet therefore", "  the toilet filled with water."),  # copa's double space
    ("Answer: ", "Paris"),  # trailing space moves to the continuation
    ("line one\n\n", "line two"),  # trailing newlines too
    ("tabs\t \t", "x"),
    ("no space", "s and more"),  # the continuation merges with the context's last word
    ("naïve café ", "résumé"),
    ("2 + 2 =", " 4"),
    ("emoji 🙂", "🙂 ok"),
    ("end<|endoftext|>", "<|endoftext|>start"),
]


@pytest.fixture(scope="module")
def gpt2():
    return get_vocabulary("gpt2")


def _lm_eval_model(vocab) -> SimpleNamespace:
    """An object with just what TemplateLM's methods read, so lm-eval's own code does the splitting."""
    fake = SimpleNamespace(
        backend="causal",
        prefix_token_id=vocab.eos_id,
        tok_encode=lambda s, add_special_tokens=None: list(vocab.encode(s)),
        _loglikelihood_tokens=lambda reqs, **_: [(ctx, cont) for _, ctx, cont in reqs],
    )
    fake._encode_pair = lambda c, k: TemplateLM._encode_pair(fake, c, k)
    return fake


@pytest.mark.parametrize("context,continuation", PAIRS)
def test_encode_pair_matches_lm_eval(gpt2, context: str, continuation: str) -> None:
    fake = _lm_eval_model(gpt2)
    assert encode_pair(gpt2, context, continuation) == TemplateLM._encode_pair(fake, context, continuation)


def test_encode_request_matches_lm_eval_including_empty_context(gpt2) -> None:
    pairs = PAIRS + [("", " Paris"), ("", "<|endoftext|>x")]
    requests = [SimpleNamespace(args=p) for p in pairs]
    theirs = TemplateLM.loglikelihood(_lm_eval_model(gpt2), requests, disable_tqdm=True)
    assert [encode_request(gpt2, c, k) for c, k in pairs] == theirs
    assert encode_request(gpt2, "", " Paris") == ([gpt2.eos_id], list(gpt2.encode(" Paris")))


def test_model_input_truncates_from_the_left() -> None:
    inputs, truncated = model_input([1, 2, 3, 4], [5, 6], max_length=4)
    assert inputs == [2, 3, 4, 5] and truncated  # (ctx + cont)[-5:][:-1]
    assert model_input([1, 2], [3], max_length=4) == ([1, 2], False)
    with pytest.raises(ValueError, match="continuation of 5 tokens exceeds the model window 4"):
        model_input([1], [1, 2, 3, 4, 5], max_length=4)
    with pytest.raises(ValueError, match="non-empty context"):
        model_input([], [1], max_length=4)


def test_split_request_chunks_long_continuations() -> None:
    assert split_request([1], [2, 3], 4) == [([1], [2, 3])]
    assert split_request([1], [2, 3, 4, 5, 6, 7], 4) == [([1], [2, 3, 4, 5]), ([1, 2, 3, 4, 5], [6, 7])]


@pytest.mark.parametrize("n_tokens,max_len", [(1, 4), (4, 4), (5, 4), (23, 4), (100, 16), (7, 1)])
def test_rolling_windows_match_lm_eval(n_tokens: int, max_len: int) -> None:
    tokens = [random.Random(n_tokens).randrange(100) for _ in range(n_tokens)]
    ours = [disjoint_window(w) for w in rolling_windows(tokens, 999, max_len)]
    theirs = [
        lm_utils.make_disjoint_window(w)
        for w in lm_utils.get_rolling_token_windows(tokens, prefix_token=999, max_seq_len=max_len, context_len=1)
    ]
    assert ours == [tuple(map(list, w)) for w in theirs]
    assert [t for _, cont in ours for t in cont] == tokens  # every token predicted exactly once


def test_rolling_requests_condition_first_window_on_eos(gpt2) -> None:
    requests = rolling_requests(gpt2, "Hello world, " * 20, max_length=16)
    assert requests[0][0] == [gpt2.eos_id] and all(len(c) + len(k) <= 17 for c, k in requests)


@pytest.mark.parametrize("text", ["Paris. France", "a,b\nc", "\nleading", "none here", "x<|endoftext|>y", ""])
def test_truncate_generation_matches_lm_eval(text: str) -> None:
    until = ["\n", ".", ",", "<|endoftext|>"]
    assert truncate_generation(text, until) == postprocess_generated_text(text, until, None)
