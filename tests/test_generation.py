"""Generation tasks: answer filters and majority vote, ROUGE/BLEU against hand-computed values and lm-eval,
decoding options through the eval path, GPT-2 / lm-eval prompt strings, and the synthetic addition formats."""

from __future__ import annotations

import dataclasses
import math

import jax
import jinja2
import pytest
import yaml

from tests.requirements import need_modules

lm_eval_metrics, lm_eval_filters, lm_eval_selection = need_modules(
    "lm_eval.api.metrics", "lm_eval.filters.extraction", "lm_eval.filters.selection"
)

from eval import arithmetic, cot, generation, text_metrics  # noqa: E402  (after the optional-package check)
from eval import metrics as M  # noqa: E402
from gptjax.config import ModelConfig  # noqa: E402
from gptjax.model import init_params  # noqa: E402
from gptjax.plain_tokenizers import ByteTokenizer  # noqa: E402

VOCAB = ByteTokenizer()  # 257 ids; the model below pads its vocabulary to 264, which must never be sampled
CFG = ModelConfig(vocab_size=264, n_ctx=128, n_layer=1, n_head=2, d_model=32, init_std=0.2)


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))


# ---------------------------------------------------------------------------------------------------------
# Filters and voting.

COT_TEXTS = [
    "She has 3 + 4 = 7 apples. The answer is 7.",
    "Total is 1,200 dollars.\n#### 1,200",
    "The answer is -12.5 and later The answer is 3.",
    "no number here",
    "#### 45.",  # the trailing period is dropped by normalisation
]


def test_filters_on_hand_made_strings():
    assert [cot.answer_is(t) for t in COT_TEXTS] == ["7", cot.FALLBACK, "-12.5", cot.FALLBACK, cot.FALLBACK]
    assert [cot.gsm8k_answer(t) for t in COT_TEXTS] == [cot.FALLBACK, "1200", cot.FALLBACK, cot.FALLBACK, "45"]
    assert cot.regex(r"(\d+)", group_select=-1)("a 1 b 22 c 333") == "333"
    assert cot.first_line("  Paris.\nLondon") == "Paris."
    assert cot.first_sentence("Le chat est noir. Il dort.\nX") == "Le chat est noir."
    assert cot.first_sentences(2)("One. Two!  Three? Four.") == "One. Two!"
    assert cot.pipeline(cot.first_line, cot.regex(r"(\d+)"))("x 5 y\n 6") == "5"


def test_regex_filter_equals_lm_evals_on_its_gsm8k_patterns():
    flexible = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
    for pattern, group in [(cot.GSM8K_PATTERN, 0), (cot.ANSWER_IS_PATTERN, 0), (flexible, -1)]:
        theirs = lm_eval_filters.RegexFilter(pattern, group_select=group).apply([COT_TEXTS], [{}])[0]
        assert [cot.regex(pattern, group)(t) for t in COT_TEXTS] == theirs


def test_majority_vote_counts_exactly_and_breaks_ties_by_first_occurrence():
    assert cot.majority_vote(["3", "5", "5", "3", "7"]) == ("3", 2)  # 3 and 5 tie; 3 was sampled first
    assert cot.majority_vote(["5", "3", "3", "5"]) == ("5", 2)
    assert cot.majority_vote(["x", cot.FALLBACK, cot.FALLBACK], ignore_fallback=False) == (cot.FALLBACK, 2)
    assert cot.majority_vote(["x", cot.FALLBACK, cot.FALLBACK], ignore_fallback=True) == ("x", 1)
    assert cot.majority_vote([cot.FALLBACK], ignore_fallback=True) == (cot.FALLBACK, 0)
    for votes in (["3", "5", "5", "3", "7"], ["a", "b", "c"], ["b", "a", "a", "b", "b"]):
        theirs = list(lm_eval_selection.MajorityVoteFilter().apply([votes], [{}]))[0]
        assert [cot.majority_vote(votes)[0]] == theirs
    with pytest.raises(ValueError):
        cot.majority_vote([])


# ---------------------------------------------------------------------------------------------------------
# ROUGE and BLEU.


