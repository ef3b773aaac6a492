"""Generation tasks: answer filters and majority vote, ROUGE/BLEU against hand-computed values and lm-eval,
decoding options through the eval path, GPT-2 / lm-eval prompt strings, and the synthetic addition formats."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jinja2
import pytest
import yaml

from tests.requirements import need_modules

lm_eval_metrics, lm_eval_filters, lm_eval_selection, lm_eval_filters_api = need_modules(
    "lm_eval.api.metrics", "lm_eval.filters.extraction", "lm_eval.filters.selection", "lm_eval.filters"
)

from eval import arithmetic, cot, generation, text_metrics  # noqa: E402  (after the optional-package check)
from eval import metrics as M  # noqa: E402
from eval.gptjax_lm import GptjaxLM  # noqa: E402
from eval.lm import ModelInfo  # noqa: E402
from eval.registry import TaskError, TaskSpec, get_spec, spec_from_dict  # noqa: E402
from eval.runner import evaluate  # noqa: E402
from eval.task import Task  # noqa: E402
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


def test_a_missing_metric_library_fails_only_the_tasks_that_use_it(monkeypatch):
    """Without the hf extra (no rouge-score), the built-in multiple-choice tasks still load (the default
    sweep's few-shot hook asks for copa), and a ROUGE task fails by name before any model loads."""
    real = text_metrics.importlib.util.find_spec
    monkeypatch.setattr(
        text_metrics.importlib.util, "find_spec", lambda name, *a: None if name == "rouge_score" else real(name, *a)
    )
    assert get_spec("copa").task == "copa" and Task("piqa").spec.task == "piqa"
    with pytest.raises(text_metrics.MissingMetricPackage, match="metric rouge1 needs the rouge-score package"):
        get_spec("tldr_cnn_dailymail")


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


def test_evaluate_votes_and_scores_each_document(params):
    docs = [{"question": f"{a}+{b}", "answer": f"steps\n#### {a + b}"} for a, b in [(1, 2), (30, 4), (5, 5)]]
    decoding = generation.Decoding("sample", max_tokens=8, until=("\n",), temperature=2.0, num_samples=5)
    task = generation.gsm8k(docs, examples=docs[:1], decoding=decoding)
    # a filter that reads the first generated character, so the vote is over real, varied answers
    task = dataclasses.replace(task, extract=lambda text: text[:1] or cot.FALLBACK)
    result = generation.evaluate(params, CFG, VOCAB, task, bootstrap_iters=0, batch_size=8)
    assert generation.evaluate(params, CFG, VOCAB, task, bootstrap_iters=0, batch_size=8) == result  # fixed seed
    assert len({g for s in result["samples"] for g in s["generations"]}) > 5, "independent samples at T=2 differ"
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
    assert [arithmetic.target(357, 468, "multipath", v) for v in range(3)] == [
        "7+8+0=15,5+6+1=12,3+4+1=8|825",
        "357+400=757,757+60=817,817+8=825|825",
        "468+300=768,768+50=818,818+7=825|825",
    ]
    for a, b in arithmetic.problems(200, 4, seed=0):
        assert 1000 <= a <= 9999 and 1000 <= b <= 9999
        for fmt in arithmetic.FORMATS:
            for variant in range(arithmetic.N_VARIANTS[fmt]):
                line = arithmetic.example(a, b, fmt, variant)
                assert set(line) <= set(arithmetic.ALPHABET)
                assert arithmetic.answer(fmt)(line[len(arithmetic.prompt(a, b)) :]) == str(a + b)
        steps = arithmetic.scratchpad(a, b).split(",")
        carry = 0
        for step, x, y in zip(steps, str(a)[::-1], str(b)[::-1]):
            assert step == f"{x}+{y}+{carry}={int(x) + int(y) + carry}"
            carry = (int(x) + int(y) + carry) // 10
    assert arithmetic.problems(5, 3, seed=1) == arithmetic.problems(5, 3, seed=1)
    assert arithmetic.answer("scratchpad")("1+2+0=3") == cot.FALLBACK


# ---------------------------------------------------------------------------------------------------------
# Task YAMLs: decoding options, lm-eval filter pipelines and self-consistency through eval.runner.

LM_EVAL_GSM8K = Path(lm_eval_metrics.__file__).parent.parent / "tasks" / "gsm8k"
GSM8K_DOCS = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}.\n#### {a + b}"} for a, b in
              [(1, 2), (3, 4), (10, 5), (2, 2), (6, 1), (7, 7), (20, 1), (8, 3)]]  # fmt: skip


