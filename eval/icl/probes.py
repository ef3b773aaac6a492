"""In-context-learning probes of a token model: K-shot accuracy on synthetic tasks, the ICL score and
induction heads, as entries of an eval results file.

Every probe returns entries in the format eval.runner writes (one per task and K; eval/results.py validates
them and eval/report.py tabulates and plots them like any benchmark's), with `output_type` "icl_probe" and
the per-head arrays under `details`. Probe sequences come from a synthetic task's generator
(gptjax.data.synthetic), always from its "test" split, so no probe sequence was ever trained on:
- a FewShotClassification task -> its K-shot accuracy and query loss on held-out classes whose labels
  are remapped in every sequence (task name as registered), and for fixed-label tasks the in-weights
  accuracy on training classes with no help from the context (`<task>_iwl`), for each K of `shots`;
- "induction" -> per layer and head, the induction (prefix-matching), previous-token and copying scores on
  `icl.induction_task`'s repeated random tokens (eval.icl.scores), the best head's scores against the
  uniform baseline, and the loss on the first copy and on the repeats;
- "icl_score" -> Olsson et al.'s ICL score on held-out text, with the loss at every token index.

The model is run with the XLA attention kernel in one block and unrolled layers (so the attention
probabilities can be read, `model.Attention` sows them into "intermediates" only when asked): the same
function as the training forward pass, computed the plain way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval import metrics as M
from eval.icl import scores
from gptjax import model
from gptjax.config import ConfigError, ICLConfig, ModelConfig
from gptjax.data import tasks
from gptjax.data.synthetic import FewShotClassification, RepeatedTokens, SyntheticSource

OUTPUT_TYPE = "icl_probe"
BATCH = 64  # sequences per forward pass
BUILTIN_PROBES = ("induction", "icl_score")

for _metric in (
    M.Metric("query_loss", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
    M.Metric("induction_score", M.mean, bootstrap=False, higher_is_better=True, percentage=False),
    M.Metric("previous_token_score", M.mean, bootstrap=False, higher_is_better=True, percentage=False),
    M.Metric("copying_score", M.mean, bootstrap=False, higher_is_better=True, percentage=False),
    M.Metric("uniform_attention", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
    M.Metric("loss_first_copy", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
    M.Metric("loss_repeats", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
    M.Metric("icl_score", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
    M.Metric("loss_early", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
    M.Metric("loss_late", M.mean, bootstrap=False, higher_is_better=False, percentage=False),
):
    M.register_metric(_metric)

Batch = dict[str, np.ndarray]


class ProbeModel:
    """A token model's parameters and config, with the forward passes the probes need (jitted, in batches)."""

    def __init__(self, params: Any, cfg: ModelConfig) -> None:
        self.params = model.unstack_layers(params, cfg) if cfg.scan_layers else params
        self.cfg = dataclasses.replace(cfg, scan_layers=False, remat="none", attention_impl="xla", attention_block=0)

    def token_nll(self, batch: Batch) -> np.ndarray:
        """Loss of every target of a packed batch (inputs, targets, segment_ids, positions), [rows, length]."""
        keys = ("inputs", "targets", "segment_ids", "positions")
        return _in_batches(functools.partial(_token_nll, self.params, cfg=self.cfg), *(batch[k] for k in keys))

    def log_probs_at(self, tokens: np.ndarray, index: int, length: int) -> np.ndarray:
        """Next-token log-probabilities [rows, vocab] at input position `index` of every row, the rows padded
        to `length` (later tokens do not change a causal model's prediction; one length compiles once)."""
        padded = np.zeros((len(tokens), length), np.int32)
        padded[:, : tokens.shape[1]] = tokens
        index_rows = np.full(len(tokens), index, np.int32)
        return _in_batches(functools.partial(_log_probs_at, self.params, cfg=self.cfg), padded, index_rows)

    def head_scores(self, tokens: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray]:
        """Induction and previous-token scores per row, layer and head, [rows, layers, heads] each."""
        run = functools.partial(_head_scores, self.params, cfg=self.cfg, segment=segment)
        return _in_batches(run, tokens)

    def copying_scores(self, ids: np.ndarray) -> np.ndarray:
        """The OV copying score of every head on token `ids`, [layers, heads] (eval.icl.scores)."""
        embedding = np.asarray(self.params["wte"], np.float64)[ids]
        unembedding = np.asarray(model.output_embedding(self.params, self.cfg), np.float64)[ids]
        out = np.zeros((self.cfg.n_layer, self.cfg.n_head))
        for layer in range(self.cfg.n_layer):
            attn = self.params[f"h_{layer}"]["attn"]
            w_v, w_o = np.asarray(attn["value_kernel"], np.float64), np.asarray(attn["out_kernel"], np.float64)
            for head in range(self.cfg.n_head):
                out[layer, head] = scores.copying_score(embedding, w_v[:, head], w_o[head], unembedding)
        return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _token_nll(
    params: Any,
    inputs: jax.Array,
    targets: jax.Array,
    segment_ids: jax.Array,
    positions: jax.Array,
    *,
    cfg: ModelConfig,
) -> jax.Array:
    logits = model.forward(params, inputs, cfg, segment_ids=segment_ids, positions=positions)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _log_probs_at(params: Any, tokens: jax.Array, index: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    features = model.forward(params, tokens, cfg, return_features=True)
    features = jnp.take_along_axis(features, index[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(model.project_to_vocab(features, model.output_embedding(params, cfg)))


@functools.partial(jax.jit, static_argnames=("cfg", "segment"))
def _head_scores(params: Any, tokens: jax.Array, *, cfg: ModelConfig, segment: int) -> tuple[jax.Array, jax.Array]:
    _, state = model.GPT(cfg).apply({"params": params}, tokens, mutable=["intermediates"])
    layers = state["intermediates"]
    probs = jnp.stack([layers[f"h_{i}"]["attn"]["attention_probs"][0] for i in range(cfg.n_layer)], axis=1)
    return scores.induction_attention(probs, segment), scores.previous_token_attention(probs)  # [rows, L, H]


def _in_batches(fn: Callable[..., Any], *arrays: np.ndarray) -> Any:
    """fn over rows in batches of BATCH (the last padded, so one shape compiles), concatenated on the host."""
    n, outputs = len(arrays[0]), []
    for start in range(0, n, BATCH):
        chunk = [np.asarray(a[start : start + BATCH]) for a in arrays]
        rows = len(chunk[0])
        if n > BATCH and rows < BATCH:
            chunk = [np.concatenate([c, np.repeat(c[-1:], BATCH - rows, axis=0)]) for c in chunk]
        outputs.append(jax.tree.map(lambda x, rows=rows: np.asarray(x)[:rows], jax.device_get(fn(*chunk))))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def mean_metric(name: str, items: np.ndarray) -> dict[str, float]:
    """A metric and its standard error over per-document items (eval.metrics' mean and its stderr)."""
    values = [float(x) for x in np.asarray(items).reshape(-1)]
    se = M.mean_stderr(values)
    return {name: M.mean(values), f"{name}_stderr": se if se is not None else float("nan")}


def result_entry(
    task: str,
    k: int,
    source: SyntheticSource | None,
    num_docs: int,
    metrics: dict[str, float],
    example: np.ndarray | str,
    details: dict[str, Any] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """One results-file entry (the keys eval.runner writes for a benchmark)."""
    origin = "held-out text" if source is None else f"gptjax.data.synthetic.{source.generator!r}, seed={source.seed}"
    prompt = example if isinstance(example, str) else "token ids: " + " ".join(str(int(t)) for t in example)
    return {
        "task": task,
        "split": split,
        "num_fewshot": k,
        "fewshot_split": split if k else "",
        "fewshot_fallback": False,
        "fewshot_exclusion": "",
        "seed": 0 if source is None else source.seed,
        "num_docs": num_docs,
        "metrics": metrics,
        "example_prompt": prompt,
        "output_type": OUTPUT_TYPE,
        "truncated_requests": 0,
        "task_source": origin,
        "details": details or {},
    }


def _fits(cfg: ModelConfig, length: int, what: str) -> None:
    if length > cfg.n_ctx:
        raise ConfigError(f"{what} needs sequences of {length} tokens; the model's context is n_ctx={cfg.n_ctx}")


def kshot(pm: ProbeModel, task: str, shots: Sequence[int], n: int) -> list[dict[str, Any]]:
    """Accuracy (argmax over the label ids) and loss of the query's label after K context pairs, for each K:
    on held-out classes with remapped labels (`task`), and, for fixed-label tasks, in weights (`<task>_iwl`)."""
    source = tasks.synthetic_source(task)
    gen = source.generator
    if not isinstance(gen, FewShotClassification):
        raise ConfigError(f"K-shot probes need a FewShotClassification task; {task!r} is {type(gen).__name__}")
    modes = ("icl", "iwl") if gen.labels == "fixed" else ("icl",)
    length = (max(shots) + 1) * gen.pair_len
    _fits(pm.cfg, length, f"the {max(shots)}-shot probe of {task!r}")
    results = []
    for mode in modes:
        for k in shots:
            episodes = gen.episodes(source.seed, np.arange(n), k, mode)  # type: ignore[arg-type]
            log_probs = pm.log_probs_at(episodes.tokens, int(episodes.label_positions[-1]), length)
            target = episodes.labels[:, -1]
            predicted = gen.label_ids[np.argmax(log_probs[:, gen.label_ids], axis=1)]
            metrics = mean_metric("acc", predicted == target) | mean_metric(
                "query_loss", -log_probs[np.arange(n), target]
            )
            name = task if mode == "icl" else f"{task}_iwl"
            results.append(
                result_entry(name, k, source, n, metrics, episodes.tokens[0], {"chance_acc": 1 / gen.n_labels})
            )
    return results


def induction(pm: ProbeModel, task: str, n: int) -> dict[str, Any]:
    """Induction, previous-token and copying scores per head on repeated random tokens, and the losses."""
    source = tasks.synthetic_source(task)
    if not isinstance(source.generator, RepeatedTokens) or source.generator.repeats < 2:
        raise ConfigError(
            f"the induction probe needs a RepeatedTokens task with repeats >= 2; {task!r} is {source.generator!r}"
        )
    gen = dataclasses.replace(source.generator, min_segment=0)  # the probe's period is always `segment`
    _fits(pm.cfg, gen.length, f"the induction probe on {task!r}")
    tokens = gen.tokens(source.seed, "test", np.arange(n))
    induction_rows, previous_rows = pm.head_scores(tokens, gen.segment)  # [n, L, H]
    per_head, previous = induction_rows.mean(0), previous_rows.mean(0)
    layer, head = np.unravel_index(np.argmax(per_head), per_head.shape)
    prev_layer, prev_head = np.unravel_index(np.argmax(previous), previous.shape)
    copying = pm.copying_scores(np.arange(gen.first_id, gen.max_id + 1))
    segment_ids, positions = (
        np.ones_like(tokens[:, :-1]),
        np.broadcast_to(np.arange(gen.length - 1), tokens[:, :-1].shape),
    )
    nll = pm.token_nll(
        {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids, "positions": positions}
    )
    first = gen.segment - 1  # targets 1 .. segment - 1 are in the first copy, the rest repeat it
    metrics = (
        mean_metric("induction_score", induction_rows[:, layer, head])
        | mean_metric("previous_token_score", previous_rows[:, prev_layer, prev_head])
        | {"copying_score": float(copying[layer, head])}
        | {"uniform_attention": scores.uniform_baseline(gen.length, gen.segment)}
        | mean_metric("loss_first_copy", nll[:, :first].mean(1))
        | mean_metric("loss_repeats", nll[:, first:].mean(1))
    )
    details = {
        "induction_task": task,
        "best_head": [int(layer), int(head)],
        "induction": per_head.round(5).tolist(),
        "previous_token": previous.round(5).tolist(),
        "copying": copying.round(5).tolist(),
        "unigram_entropy": float(np.log(gen.n_symbols)),
    }
    return result_entry("induction", 0, source, n, metrics, tokens[0], details)


def icl_score(pm: ProbeModel, batches: Iterable[Batch], early: int, late: int) -> dict[str, Any]:
    """Olsson et al.'s ICL score over held-out packed batches: loss on token `late` minus token `early`."""
    nll, positions, weights = [], [], []
    for batch in batches:
        nll.append(pm.token_nll(batch))
        positions.append(batch["positions"])
        weights.append(batch["loss_mask"])
    losses, where, mask = np.concatenate(nll), np.concatenate(positions), np.concatenate(weights)
    metrics = scores.icl_score(losses, where, mask, early, late)
    length = losses.shape[1]
    by_index = [
        float(losses[(where == p) & (mask > 0)].mean()) if np.any((where == p) & (mask > 0)) else None
        for p in range(length)
    ]
    details = {"early": early, "late": late, "loss_by_index": by_index}  # entry i - 1: token index i
    rows = int(np.sum(mask.sum(1) > 0))
    return result_entry("icl_score", 0, None, rows, metrics, f"held-out rows of {length} tokens", details, "validation")


def positions(icl: ICLConfig, seq_len: int) -> tuple[int, int]:
    """The ICL score's (early, late) token indices: the config's, or Olsson et al.'s scaled to seq_len."""
    early, late = scores.scaled_positions(seq_len)
    early, late = icl.early or early, icl.late or late
    if not 1 <= early < late <= seq_len:
        raise ConfigError(f"icl.early={early} and icl.late={late} must satisfy 1 <= early < late <= seq_len={seq_len}")
    return early, late


def check(icl: ICLConfig, cfg: ModelConfig, seq_len: int) -> None:
    """Fail now, not after training, on an unknown probe or one that does not fit the model."""
    for name in icl.probes:
        if name == "induction":
            source = tasks.synthetic_source(icl.induction_task)
            if isinstance(source.generator, RepeatedTokens):
                _fits(cfg, source.generator.length, f"the induction probe on {icl.induction_task!r}")
        elif name == "icl_score":
            positions(icl, seq_len)
        else:
            gen = tasks.synthetic_source(name).generator
            if not isinstance(gen, FewShotClassification):
                raise ConfigError(
                    f"icl.probes has {name!r}, a {type(gen).__name__} task; probes are {', '.join(BUILTIN_PROBES)} "
                    "or FewShotClassification tasks"
                )
            _fits(cfg, (max(icl.shots) + 1) * gen.pair_len, f"the {max(icl.shots)}-shot probe of {name!r}")


def run_probes(
    pm: ProbeModel, icl: ICLConfig, seq_len: int, held_out: Callable[[int], Iterable[Batch]]
) -> list[dict[str, Any]]:
    """Every probe of `icl.probes`, in order; `held_out(rows)` yields packed held-out batches for the ICL score."""
    check(icl, pm.cfg, seq_len)
    results: list[dict[str, Any]] = []
    for name in icl.probes:
        if name == "induction":
            results.append(induction(pm, icl.induction_task, icl.examples))
        elif name == "icl_score":
            results.append(icl_score(pm, held_out(icl.examples), *positions(icl, seq_len)))
        else:
            results.extend(kshot(pm, name, icl.shots, icl.examples))
    return results


def scalars(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The results' metrics as training-log scalars icl/<task>/<K>shot/<metric> (no standard errors)."""
    return {
        f"icl/{r['task']}/{r['num_fewshot']}shot/{name}": value
        for r in results
        for name, value in r["metrics"].items()
        if not name.endswith("_stderr")
    }


__all__ = [
    "BUILTIN_PROBES",
    "OUTPUT_TYPE",
    "ProbeModel",
    "check",
    "icl_score",
    "induction",
    "kshot",
    "run_probes",
    "scalars",
]
