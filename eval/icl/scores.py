"""The arithmetic of the in-context-learning probes, on arrays (NumPy, or jax.numpy inside a jitted pass).

- Induction (prefix-matching) score of a head (Olsson et al. 2022, "In-context learning and induction
  heads", Section 2): on a segment of random tokens repeated with period `segment`, the attention that each
  token of a repeat pays to the token *after* its earlier occurrence (key t - segment + 1 for query t),
  averaged over those queries. An exact induction head scores 1; uniform causal attention scores
  `uniform_baseline` = mean over the same queries of 1 / (t + 1) (about 0.022 for 32 tokens repeated twice).
- Previous-token score: the attention from each token to the one before it (the first-layer half of the
  two-head induction circuit).
- Copying score of a head's OV circuit (Olsson et al., "copying" eigenvalue analysis): with embedding E and
  unembedding U restricted to the task's token ids, sum(Re lambda) / sum(|lambda|) over the eigenvalues
  of E W_V W_O U^T, in [-1, 1]; positive when the head raises the logits of the tokens it attends to. The
  nonzero eigenvalues of that |ids| x |ids| matrix are those of the d_head x d_head W_O U^T E W_V, which is
  what is computed. LayerNorm is left out, as in the paper.
- In-context learning score (Olsson et al., Section 2): the mean loss on a late token of the context minus
  the mean loss on an early one (they use the 500th and the 50th token of 512): negative when later tokens,
  which see more context, are predicted better. Tokens are named by their 0-based index i in the document,
  which the model predicts from the i tokens before it, at input position i - 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _queries(length: int, segment: int) -> np.ndarray:
    if not 0 < segment < length:
        raise ValueError(f"a repeated segment of {segment} tokens needs a longer sequence than {length}")
    return np.arange(segment, length)


def induction_attention(probs: Any, segment: int) -> Any:
    """Per-head induction score: probs [..., q, k] (causal attention over one repeated-token sequence) -> [...]."""
    t = _queries(probs.shape[-1], segment)
    return probs[..., t, t - segment + 1].mean(-1)


def previous_token_attention(probs: Any) -> Any:
    """Per-head previous-token score: probs [..., q, k] -> [...], mean over queries t >= 1 of probs[t, t - 1]."""
    t = np.arange(1, probs.shape[-1])
    return probs[..., t, t - 1].mean(-1)


def uniform_baseline(length: int, segment: int) -> float:
    """The induction score of uniform causal attention (query t spreads 1 / (t + 1) over its keys)."""
    return float(np.mean(1.0 / (_queries(length, segment) + 1.0)))


def copying_score(embedding: np.ndarray, w_v: np.ndarray, w_o: np.ndarray, unembedding: np.ndarray) -> float:
    """Copying score of one head: embedding and unembedding [ids, d_model] (the task's ids), w_v [d_model,
    d_head], w_o [d_head, d_model]."""
    small = w_o @ unembedding.T @ embedding @ w_v  # [d_head, d_head]: the nonzero spectrum of the OV circuit
    eig = np.linalg.eigvals(small.astype(np.float64))
    total = np.abs(eig).sum()
    return float(eig.real.sum() / total) if total > 0 else 0.0


def mean_at(losses: np.ndarray, positions: np.ndarray, weights: np.ndarray, index: int) -> tuple[float, float]:
    """(mean, standard error) of the losses on the tokens of document index `index`: those predicted at input
    `positions` == index - 1, with weight > 0."""
    values = np.asarray(losses, np.float64)[(np.asarray(positions) == index - 1) & (np.asarray(weights) > 0)]
    if len(values) == 0:
        raise ValueError(f"no scored token has index {index} in its document")
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), se


def icl_score(
    losses: np.ndarray, positions: np.ndarray, weights: np.ndarray, early: int, late: int
) -> dict[str, float]:
    """The ICL score (with its parts and standard errors, as metrics) from per-token losses, the input position
    each was predicted at and its weight (0 = padding), all [rows, length]: loss on token `late` minus
    loss on token `early` (0-based indices in the document)."""
    if not 1 <= early < late:
        raise ValueError(f"the ICL score needs 1 <= early < late, got early={early}, late={late}")
    loss_early, se_early = mean_at(losses, positions, weights, early)
    loss_late, se_late = mean_at(losses, positions, weights, late)
    return {
        "icl_score": loss_late - loss_early,
        "icl_score_stderr": float(np.hypot(se_early, se_late)),
        "loss_early": loss_early,
        "loss_early_stderr": se_early,
        "loss_late": loss_late,
        "loss_late_stderr": se_late,
    }


def scaled_positions(length: int) -> tuple[int, int]:
    """Olsson et al.'s 50th and 500th token of a 512-token context (indices 49 and 499) scaled to a sequence
    of `length` input positions, whose predicted tokens have indices 1 .. length."""
    early = max(1, round(50 * length / 512) - 1)
    late = min(length, max(early + 1, round(500 * length / 512) - 1))
    return early, late


def phase_change(xs: np.ndarray, ys: np.ndarray, min_change: float) -> float | None:
    """Where a curve ys(xs) makes its move: the first x at which it crosses halfway from its first value to
    its extreme in the direction it ends (linearly interpolated), or None when that move is under
    `min_change`. An abrupt transition puts this at the transition; a steady drift at its middle."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if len(ys) < 2:
        return None
    extreme = ys.max() if ys[-1] >= ys[0] else ys.min()
    if abs(extreme - ys[0]) < min_change:
        return None
    half = (ys[0] + extreme) / 2
    beyond = (ys - half) * np.sign(extreme - ys[0]) >= 0
    i = int(np.argmax(beyond))
    if i == 0:
        return float(xs[0])
    t = (half - ys[i - 1]) / (ys[i] - ys[i - 1])
    return float(xs[i - 1] + t * (xs[i] - xs[i - 1]))


__all__ = [
    "copying_score",
    "icl_score",
    "induction_attention",
    "mean_at",
    "phase_change",
    "previous_token_attention",
    "scaled_positions",
    "uniform_baseline",
]
