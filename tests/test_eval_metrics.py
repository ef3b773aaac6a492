"""eval.metrics: the arithmetic of every metric and standard error, checked by hand and against lm-eval, and
the metric table that says how each one reads."""

from __future__ import annotations

import math

import pytest
from lm_eval.api import metrics as lm_metrics

from eval import metrics as M
from eval.registry import METRICS


def test_multiple_choice_acc_acc_norm_and_calibrated() -> None:
    # Choice 0 has the best total log-likelihood; per character, the long choice 1 wins.
    scores = M.multiple_choice([-4.0, -6.0, -9.0], [" ab", " abcdefghij", " abc"], gold=1)
    assert scores == {"pred": 0, "pred_norm": 1, "acc": 0.0, "acc_norm": 1.0}
    # Calibration: subtracting log P(choice | "Answer:") makes the a-priori unlikely choice 2 win.
    scores = M.multiple_choice(
        [-4.0, -6.0, -9.0], [" ab", " abcdefghij", " abc"], gold=2, calibration=[-1.0, -5.0, -12.0]
    )
    assert scores["pred_calibrated"] == 2 and scores["acc_calibrated"] == 1.0
    assert M.multiple_choice([-1.0, -1.0], [" a", " b"], gold=0)["pred"] == 0  # ties go to the first choice


def test_mean_stderr_is_sample_std_over_sqrt_n() -> None:
    xs = [1.0, 0.0, 1.0, 1.0]
    assert M.mean_stderr(xs) == pytest.approx(0.25)  # sample variance 0.75 / 3 -> std 0.5, / sqrt(4)
    assert M.mean_stderr(xs) == pytest.approx(lm_metrics.mean_stderr(xs))
    assert M.mean_stderr([1.0]) is None
    assert M.aggregate("acc", xs, bootstrap_iters=0) == (0.75, pytest.approx(0.25))


def test_perplexities_on_a_hand_example() -> None:
    # Two documents: log-likelihoods -6 and -2 nats over 2 and 1 words, 8 and 4 bytes.
    words = [(-6.0, 2), (-2.0, 1)]
    assert M.weighted_perplexity(words) == pytest.approx(math.exp(8 / 3))
    assert M.bits_per_byte([(-6.0, 8), (-2.0, 4)]) == pytest.approx(8 / 12 / math.log(2))
    assert M.perplexity([-2.0, -4.0]) == pytest.approx(math.exp(3.0))
    assert M.count_words("a b\nc ") == 4 and M.count_bytes("é") == 2  # lm-eval counts the trailing empty piece
    assert M.weighted_perplexity(words) == pytest.approx(lm_metrics.weighted_perplexity(words))
    assert M.bits_per_byte(words) == pytest.approx(lm_metrics.bits_per_byte(words))


def test_bootstrap_matches_lm_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")
    xs = [-float(i % 7) - 0.5 for i in range(50)]
    assert M.bootstrap_stderr(M.perplexity, xs, 2000) == pytest.approx(
        lm_metrics.bootstrap_stderr(lm_metrics.perplexity, xs, 2000), rel=1e-12
    )
    value, stderr = M.aggregate("perplexity", xs, bootstrap_iters=1000)
    assert value == pytest.approx(lm_metrics.perplexity(xs)) and stderr > 0
    assert M.aggregate("word_perplexity", [(-3.0, 2)], bootstrap_iters=1000)[1] is None  # one document


def test_exact_match_normalisation_matches_lm_eval() -> None:
    references = ["The Beatles", "Beatles", "U.S.A."]
    options = {"ignore_case": True, "ignore_punctuation": True}
    for prediction, expected in [
        ("the beatles", 1.0),
        ("Beatles!", 1.0),
        ("usa", 1.0),
        ("Beatle", 0.0),
        (" beatles", 0.0),
    ]:
        assert M.exact_match(prediction, references, **options) == expected
        theirs = lm_metrics.exact_match_hf_evaluate([prediction] * 3, references, **options)["exact_match"]
        assert expected == float(theirs > 0)
    assert M.exact_match("Beatles", references) == 1.0 and M.exact_match("beatles", references) == 0.0


def test_f1_uses_triviaqa_normalisation() -> None:
    assert M.normalize_answer("The  Beatles'_song!") == "beatles song"
    assert M.token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert M.max_f1("Paris, France", ["London", "Paris"]) == pytest.approx(2 / 3)
    assert M.max_f1("", ["Paris"]) == 0.0
    assert M.aggregate("f1", [1.0, 0.5, 0.0], bootstrap_iters=0) == (0.5, pytest.approx(0.5 / math.sqrt(3)))


def test_metric_table_says_how_each_metric_reads() -> None:
    acc, ppl = M.metric_info("acc_norm"), M.metric_info("word_perplexity")
    assert (acc.higher_is_better, acc.percentage, acc.bootstrap) == (True, True, False)
    assert (ppl.higher_is_better, ppl.percentage, ppl.bootstrap) == (False, False, True)
    assert ppl.aggregate is M.weighted_perplexity
    # A name nobody registered (a results file from elsewhere): higher is better, shown as is.
    other = M.metric_info("chrf")
    assert "chrf" not in M.METRICS_BY_NAME and other.higher_is_better and not other.percentage
    # Every metric a task definition may ask for is declared.
    assert {name for names in METRICS.values() for name in names} <= M.METRICS_BY_NAME.keys()


def test_a_metric_is_declared_once_and_only_declared_metrics_aggregate() -> None:
    acc = M.metric_info("acc")
    assert M.register_metric(acc) is acc  # the same declaration again is a no-op
    with pytest.raises(ValueError, match="metric 'acc' is already registered"):
        M.register_metric(M.Metric("acc", M.mean, bootstrap=False, higher_is_better=False, percentage=True))
    with pytest.raises(ValueError, match="unknown metric 'chrf'; registered: acc, acc_norm"):
        M.aggregate("chrf", [1.0, 0.0], bootstrap_iters=0)
