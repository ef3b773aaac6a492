"""Requests to a language model, and how strings become token requests.

The tokenisation rules are lm-evaluation-harness's (api/model.py `TemplateLM`, models/huggingface.py,
utils.py), because per-choice log-likelihoods must match it: trailing whitespace of a context moves to the
continuation; the continuation's tokens are those of `encode(context + continuation)` after the first
`len(encode(context))`; an empty context is replaced by the end-of-text token; inputs longer than the
model's window lose tokens from the left; rolling perplexity scores disjoint windows of a document.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

Tokens = list[int]


class Tokenizer(Protocol):
    """What eval needs from a vocabulary (gptjax.tokenizers' vocabularies provide it)."""

    name: str

    @property
    def eos_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, s: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class LoglikelihoodResult(NamedTuple):
    logprob: float  # sum of log P(continuation token | everything before it)
    is_greedy: bool  # every continuation token is the argmax
    truncated: bool = False  # the context lost tokens on the left to fit the window


@dataclass(frozen=True)
class GenerationRequest:
    context: str
    until: tuple[str, ...]
    max_gen_toks: int | None = None  # None = the model's default
    # gptjax.decode.generate's options and the sampling seed (eval.decoding.Decoding.request_options); () = greedy
    options: tuple[tuple[str, Any], ...] = ()


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[Tokens, Tokens]:
    """lm-eval's `_encode_pair` for causal models (the context must be non-empty)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer.encode(context + continuation))
    context_ids = list(tokenizer.encode(context))
    return context_ids, whole[len(context_ids) :]


def encode_request(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[Tokens, Tokens]:
    """lm-eval's `TemplateLM.loglikelihood` tokenisation: an empty context becomes the end-of-text token
    (unless the continuation itself starts with it)."""
    if context:
        return encode_pair(tokenizer, context, continuation)
    continuation_ids = list(tokenizer.encode(continuation))
    if continuation_ids and continuation_ids[0] == tokenizer.eos_id:
        return continuation_ids[:1], continuation_ids[1:]
    return [tokenizer.eos_id], continuation_ids


def model_input(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[Tokens, bool]:
    """The model's input row, `(context + continuation)[-(max_length + 1):][:-1]`, and whether tokens were
    dropped on the left; the last `len(continuation)` logits score the continuation."""
    if not context or not continuation:
        raise ValueError(
            f"a request needs a non-empty context and continuation, got {len(context)} context "
            f"and {len(continuation)} continuation tokens"
        )
    if len(continuation) > max_length:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds the model window {max_length}")
    whole = list(context) + list(continuation)
    return whole[-(max_length + 1) :][:-1], len(whole) > max_length + 1


def split_request(context: Sequence[int], continuation: Sequence[int], max_length: int) -> list[tuple[Tokens, Tokens]]:
    """A request as requests whose continuations fit the window: chunks of `max_length` continuation
    tokens, each conditioned on everything before it (then left-truncated by `model_input`). lm-eval
    refuses continuations longer than the window; a single chunk is the request unchanged."""
    context, continuation = list(context), list(continuation)
    return [
        (context + continuation[:start], continuation[start : start + max_length])
        for start in range(0, len(continuation), max_length)
    ]


def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_seq_len: int, context_len: int = 1
) -> Iterator[tuple[Tokens, Tokens]]:
    """lm-eval's `get_rolling_token_windows`: (input, predicted) windows covering every token once; the
    first window is conditioned on `prefix_token`, later ones on the tokens before them."""
    if not 1 <= context_len <= max_seq_len:
        raise ValueError(f"context_len={context_len} must be in [1, max_seq_len={max_seq_len}]")
    tokens = list(tokens)
    if not tokens:
        return
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    yield [prefix_token] + tokens[: first - 1], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        end = predicted + window_pred_len
        yield tokens[end - max_seq_len - 1 : end - 1], tokens[end - window_pred_len : end]
        predicted += window_pred_len


def disjoint_window(window: tuple[Tokens, Tokens]) -> tuple[Tokens, Tokens]:
    """lm-eval's `make_disjoint_window`: drop the input tokens that are also predicted, leaving a
    (context, continuation) request."""
    inputs, predicted = window
    return inputs[: len(inputs) - (len(predicted) - 1)], predicted


def rolling_requests(tokenizer: Tokenizer, text: str, max_length: int) -> list[tuple[Tokens, Tokens]]:
    """The (context, continuation) token requests whose log-likelihoods sum to log P(text)."""
    windows = rolling_windows(list(tokenizer.encode(text)), tokenizer.eos_id, max_length)
    return [disjoint_window(w) for w in windows]


def truncate_generation(text: str, until: Sequence[str]) -> str:
    """lm-eval's `postprocess_generated_text`: cut at each stop string in turn (empty strings ignored)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