class ScriptedLM:
    """A LanguageModel answering its i-th generation request (in the order sent) with `script[i]`, or every
    request with the same text."""

    info = ModelInfo("scripted", params=1, non_embedding_params=1)
    tokenizer_name, max_length = "none", 2048

    def __init__(self, script: list[str] | str) -> None:
        self.script, self.requests = script, []

    def generate_until(self, requests):
        self.requests += requests
        if isinstance(self.script, str):
            return [self.script] * len(requests)
        assert len(requests) == len(self.script)
        return list(self.script)


def _gsm8k_files(tmp_path: Path) -> dict[str, str]:
    files = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    for split, docs in (("train", GSM8K_DOCS[:6]), ("test", GSM8K_DOCS[6:])):
        files[split].write_text("".join(json.dumps(d) + "\n" for d in docs))
    return {split: str(path) for split, path in files.items()}


def _lm_eval_yaml(tmp_path: Path, name: str, **changes) -> Path:
    """lm-eval's own gsm8k task YAML (`name`, with keys of `changes` replaced) reading the local JSONL files."""
    raw = yaml.safe_load((LM_EVAL_GSM8K / name).read_text())
    if "include" in raw:  # gsm8k-cot's examples are a fixed list (fewshot_config), so keep gsm8k's prompt
        raw = yaml.safe_load((LM_EVAL_GSM8K / "gsm8k.yaml").read_text()) | raw
        del raw["include"]
    raw |= {"dataset_path": "json", "dataset_kwargs": {"data_files": _gsm8k_files(tmp_path)}} | changes
    del raw["dataset_name"]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _lm_eval_filtered(filter_list: list[dict], responses: list[list[str]]) -> dict[str, list[str]]:
    """lm-eval's own FilterEnsembles applied to each document's responses."""
    out = {}
    for entry in filter_list:
        components = [(f["function"], {k: v for k, v in f.items() if k != "function"}) for f in entry["filter"]]
        resps = [list(r) for r in responses]
        for f in lm_eval_filters_api.build_filter_ensemble(entry["name"], components).filters:
            resps = list(f().apply(resps, [{}] * len(responses)))
        out[entry["name"]] = resps
    return out


def test_lm_evals_gsm8k_yaml_runs_with_both_filter_pipelines(tmp_path):
    path = _lm_eval_yaml(tmp_path, "gsm8k.yaml")
    script = ["20 + 1 = 21.\n#### 21", "8 + 3 is 11, so 11."]  # strict: 21 and [invalid]; flexible: 21 and 11.
    lm = ScriptedLM(script)
    result = evaluate(lm, [path], bootstrap_iters=0)["results"][0]
    assert [r.until for r in lm.requests] == [("Question:", "</s>", "<|im_end|>")] * 2
    assert all(r.options == () for r in lm.requests)  # do_sample false, temperature 0: greedy
    assert lm.requests[0].context.count("Question:") == 6  # num_fewshot 5, then the document
    assert result["filters"]["strict-match"]["exact_match"] == 0.5 == result["metrics"]["exact_match"]
    assert result["filters"]["flexible-extract"]["exact_match"] == 1.0  # "11." less the ignored "\\.$" is 11
    theirs = _lm_eval_filtered(get_spec(path).filter_list, [[s] for s in script])
    assert [s["by_filter"][name]["prediction"] for name in theirs for s in result["samples"]] == [
        a for name in theirs for a in theirs[name]
    ]


