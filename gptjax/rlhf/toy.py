"""A synthetic instruction task whose true reward r* is known, so every stage can be checked against it.

Token ids: 0 pad, 1 separator (ends the prompt), 2 end of response, 3.. content. A prompt is `prompt_len`
content tokens and the separator; a response is 1..`max_response` content tokens and the end token (a
response cut off at `max_response` tokens without it earns no stop bonus). The hidden reward is
    r*(x, y) = mean_t lexicon[y_t] + copy_bonus * (share of y's tokens that occur in x) + stop_bonus * [y ends]
with a fixed random lexicon, so it depends on the prompt and on the format. Demonstrations draw content
tokens uniformly (the SFT model is therefore far from optimal). Rankings of K responses are Plackett–Luce
draws with utilities r*/tau (the Bradley–Terry model for each pair), so the Bayes-optimal pairwise accuracy
E[σ(|r*_i - r*_j| / tau)] is known. The "pretraining" corpus is arithmetic progressions over the content
tokens, a language the SFT model keeps knowing unless RL makes it forget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptjax.config import ModelConfig

PAD, SEP, END, FIRST_CONTENT = 0, 1, 2, 3


@dataclass(frozen=True)
class ToyTask:
    vocab_size: int = 24
    prompt_len: int = 4
    max_response: int = 8
    copy_bonus: float = 1.0
    stop_bonus: float = 0.5
    tau: float = 0.25  # temperature of the Bradley–Terry ranking draws
    seed: int = 0

    @property
    def n_content(self) -> int:
        return self.vocab_size - FIRST_CONTENT

    @property
    def seq_len(self) -> int:
        """Prompt, separator, response and end token: the length of every padded row."""
        return self.prompt_len + 1 + self.max_response + 1

    @property
    def lexicon(self) -> np.ndarray:
        """Per-token score of every id (0 for the special tokens), a fixed permutation of [-1, 1]."""
        rng = np.random.default_rng(self.seed)
        scores = np.zeros(self.vocab_size, np.float32)
        scores[FIRST_CONTENT:] = rng.permutation(np.linspace(-1.0, 1.0, self.n_content))
        return scores

    def model_config(self, **overrides: object) -> ModelConfig:
        fields: dict = dict(name="toy", vocab_size=self.vocab_size, n_ctx=32, n_layer=2, n_head=2, d_model=64)
        return ModelConfig(**(fields | overrides))

    # -- sampling ------------------------------------------------------------------------------------------

    def prompts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n, prompt_len + 1] prompts ending in the separator."""
        content = rng.integers(FIRST_CONTENT, self.vocab_size, (n, self.prompt_len))
        return np.concatenate([content, np.full((n, 1), SEP)], axis=1).astype(np.int32)

    def demonstrations(self, prompts: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
        """One response per prompt: a uniform length in [1, max_response], uniform content, the end token."""
        lengths = rng.integers(1, self.max_response + 1, len(prompts))
        return [rng.integers(FIRST_CONTENT, self.vocab_size, n).tolist() + [END] for n in lengths]

    def pretraining(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """[n, length] arithmetic progressions modulo the content range."""
        start = rng.integers(0, self.n_content, (n, 1))
        stride = rng.integers(1, 4, (n, 1))
        return (FIRST_CONTENT + (start + stride * np.arange(length)) % self.n_content).astype(np.int32)

    # -- the hidden reward ---------------------------------------------------------------------------------

    def true_reward(self, prompt: np.ndarray, response: list[int]) -> float:
        """r*(x, y) for one prompt and its response (generated tokens, the end token included if produced)."""
        ended = bool(response) and response[-1] == END and len(response) <= self.max_response + 1
        body = [t for t in (response[:-1] if ended else response) if t >= FIRST_CONTENT]
        if not body:
            return float(self.stop_bonus * ended - 1.0)  # an empty answer scores below every real one
        shown = set(prompt[: self.prompt_len].tolist())
        lex = float(np.mean(self.lexicon[body]))
        copied = float(np.mean([t in shown for t in body]))
        return lex + self.copy_bonus * copied + self.stop_bonus * ended

    def rank(self, rewards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A Plackett–Luce ranking of K responses with utilities rewards / tau: rank 0 is the best."""
        gumbel = rng.gumbel(size=rewards.shape)
        order = np.argsort(-(rewards / self.tau + gumbel), axis=-1)
        return np.argsort(order, axis=-1).astype(np.int32)

    def bayes_pairwise_accuracy(self, rewards: np.ndarray) -> float:
        """The accuracy of ranking every pair of each row by r* itself, measured against BT draws: the
        ceiling of any reward model. rewards: [n, K]."""
        i, j = np.triu_indices(rewards.shape[1], 1)
        gap = np.abs(rewards[:, i] - rewards[:, j]) / self.tau
        return float(np.mean(1.0 / (1.0 + np.exp(-gap))))


def pack(prompts: np.ndarray, responses: list[list[int]], length: int) -> dict[str, np.ndarray]:
    """Prompt + response rows, right-padded to `length`: `tokens` [n, length], `prompt_len` and `total_len`
    [n] (so the last real token of row i sits at total_len[i] - 1)."""
    tokens = np.zeros((len(prompts), length), np.int32)
    total = np.zeros(len(prompts), np.int32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        row = list(p) + list(r)
        tokens[i, : len(row)] = row[:length]
        total[i] = min(len(row), length)
    return {"tokens": tokens, "prompt_len": np.full(len(prompts), prompts.shape[1], np.int32), "total_len": total}