def test_rouge_equals_hand_counts():
    # unigrams: 5 of 6 shared; bigrams: "the cat", "on the", "the mat" of 5; LCS "the cat on the mat" = 5.
    got = text_metrics.rouge("The cat sat on the mat.", ["the cat was on the mat"])
    assert got == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6}, abs=1e-12)
    # recall 2/4, precision 2/2 -> F = 2/3; the best reference is taken per metric
    best = text_metrics.rouge("cat mat", ["dog", "a cat on mat"])
    assert best["rouge1"] == pytest.approx(2 / 3) and best["rougeL"] == pytest.approx(2 / 3)


def test_bleu_equals_the_papers_formula_and_lm_eval():
    # Papineni et al.: geometric mean of modified n-gram precisions times the brevity penalty (1 here:
    # equal lengths). 1..4-gram matches 5/6, 3/5, 1/4, 0/3; sacreBLEU's exp smoothing makes the zero 1/(2*3).
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    items = [(["the cat was on the mat"], "the cat sat on the mat")]
    assert text_metrics.corpus_bleu(items) == pytest.approx(expected, rel=1e-9)
    # a shorter hypothesis: 4 words vs 6, brevity penalty exp(1 - 6/4); all n-grams match
    short = [(["the cat was on the mat"], "the cat was on")]
    assert text_metrics.corpus_bleu(short) == pytest.approx(100 * math.exp(1 - 6 / 4), rel=1e-9)
    corpus = items + short + [(["le chat dort", "un chat dort"], "le chat dort bien")]
    assert text_metrics.corpus_bleu(corpus) == pytest.approx(lm_eval_metrics.bleu([(r, p) for r, p in corpus]))
    value, stderr = M.aggregate("bleu", corpus, bootstrap_iters=100)
    assert value == text_metrics.corpus_bleu(corpus) and stderr is not None and stderr > 0


# ---------------------------------------------------------------------------------------------------------
# Decoding through the eval path.


def test_decoding_options_are_validated():
    for bad in (
        dict(method="greedy", top_k=2),
        dict(method="beam", temperature=0.5),
        dict(method="greedy", num_samples=4),
        dict(method="sample", temperature=0.0),
        dict(method="sample", num_beams=2),
        dict(method="nucleus"),
        dict(max_tokens=0),
    ):
        with pytest.raises(generation.GenerationError):
            generation.Decoding(**bad)


def test_sampling_seeds_top_k_one_and_beam_one_in_the_eval_path(params):
    contexts = ["12+34=", "7+8=", "100+1="]
    greedy = generation.generate(params, CFG, VOCAB, contexts, generation.Decoding(max_tokens=12), batch_size=4)
    assert [len(g) for g in greedy] == [1, 1, 1]
    sample = generation.Decoding("sample", max_tokens=12, temperature=1.5, seed=3, num_samples=4)
    first = generation.generate(params, CFG, VOCAB, contexts, sample, batch_size=4)
    assert first == generation.generate(params, CFG, VOCAB, contexts, sample, batch_size=4)
    assert [len(g) for g in first] == [4, 4, 4]
    assert len({s for g in first for s in g}) > 3, "independent samples at T=1.5 should differ"
    other = generation.generate(params, CFG, VOCAB, contexts, dataclasses.replace(sample, seed=4), batch_size=4)
    assert other != first
    top1 = generation.Decoding("sample", max_tokens=12, top_k=1, num_samples=2)
    assert generation.generate(params, CFG, VOCAB, contexts, top1, batch_size=4) == [g * 2 for g in greedy]
    beam1 = generation.Decoding("beam", max_tokens=12, num_beams=1)
    assert generation.generate(params, CFG, VOCAB, contexts, beam1, batch_size=4) == greedy


def test_evaluate_votes_and_scores_each_document(params):
    docs = [{"question": f"{a}+{b}", "answer": f"steps\n#### {a + b}"} for a, b in [(1, 2), (30, 4), (5, 5)]]
    decoding = generation.Decoding("sample", max_tokens=8, until=("\n",), temperature=2.0, num_samples=5)
    task = generation.gsm8k(docs, examples=docs[:1], decoding=decoding)
    # a filter that reads the first generated character, so the vote is over real, varied answers
    task = dataclasses.replace(task, extract=lambda text: text[:1] or cot.FALLBACK)
    result = generation.evaluate(params, CFG, VOCAB, task, bootstrap_iters=0, batch_size=8)
    assert result["decoding"]["num_samples"] == 5 and result["num_docs"] == 3
    for sample, doc in zip(result["samples"], docs):
        assert sample["prompt"].endswith(f"Question: {doc['question']}\nAnswer:")
        assert sample["answers"] == [g[:1] or cot.FALLBACK for g in sample["generations"]]
        assert (sample["answer"], sample["votes"]) == cot.majority_vote(sample["answers"], ignore_fallback=True)
        assert sample["exact_match"] == float(sample["answer"] == cot.gsm8k_answer(doc["answer"]))
    assert result["metrics"]["exact_match"] == pytest.approx(sum(s["exact_match"] for s in result["samples"]) / 3)