def test_self_consistency_yaml_votes_exactly_as_lm_eval(tmp_path):
    """lm-eval's gsm8k-cot-self-consistency (64 sampled paths; score-first, maj@64, maj@8) on two documents."""
    path = _lm_eval_yaml(tmp_path, "gsm8k-cot-self-consistency.yaml")
    spec = get_spec(path)
    assert (spec.repeats, spec.decoding.method, spec.decoding.temperature) == (64, "sample", 0.2)
    answer = "Thus: The answer is {}."
    # doc 21: the first path is wrong, 40 of 64 say 21 (maj@64 right), the first 8 say 22 x5, 21 x3 (maj@8 wrong)
    doc1 = [answer.format(22)] * 5 + [answer.format(21)] * 3 + [answer.format(21)] * 37 + ["no answer"] * 19
    # doc 11: the first path is right; unparsable paths ([invalid]) outvote it over 64 but not over the first 8
    doc2 = [answer.format(11)] * 4 + ["I do not know"] * 4 + ["I do not know"] * 30 + [answer.format(11)] * 26
    lm = ScriptedLM(doc1 + doc2)
    result = evaluate(lm, [path], bootstrap_iters=0)["results"][0]
    keys = {r.options for r in lm.requests}
    assert keys == {(("method", "sample"), ("seed", 0), ("temperature", 0.2), ("top_k", None), ("top_p", None))}
    got = {name: values["exact_match"] for name, values in result["filters"].items()}
    assert got == {"score-first": 0.5, "maj@64": 0.5, "maj@8": 0.5}
    assert [s["by_filter"]["maj@64"]["prediction"] for s in result["samples"]] == ["21", cot.FALLBACK]
    assert [s["by_filter"]["maj@8"]["prediction"] for s in result["samples"]] == ["22", "11"]
    assert result["samples"][0]["generations"] == doc1 and result["decoding"]["num_samples"] == 64
    theirs = _lm_eval_filtered(spec.filter_list, [doc1, doc2])
    assert {n: [s["by_filter"][n]["prediction"] for s in result["samples"]] for n in theirs} == theirs


SAMPLE4 = {"repeats": 4, "generation_kwargs": {"do_sample": True}}


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"generation_kwargs": {"temperature": 0.7}}, r"\['temperature'\] need do_sample: true"),
        ({"generation_kwargs": {"top_k": 5}}, r"\['top_k'\] need do_sample: true"),
        ({"generation_kwargs": {"do_sample": True, "top_k": 0}}, "top_k=0 must be >= 1"),
        ({"generation_kwargs": {"do_sample": True, "top_p": 1.5}}, r"top_p=1.5 must be in \(0, 1\]"),
        ({"generation_kwargs": {"do_sample": "yes"}}, "do_sample must be true or false"),
        ({"generation_kwargs": {"do_sample": True, "num_beams": 4}}, "beam search .* excludes do_sample"),
        ({"generation_kwargs": {"max_new_tokens": 5}}, r"unknown generation_kwargs \['max_new_tokens'\]"),
        ({"generation_kwargs": {"max_gen_toks": 0}}, "max_gen_toks must be >= 1"),
        ({"generation_kwargs": {"until": 3}}, "until must be a string or a list of strings"),
        ({"repeats": 0}, "repeats must be a positive integer"),
        ({"repeats": 4}, "repeats 4 needs do_sample: true"),
        ({"filter_list": [{"name": "x", "filter": [{"function": "vote"}]}]}, r"\(x\) filter\[0\]: function 'vote'"),
        (
            {"filter_list": [{"name": "x", "filter": [{"function": "regex", "pattern": "a"}]}]},
            r"no options \['pattern'",
        ),
        (SAMPLE4 | {"filter_list": [{"name": "x", "filter": [{"function": "take_first_k", "k": 5}]}]}, "k=5 needs"),
        (SAMPLE4 | {"filter_list": [{"name": "x", "filter": [{"function": "regex"}]}]}, r"\(x\) leaves 4 responses"),
    ],
)
def test_bad_decoding_options_name_the_key_and_the_file(tmp_path, keys, message):
    path = tmp_path / "task.yaml"
    base = {"task": "t", "test_split": "test", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}"}
    path.write_text(yaml.safe_dump(base | keys))
    with pytest.raises(TaskError, match=f"{path}: .*{message}"):
        get_spec(path)


