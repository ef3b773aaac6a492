"""In-context-learning studies: synthetic generators (determinism and stated statistics), probe arithmetic on
hand-built cases, the probes as a training hook, and their results files in reports."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval.icl import probes, regression, scores
from eval.icl.report import icl_section, load_curves
from eval.icl.runs import icl_command
from eval.report import build_report
from eval.results import load_results
from gptjax import config, model
from gptjax.config import ConfigError, ICLConfig, ModelConfig
from gptjax.data import make_dataset, tasks
from gptjax.data.synthetic import CopiedSegments, FewShotClassification, LinearRegression, RepeatedTokens
from gptjax.hooks import add_standard_hooks
from gptjax.train import Trainer

from train_helpers import small_run

# Small synthetic tasks for the pipeline tests (small splits keep tokenising them fast).
TINY_REPEAT = "icl_test_repeat"
TINY_FEWSHOT = "icl_test_fewshot"
if TINY_REPEAT not in tasks.task_names():
    tasks.register_synthetic_task(
        TINY_REPEAT, RepeatedTokens(segment=8, min_segment=4, n_symbols=20), sizes=(256, 64, 64)
    )
    tasks.register_synthetic_task(
        TINY_FEWSHOT,
        FewShotClassification(
            n_classes=40, n_heldout=20, n_labels=4, context=4, burstiness=2, labels="fixed", item_len=1, n_symbols=64
        ),
        sizes=(256, 64, 64),
    )


# ---------------------------------------------------------------------------------------------------------
# Generators.


def test_repeated_tokens_are_deterministic_and_repeat_their_segment():
    gen = RepeatedTokens(segment=16, repeats=3, first_id=40, n_symbols=10)
    rows = np.arange(50)
    tokens = gen.tokens(7, "train", rows)
    np.testing.assert_array_equal(tokens, gen.tokens(7, "train", rows))
    np.testing.assert_array_equal(tokens[10:20], gen.tokens(7, "train", rows[10:20]))  # any subset, same sequences
    assert not np.array_equal(tokens, gen.tokens(8, "train", rows))
    assert not np.array_equal(tokens, gen.tokens(7, "test", rows))
    assert tokens.shape == (50, 48) and tokens.min() >= 40 and tokens.max() <= gen.max_id == 49
    np.testing.assert_array_equal(tokens[:, :16], tokens[:, 16:32])
    np.testing.assert_array_equal(tokens[:, :16], tokens[:, 32:])
    varied = RepeatedTokens(segment=16, min_segment=4)
    periods = varied.periods(0, "train", np.arange(2000))
    assert periods.min() == 4 and periods.max() == 16 and abs(periods.mean() - 10) < 0.3
    seqs = varied.tokens(0, "train", np.arange(2000))
    for seq, p in zip(seqs[:50], periods[:50]):
        np.testing.assert_array_equal(seq[p:], seq[:-p])


def test_copied_segments_copy_earlier_windows_from_any_distance():
    gen = CopiedSegments(length=48, segment=12, min_segment=4, p_copy=0.75, first_id=40, n_symbols=10)
    rows = np.arange(4000)
    tokens = gen.tokens(3, "train", rows)
    np.testing.assert_array_equal(tokens[100:200], gen.tokens(3, "train", rows[100:200]))
    assert not np.array_equal(tokens, gen.tokens(3, "validation", rows))
    assert tokens.shape == (4000, 48) and tokens.min() == 40 and tokens.max() == gen.max_id == 49
    source = gen.sources(3, "train", rows)
    np.testing.assert_array_equal(np.take_along_axis(tokens, source, axis=1), tokens)  # every copy holds its source
    distance = np.arange(48) - source
    assert (distance >= 0).all() and (distance[:, :4] == 0).all()  # the first piece (>= 4 tokens) is fresh
    # Pieces covering positions >= 24 start after 12 tokens, so a window fits and p_copy of them are copies.
    assert abs((distance[:, 24:] > 0).mean() - 0.75) < 0.02  # ~3 pieces per row after 24: se ~0.006
    copied = distance[distance > 0]
    counts = np.bincount(copied, minlength=48)
    assert copied.min() == 4 and copied.max() >= 40 and counts.max() < 0.1 * len(copied)  # no favoured distance
    fresh = tokens[distance == 0]
    assert np.abs(np.bincount(fresh - 40, minlength=10) / len(fresh) - 0.1).max() < 0.01  # uniform ids
    with pytest.raises(ConfigError, match="a piece and a copy must fit"):
        CopiedSegments(length=20, segment=12)


def _count(context: np.ndarray, query: np.ndarray) -> np.ndarray:
    return (context == query[:, None]).sum(1)


def test_bursty_contexts_hold_the_query_class_burstiness_times_and_uniform_ones_rarely():
    bursty = FewShotClassification(n_classes=1000, context=8, burstiness=4, p_bursty=1.0)
    e = bursty.sequences(0, "train", np.arange(4000))
    copies = _count(e.classes[:, :-1], e.classes[:, -1])
    assert np.mean(copies == 4) > 0.99  # two groups of four; the groups collide with probability ~1/1000
    assert max(len(set(row)) for row in e.classes[:, :-1]) <= 2
    uniform = FewShotClassification(n_classes=1000, context=8, burstiness=4, p_bursty=0.0)
    u = uniform.sequences(0, "train", np.arange(4000))
    assert np.mean(_count(u.classes[:, :-1], u.classes[:, -1]) > 0) < 0.02  # 8 draws of 1000 classes: ~0.8%
    mixed = FewShotClassification(n_classes=1000, p_bursty=0.7).sequences(0, "train", np.arange(4000))
    assert abs(np.mean(_count(mixed.classes[:, :-1], mixed.classes[:, -1]) == 4) - 0.7) < 0.03


def test_zipfian_class_frequencies_and_held_out_classes():
    gen = FewShotClassification(n_classes=64, zipf=1.0, p_bursty=0.0)
    classes = gen.sequences(3, "train", np.arange(20000)).classes.reshape(-1)
    freq = np.bincount(classes, minlength=64) / len(classes)
    expected = gen.class_probabilities()
    assert expected[0] / expected[9] == pytest.approx(10.0)
    assert np.abs(freq - expected).max() < 0.01  # binomial se at p~0.21, n=180k: ~0.001
    test = gen.sequences(3, "test", np.arange(500)).classes
    assert test.min() >= 64 and test.max() < 64 + gen.n_heldout


def test_labels_are_remapped_per_sequence_but_consistent_within_one():
    gen = FewShotClassification(n_classes=50, n_labels=8, labels="remap")
    e = gen.sequences(1, "train", np.arange(3000))
    within = [len({lab for c2, lab in zip(cs, ls) if c2 == c}) for cs, ls in zip(e.classes, e.labels) for c in set(cs)]
    assert max(within) == 1  # every occurrence of a class in a sequence has one label
    label_of_class0 = [ls[list(cs).index(0)] for cs, ls in zip(e.classes, e.labels) if 0 in cs]
    counts = np.bincount(np.array(label_of_class0) - gen.first_id, minlength=8)
    assert len(label_of_class0) > 100 and counts.min() > 0.5 * counts.mean()  # uniform over the 8 labels
    fixed = FewShotClassification(n_classes=50, n_labels=8, labels="fixed")
    f = fixed.sequences(1, "train", np.arange(500))
    np.testing.assert_array_equal(f.labels, fixed.first_id + fixed.fixed_labels(1)[f.classes])
    tokens = f.tokens.reshape(500, -1, fixed.pair_len)
    np.testing.assert_array_equal(tokens[:, :, -1], f.labels)  # the label follows its item
    np.testing.assert_array_equal(f.tokens[:, f.label_positions + 1], f.labels)


def test_within_class_noise_replaces_each_item_token_with_the_stated_probability():
    gen = FewShotClassification(n_classes=50, noise=0.25, n_symbols=64, item_len=2)
    e = gen.sequences(4, "train", np.arange(2000))
    items = e.tokens.reshape(2000, -1, gen.pair_len)[:, :, : gen.item_len] - (gen.first_id + gen.n_labels)
    changed = np.mean(items != gen.prototypes(4)[e.classes])
    assert changed == pytest.approx(0.25 * 63 / 64, abs=0.01)  # a replacement may redraw the same symbol; se 0.002
    clean = FewShotClassification(n_classes=50, noise=0.0, n_symbols=64, item_len=2)
    c = clean.sequences(4, "train", np.arange(200))
    items = c.tokens.reshape(200, -1, clean.pair_len)[:, :, : clean.item_len] - (clean.first_id + clean.n_labels)
    np.testing.assert_array_equal(items, clean.prototypes(4)[c.classes])


def test_probe_episodes_context_only_versus_weights_only():
    gen = FewShotClassification(n_classes=30, labels="fixed", noise=0.0)
    icl = gen.episodes(0, np.arange(300), 8, "icl", ways=2)
    assert icl.classes.min() >= 30
    assert max(len(set(row)) for row in icl.classes) <= 2
    for cs, ls in zip(icl.classes, icl.labels):  # two classes, two different labels
        assert len({(c, lab) for c, lab in zip(cs, ls)}) == len(set(cs)) == len(set(ls))
    iwl = gen.episodes(0, np.arange(300), 8, "iwl")
    assert (iwl.classes[:, :-1] != iwl.classes[:, -1:]).all() and iwl.classes.max() < 30
    np.testing.assert_array_equal(iwl.labels, gen.first_id + gen.fixed_labels(0)[iwl.classes])
    with pytest.raises(ConfigError, match="labels='fixed'"):
        FewShotClassification().episodes(0, np.arange(3), 2, "iwl")


def test_linear_regression_points_and_weights():
    gen = LinearRegression(dim=6, points=30)
    xs, ys, w = gen.sample(2, "train", np.arange(400))
    np.testing.assert_allclose(ys, np.einsum("npd,nd->np", xs, w), rtol=1e-5, atol=1e-5)
    assert abs(xs.mean()) < 0.02 and abs(xs.var() - 1) < 0.03 and abs(np.mean(ys**2) / 6 - 1) < 0.1
    np.testing.assert_array_equal(xs[5:9], gen.sample(2, "train", np.arange(5, 9))[0])


def test_synthetic_task_trains_as_data_task_one_sequence_per_row(tmp_path):
    dataset = make_dataset(config.DataConfig(task=TINY_REPEAT, cache_dir=str(tmp_path)), 16, tmp_path)
    source = tasks.synthetic_source(TINY_REPEAT)
    assert dataset.num_rows() == 256
    batch = dataset.batch(0, 8)
    sequences = {tuple(s) for s in source.generator.tokens(source.seed, "train", np.arange(256))}
    assert all(tuple(row) in sequences for row in batch["inputs"])
    assert (batch["targets"][:, -1] == dataset.vocab.eos_id).all() and (batch["segment_ids"] == 1).all()
    with pytest.raises(ConfigError, match="real-valued"):
        make_dataset(config.DataConfig(task="linear_regression", cache_dir=str(tmp_path)), 16, tmp_path)
    tasks.register_synthetic_task("icl_test_bad_ids", RepeatedTokens(first_id=250, n_symbols=10), sizes=(4, 4, 4))
    with pytest.raises(ConfigError, match="EOS id 256"):
        make_dataset(config.DataConfig(task="icl_test_bad_ids", cache_dir=str(tmp_path)), 16, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Probe arithmetic.


def test_exact_induction_pattern_scores_one_and_uniform_scores_the_baseline():
    length, segment = 24, 8
    exact = np.zeros((length, length))
    for t in range(length):
        exact[t, t - segment + 1 if t >= segment else 0] = 1.0
    assert scores.induction_attention(exact, segment) == pytest.approx(1.0)
    uniform = np.tril(np.ones((length, length))) / np.arange(1, length + 1)[:, None]
    baseline = scores.uniform_baseline(length, segment)
    assert scores.induction_attention(uniform, segment) == pytest.approx(baseline)
    assert baseline == pytest.approx(np.mean(1 / np.arange(segment + 1, length + 1)))
    assert scores.uniform_baseline(64, 32) == pytest.approx(0.0214, abs=1e-4)  # the "~0.02"
    previous = np.eye(length, k=-1)
    assert scores.previous_token_attention(previous) == pytest.approx(1.0)
    assert scores.induction_attention(previous, segment) == 0.0
    heads = np.stack([exact, uniform])  # [heads, q, k] -> one score per head
    np.testing.assert_allclose(scores.induction_attention(heads, segment), [1.0, baseline])


def test_copying_score_is_one_for_a_copying_head_and_minus_one_for_an_anti_copying_one():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(30, 8))
    w_v = rng.normal(size=(8, 4))
    w_o = np.linalg.pinv(w_v)  # W_V W_O is a projection: the OV circuit E P E^T is positive semi-definite
    assert scores.copying_score(embedding, w_v, w_o, embedding) == pytest.approx(1.0)
    assert scores.copying_score(embedding, w_v, -w_o, embedding) == pytest.approx(-1.0)


def test_icl_score_of_a_hand_made_loss_curve():
    length = 40
    positions = np.tile(np.arange(length), (6, 1))
    losses = 5.0 - 0.1 * positions + np.array([[0.0], [0.2], [-0.2], [0.1], [-0.1], [0.0]])  # the token at index p + 1
    weights = np.ones_like(losses)
    weights[0, 20] = 0  # a masked token does not count
    out = scores.icl_score(losses, positions, weights, early=5, late=31)
    assert out["loss_early"] == pytest.approx(5.0 - 0.4) and out["loss_late"] == pytest.approx(5.0 - 3.0)
    assert out["icl_score"] == pytest.approx(-2.6)
    assert out["icl_score_stderr"] == pytest.approx(
        math.hypot(*[np.std([0, 0.2, -0.2, 0.1, -0.1, 0], ddof=1) / math.sqrt(6)] * 2)
    )
    assert scores.scaled_positions(512) == (49, 499) and scores.scaled_positions(64) == (5, 61)
    with pytest.raises(ValueError, match="index 41"):
        scores.icl_score(losses, positions, weights, early=5, late=41)


def test_phase_change_is_where_the_curve_makes_its_move():
    tokens = np.arange(10) * 100.0
    step = np.array([0.02, 0.02, 0.03, 0.03, 0.9, 0.9, 0.91, 0.9, 0.9, 0.9])
    assert scores.phase_change(tokens, step, 0.1) == pytest.approx(300 + 100 * (0.465 - 0.03) / 0.87)
    falling = -step
    assert scores.phase_change(tokens, falling, 0.1) == pytest.approx(scores.phase_change(tokens, step, 0.1))
    assert scores.phase_change(tokens, np.full(10, 0.02) + tokens * 1e-5, 0.1) is None


class _MatchThenRecall:
    """A hand-built probe model of TINY_FEWSHOT: the label of the latest context pair whose item is the query's
    (in context), else the query class's fixed label when it is a training class (in weights), else the
    first label; its logits are 0 except 10 on its answer."""

    LOGIT = 10.0

    def __init__(self) -> None:
        source = tasks.synthetic_source(TINY_FEWSHOT)
        self.gen, self.cfg = source.generator, ModelConfig(vocab_size=257, n_ctx=64)
        items = self.gen.first_id + self.gen.n_labels + self.gen.prototypes(source.seed)[: self.gen.n_classes, 0]
        self.recall = dict(zip(items.tolist(), (self.gen.first_id + self.gen.fixed_labels(source.seed)).tolist()))

    def log_probs_at(self, tokens: np.ndarray, index: int, length: int) -> np.ndarray:
        assert self.gen.item_len == 1 and tokens.shape[1] == index + 2 <= length <= self.cfg.n_ctx
        logits = np.zeros((len(tokens), self.cfg.vocab_size))
        for row, seq in enumerate(tokens):
            pairs = seq[:index].reshape(-1, 2)  # (item, label) context pairs
            matches = pairs[pairs[:, 0] == seq[index], 1]
            answer = matches[-1] if len(matches) else self.recall.get(int(seq[index]), self.gen.first_id)
            logits[row, answer] = self.LOGIT
        return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_kshot_probe_scores_a_hand_built_model_exactly_per_k():
    pm, n, shots = _MatchThenRecall(), 200, (0, 1, 2, 4, 8)
    gen, seed = pm.gen, tasks.synthetic_source(TINY_FEWSHOT).seed
    results = {(r["task"], r["num_fewshot"]): r for r in probes.kshot(pm, TINY_FEWSHOT, shots, n)}  # type: ignore[arg-type]
    hit = -(pm.LOGIT - np.logaddexp(pm.LOGIT, np.log(pm.cfg.vocab_size - 1)))  # the loss of a confident answer
    for k in shots:
        # Expected from the episodes' classes alone: right when the query's class is in the context; else
        # right only when the query's label happens to be the first label.
        e = gen.episodes(seed, np.arange(n), k, "icl")
        seen = (e.classes[:, :-1] == e.classes[:, -1:]).any(1)
        right = seen | (e.labels[:, -1] == gen.first_id)
        loss = np.where(right, hit, hit + pm.LOGIT)
        m = results[TINY_FEWSHOT, k]["metrics"]
        assert m["acc"] == pytest.approx(right.mean(), abs=1e-12) and m["query_loss"] == pytest.approx(loss.mean())
        assert m["acc_stderr"] == pytest.approx(right.std(ddof=1) / math.sqrt(n))
        if k:  # two ways: the query's class is missing from k uniform draws with probability 2^-k
            assert seen.mean() == pytest.approx(1 - 0.5**k, abs=4 * math.sqrt(0.25 / n))
        iwl = results[f"{TINY_FEWSHOT}_iwl", k]["metrics"]
        assert iwl["acc"] == 1.0 and iwl["query_loss"] == pytest.approx(hit)  # every training class recalled
    assert results[TINY_FEWSHOT, 0]["metrics"]["acc"] < 0.5 < results[TINY_FEWSHOT, 8]["metrics"]["acc"]
    assert results[TINY_FEWSHOT, 0]["details"]["chance_acc"] == 1 / gen.n_labels


def test_regression_baselines_least_squares_is_exact_from_d_points_and_1_minus_k_over_d_before():
    gen = LinearRegression(dim=5, points=12)
    xs, ys, _ = gen.sample(0, "test", np.arange(4000))
    errors = {
        k: {n: np.mean((p - ys[:, k]) ** 2) / 5 for n, p in regression.baseline_predictions(xs, ys, k).items()}
        for k in (0, 2, 5, 10)
    }
    assert errors[0]["lstsq"] == pytest.approx(1.0, abs=0.05)  # predicting 0: E[y^2] / d = 1
    assert errors[2]["lstsq"] == pytest.approx(1 - 2 / 5, abs=0.04)
    assert errors[5]["lstsq"] < 1e-6 and errors[10]["lstsq"] < 1e-6
    assert errors[10]["averaging"] > 0.3 and errors[10]["knn3"] > 0.5
    results = regression.regression_results(
        "linear_regression", tasks.synthetic_source("linear_regression"), np.zeros_like(ys), xs, ys, [0, 5]
    )
    assert [r["num_fewshot"] for r in results] == [0, 5]
    assert results[1]["metrics"]["lstsq_mse"] < 1e-6
    assert results[1]["metrics"]["normalized_mse"] == pytest.approx(np.mean(ys[:, 5].astype(np.float64) ** 2) / 5)


# ---------------------------------------------------------------------------------------------------------
# Models, the hook, results files and reports.

TINY = ModelConfig(name="icl-tiny", vocab_size=257, n_ctx=16, n_layer=2, n_head=2, d_model=16, mlp=False)


def test_attention_only_param_count_and_sown_attention_leave_the_forward_unchanged():
    params = model.init_params(TINY, jax.random.key(0))
    assert "mlp" not in params["h_0"] and "ln_2" not in params["h_0"]
    counted = sum(x.size for x in jax.tree.leaves(params))
    assert model.param_count(TINY).total == counted
    tokens = jnp.arange(2 * 16).reshape(2, 16) % 200 + 33
    logits = jax.jit(model.forward, static_argnums=2)(params, tokens, TINY)
    sown_forward = jax.jit(lambda p, t: model.GPT(TINY).apply({"params": p}, t, mutable=["intermediates"]))
    (sown, _), state = sown_forward(params, tokens)
    np.testing.assert_array_equal(logits, sown)
    probs = state["intermediates"]["h_1"]["attn"]["attention_probs"][0]
    assert probs.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.triu(probs, k=1).max()) == 0.0  # causal


def _icl_run(tmp_path):
    """A 4-step attention-only run on TINY_REPEAT with every kind of probe every 2 steps."""
    return config.override(
        small_run(tmp_path / "run", tmp_path / "cache", steps=4),
        [
            "seq_len=16",
            "model.n_ctx=16",
            "model.mlp=false",
            f"data.task={TINY_REPEAT}",
            f"icl.probes=induction,icl_score,{TINY_FEWSHOT}",
            "icl.every=2",
            "icl.shots=0,2",
            "icl.examples=16",
            f"icl.induction_task={TINY_REPEAT}",
        ],
    )


def test_hook_logs_probes_beside_the_loss_and_reports_accept_them(tmp_path):
    from eval.icl.hook import add_icl_hook

    run = _icl_run(tmp_path)
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_icl_hook(trainer, add_standard_hooks(trainer, progress=False))
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps_with = {r["step"] for r in records if "icl/induction/0shot/induction_score" in r}
    assert steps_with == {2, 4} and {r["step"] for r in records if "loss" in r} >= {2, 4}
    keys = {k for r in records for k in r if k.startswith("icl/")}
    assert {
        f"icl/{TINY_FEWSHOT}/2shot/acc",
        f"icl/{TINY_FEWSHOT}_iwl/2shot/acc",
        "icl/icl_score/0shot/icl_score",
    } <= keys
    files = trainer.run_dir.icl_results_files()
    assert [p.name for p in files] == ["2.json", "4.json"]
    loaded = load_results(files[-1])  # eval/results.py's validation accepts the probes
    assert loaded.step == 4 and {r.task for r in loaded.results} == {
        "induction",
        "icl_score",
        TINY_FEWSHOT,
        f"{TINY_FEWSHOT}_iwl",
    }
    induction = loaded.result("induction", 0)
    assert 0 <= induction.metrics["induction_score"] <= 1
    assert induction.metrics["uniform_attention"] == pytest.approx(scores.uniform_baseline(16, 8))
    written = build_report([str(p) for p in files], tmp_path / "report")
    text = written["report.md"].read_text()
    assert "induction_score ↑" in text and "icl_score ↓" in text and "acc ↑" in text and TINY_FEWSHOT in text
    curves = load_curves(tmp_path / "run")
    np.testing.assert_array_equal(curves.tokens, [2 * 8 * 16, 4 * 8 * 16])
    blocks = icl_section([tmp_path / "run"], tmp_path / "plots")
    assert any(type(b).__name__ == "Figure" for b in blocks) and (tmp_path / "plots" / "induction_heads.png").is_file()
    out = tmp_path / "cli.json"
    assert icl_command(["--checkpoint", str(tmp_path / "run"), "--out", str(out), "probes=induction"]) == 0
    assert [r.task for r in load_results(out).results] == ["induction"]


def test_bad_probes_fail_before_training(tmp_path):
    run = _icl_run(tmp_path)
    for icl, message in (
        (ICLConfig(probes=("tinyshakespeare",)), "not a synthetic task"),
        (ICLConfig(probes=("linear_regression",)), "LinearRegression"),
        (ICLConfig(probes=("induction",)), "n_ctx=16"),  # repeat_tokens needs 64 tokens
        (ICLConfig(probes=(TINY_FEWSHOT,), shots=(8,)), "n_ctx=16"),
        (ICLConfig(probes=("icl_score",), late=17), "icl.late=17"),
    ):
        with pytest.raises(ConfigError, match=message):
            probes.check(icl, run.model, 16)
    with pytest.raises(ConfigError, match="icl.early"):
        ICLConfig(early=9, late=4)