# ---------------------------------------------------------------------------------------------------------
# Prompt strings.


def test_gsm8k_prompts_equal_lm_evals_template():
    """lm-eval's gsm8k.yaml rendered with jinja (doc_to_text, target_delimiter " ", fewshot_delimiter "\\n\\n")."""
    path = lm_eval_metrics.__file__.replace("api/metrics.py", "tasks/gsm8k/gsm8k.yaml")
    with open(path) as f:
        spec = yaml.safe_load(f)
    text, target = (jinja2.Template(spec[k]) for k in ("doc_to_text", "doc_to_target"))
    docs = [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "What is 10 - 2?", "answer": "10 - 2 = 8\n#### 8"},
        {"question": "Half of 12?", "answer": "12 / 2 = 6\n#### 6"},
    ]
    shots, doc = docs[:2], docs[2]
    theirs = "".join(text.render(**e) + " " + target.render(**e) + "\n\n" for e in shots) + text.render(**doc)
    task = generation.gsm8k([doc], shots)
    assert task.prompt(doc) == theirs
    assert task.decoding.until == tuple(spec["generation_kwargs"]["until"])
    assert task.references(doc) == ["6"]


def test_gpt2_zero_shot_formats():
    article = {"article": "The council met on Monday. It voted to close the bridge.", "highlights": "Bridge closed."}
    tldr = generation.tldr_summarization([article])
    assert tldr.prompt(article) == "The council met on Monday. It voted to close the bridge.\nTL;DR:"
    assert (tldr.decoding.method, tldr.decoding.top_k, tldr.decoding.max_tokens) == ("sample", 2, 100)
    assert (
        tldr.extract(" The bridge shuts. Council agreed.\nMore. Even more.")
        == "The bridge shuts. Council agreed. More."
    )
    pairs = [{"en": "The cat.", "fr": "Le chat."}, {"en": "A dog.", "fr": "Un chien."}]
    mt = generation.translation(pairs[1:], pairs[:1])
    assert mt.prompt(pairs[1]) == "The cat. = Le chat.\nA dog. ="
    assert mt.extract(" Un chien. Il dort.") == "Un chien."
    qa = generation.question_answering(
        [{"question": "Capital of France?", "aliases": ["Paris", "paris city"]}],
        [{"question": "2+2?", "aliases": ["4"]}],
    )
    assert qa.prompt(qa.docs[0]) == "Q: 2+2?\nA: 4\n\nQ: Capital of France?\nA:"


# ---------------------------------------------------------------------------------------------------------
# Synthetic addition.


def test_addition_formats_are_correct_and_readable_back():
    assert arithmetic.example(357, 468, "plain") == "357+468=825\n"
    assert arithmetic.example(357, 468, "reversed") == "357+468=528\n"
    assert arithmetic.example(357, 468, "scratchpad") == "357+468=7+8+0=15,5+6+1=12,3+4+1=8|825\n"
    for a, b in arithmetic.problems(200, 4, seed=0):
        assert 1000 <= a <= 9999 and 1000 <= b <= 9999
        for fmt in arithmetic.FORMATS:
            line = arithmetic.example(a, b, fmt)
            assert set(line) <= set(arithmetic.ALPHABET)
            assert arithmetic.answer(fmt)(line[len(arithmetic.prompt(a, b)) :]) == str(a + b)
        steps = arithmetic.scratchpad(a, b).split(",")
        carry = 0
        for step, x, y in zip(steps, str(a)[::-1], str(b)[::-1]):
            assert step == f"{x}+{y}+{carry}={int(x) + int(y) + carry}"
            carry = (int(x) + int(y) + carry) // 10
    assert arithmetic.problems(5, 3, seed=1) == arithmetic.problems(5, 3, seed=1)
    assert arithmetic.answer("scratchpad")("1+2+0=3") == cot.FALLBACK