@pytest.fixture(scope="module")
def byte_lm(params):
    """The module's model without its 7 padding rows of the (tied) embedding: GptjaxLM needs the tokenizer's size."""
    return GptjaxLM(
        {**params, "wte": params["wte"][: VOCAB.vocab_size]}, dataclasses.replace(CFG, vocab_size=257), VOCAB
    )


def test_task_path_seeds_top_k_one_and_beam_one(tmp_path, byte_lm):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"q": q, "a": "x"}) + "\n" for q in ["12+34=", "7+8=", "100+1=", "5"]))

    def spec(name: str, repeats: int = 1, **kwargs) -> TaskSpec:
        return spec_from_dict(
            {"task": name, "data_files": {"test": str(docs)}, "test_split": "test", "doc_to_text": "{{q}}",
             "doc_to_target": "a", "repeats": repeats, "generation_kwargs": {"until": [], "max_gen_toks": 6} | kwargs}
        )  # fmt: skip

    tasks = [
        spec("greedy"),
        spec("sample", 3, do_sample=True, temperature=1.5, seed=3),
        spec("again", 3, do_sample=True, temperature=1.5, seed=3),
        spec("other_seed", 3, do_sample=True, temperature=1.5, seed=4),
        spec("top_k_1", 2, do_sample=True, top_k=1),
        spec("beam_1", num_beams=1, length_penalty=0.0),
    ]
    results = {r["task"]: r["samples"] for r in evaluate(byte_lm, tasks, bootstrap_iters=0)["results"]}
    paths = {name: [s.get("generations", [s["generation"]]) for s in samples] for name, samples in results.items()}
    greedy = paths["greedy"]
    assert all(len(g[0]) > 0 for g in greedy)
    assert paths["sample"] == paths["again"] and paths["sample"] != paths["other_seed"]
    assert len({p for doc in paths["sample"] for p in doc}) > 4, "independent samples at T=1.5 differ"
    assert paths["top_k_1"] == [g * 2 for g in greedy]
    assert paths["beam_1"] == greedy


def test_gpt2_format_tasks_read_tfds(tmp_path):
    """The built-in TL;DR and en=fr tasks over TFDS (mocked: random text, nothing downloaded)."""
    (tfds,) = need_modules("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        mt, tldr = (Task(name) for name in ("translation_wmt14_en_fr", "tldr_cnn_dailymail"))
        docs, examples, articles = mt.eval_docs(), mt.fewshot_docs(), tldr.eval_docs()
        lm = ScriptedLM(" Le chat dort. Il est noir.\nThe cat")
        results = evaluate(lm, [mt], shots=[2], bootstrap_iters=0)["results"]  # the mock has 3 examples
        results += evaluate(lm, [tldr], bootstrap_iters=0)["results"]
    assert set(docs[0]) == {"en", "fr"} and set(articles[0]) >= {"article", "highlights"}
    contexts = [r.context for r in lm.requests]
    shots = [examples[i] for i in results[0]["samples"][0]["fewshot_ids"]]
    assert contexts[0] == "".join(f"{e['en']} = {e['fr']}\n" for e in shots) + f"{docs[0]['en']} ="
    assert contexts[3] == f"{articles[0]['article']}\nTL;DR:"
    assert [r.options for r in lm.requests[3:]] == [tldr.spec.decoding.request_options()] * 3
    assert dict(lm.requests[3].options)["top_k"] == 2 and lm.requests[3].max_gen_toks == 100
    assert [s["prediction"] for s in results[0]["samples"]] == ["Le chat dort."] * 3
    bleu = text_metrics.corpus_bleu([([d["fr"]], "Le chat dort.") for d in docs])
    assert results[0]["metrics"]["bleu"] == pytest.approx(bleu)
    rouge = [text_metrics.rouge("Le chat dort. Il est noir. The cat", [a["highlights"]]) for a in articles]
    for metric in text_metrics.ROUGE_TYPES:
        assert results[1]["metrics"][metric] == pytest.approx(sum(r[metric] for r in rouge) / 3)
