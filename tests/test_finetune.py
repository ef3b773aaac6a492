"""GPT-1 fine-tuning (gptjax/finetune): the input transformations token by token, the head's reading of the
extract state, the order/permutation properties of the similarity and multiple-choice heads, the exact
composition of L2 + λ·L1, the new vocabulary rows, real-task rows, learning above chance, and bitwise resume."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import config, train
from gptjax.config import ModelConfig, RunConfig
from gptjax.finetune.objective import class_logits, extended_model, finetune_objective, lm_loss_per_example
from gptjax.finetune.run import ExampleDataset, accuracy
from gptjax.finetune.tasks import TASKS, Task, load_examples
from gptjax.finetune.transforms import Example, SpecialTokens, encode_examples, transform
from gptjax.hooks import add_standard_hooks
from gptjax.plain_tokenizers import ByteTokenizer
from tests.requirements import need_data

BASE = ModelConfig(name="ft-test", vocab_size=257, n_ctx=48, n_layer=1, n_head=2, d_model=32)
SPECIAL = SpecialTokens.after(BASE.vocab_size)
S, D, E = 257, 258, 259
encode = ByteTokenizer().encode
CLASSIFY = Task("toy", "classify", 1, 3, parse=lambda row: Example(((row["text"],),), 0))
SIMILAR = Task("toy_sim", "similarity", 2, 3, parse=lambda row: Example(((row["a"], row["b"]),), 0))
CHOICE = Task("toy_mc", "choice", 3, 3, parse=lambda row: Example(((row["q"], row["a"]),), 0))


def make_run(weight: float = 0.5, dropout: float = 0.0, **overrides) -> RunConfig:
    run = RunConfig(
        model=extended_model(BASE),
        seq_len=16,
        batch_size=4,
        finetune=config.FinetuneConfig(task="toy", aux_lm_weight=weight, clf_dropout=dropout),
    )
    return config.override(run, ["steps=4", "optim.warmup_steps=1", *(f"{k}={v}" for k, v in overrides.items())])


def batch_of(task: Task, examples: list[Example], length: int = 16) -> dict[str, jax.Array]:
    return {
        k: jnp.asarray(v) for k, v in encode_examples(examples, encode, SPECIAL, length, task.num_sequences).items()
    }


def params_for(run: RunConfig, task: Task, seed: int = 0):
    return finetune_objective(run, task, None).init_params(jax.random.key(seed))


def test_transformations_are_token_exact():
    a, b, q = (ord(c) for c in "abq")
    single = encode_examples([Example((("ab",),), 2)], encode, SPECIAL, 8, 1)
    assert single["inputs"][0, 0].tolist() == [S, a, b, E, 0, 0, 0, 0]
    assert single["targets"][0, 0, :3].tolist() == [a, b, E]
    assert single["lm_mask"][0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert single["extract"].tolist() == [[3]] and single["label"].tolist() == [[2]]
    entail = encode_examples([Example((("ab", "q"),), 0)], encode, SPECIAL, 8, 1)
    assert entail["inputs"][0, 0].tolist() == [S, a, b, D, q, E, 0, 0]
    choice = encode_examples([Example((("q", "a"), ("q", "ab")), 1)], encode, SPECIAL, 8, 3)
    assert choice["inputs"][0].tolist() == [[S, q, D, a, E, 0, 0, 0], [S, q, D, a, b, E, 0, 0], [0] * 8]
    assert choice["extract"].tolist() == [[4, 5, 0]] and choice["sequence_mask"].tolist() == [[1, 1, 0]]
    # Too long: the first segment loses its start (its end, next to the delimiter, stays).
    assert transform([list(range(10)), [20, 21]], SPECIAL, 8) == [S, 7, 8, 9, D, 20, 21, E]
    assert transform([list(range(3)), list(range(30, 50))], SPECIAL, 8) == [S, 1, 2, D, 30, 31, 32, E]


def test_the_head_reads_the_extract_state_and_nothing_after_it():
    run = make_run()
    params = params_for(run, CLASSIFY)
    batch = batch_of(CLASSIFY, [Example((("hello",),), 0), Example((("a longer text",),), 1)])
    logits, features = class_logits(params, batch, CLASSIFY, run, None)
    states = features.reshape(2, 16, -1)[jnp.arange(2), batch["extract"][:, 0]]
    expected = states @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    # Tokens after ⟨e⟩ (padding) cannot change the prediction: the model is causal and the head reads ⟨e⟩.
    noisy = dict(batch, inputs=jnp.where(batch["inputs"] == 0, 123, batch["inputs"]))
    np.testing.assert_allclose(class_logits(params, noisy, CLASSIFY, run, None)[0], logits, rtol=1e-6, atol=1e-6)


def test_similarity_is_order_invariant():
    run = make_run()
    params = params_for(run, SIMILAR)
    ab = batch_of(SIMILAR, [Example((("first one", "second"), ("second", "first one")), 0)])
    ba = batch_of(SIMILAR, [Example((("second", "first one"), ("first one", "second")), 0)])
    left, right = class_logits(params, ab, SIMILAR, run, None)[0], class_logits(params, ba, SIMILAR, run, None)[0]
    np.testing.assert_allclose(left, right, atol=1e-6)
    assert left.shape == (1, 3)


def test_multiple_choice_probabilities_follow_a_permutation_of_the_choices():
    run = make_run()
    params = params_for(run, CHOICE)
    choices = ["red", "green apple", "blue"]
    order = [2, 0, 1]
    first = batch_of(CHOICE, [Example(tuple(("colour?", c) for c in choices), 0)])
    permuted = batch_of(CHOICE, [Example(tuple(("colour?", choices[i]) for i in order), 1)])
    p = jax.nn.softmax(class_logits(params, first, CHOICE, run, None)[0])
    q = jax.nn.softmax(class_logits(params, permuted, CHOICE, run, None)[0])
    np.testing.assert_allclose(q[0], p[0][np.array(order)], atol=1e-6)
    # An absent choice gets probability 0.
    two = batch_of(CHOICE, [Example(tuple(("colour?", c) for c in choices[:2]), 0)])
    assert float(jax.nn.softmax(class_logits(params, two, CHOICE, run, None)[0])[0, 2]) == 0.0


def test_lambda_zero_is_the_classification_loss_and_the_aux_term_is_the_lm_loss_of_the_sequence():
    examples = [Example((("one text",),), 0), Example((("another, longer",),), 2)]
    batch = batch_of(CLASSIFY, examples)
    run0, run_half = make_run(weight=0.0), make_run(weight=0.5)
    params = params_for(run0, CLASSIFY)
    total0, sums0 = finetune_objective(run0, CLASSIFY, None).loss_fn(params, batch, None)
    logits, features = class_logits(params, batch, CLASSIFY, run0, None)
    clf = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"][:, 0]).sum()
    assert float(total0) == float(clf) and "lm_loss" not in sums0
    total, sums = finetune_objective(run_half, CLASSIFY, None).loss_fn(params, batch, None)
    # L1 of each example is the pre-training loss (train.token_loss_sums) on its transformed sequence.
    per_example = []
    for i in range(2):
        row = {k: batch[k][i] for k in ("inputs", "targets")}
        lm_batch = {
            **row,
            "loss_mask": batch["lm_mask"][i],
            "segment_ids": jnp.ones_like(row["inputs"]),
            "positions": jnp.arange(16)[None],
        }
        s, c = train.token_loss_sums(params["gpt"], lm_batch, run_half, None)
        per_example.append(float(s / c))
    np.testing.assert_allclose(lm_loss_per_example(params, features, batch, run_half.model), per_example, rtol=1e-5)
    np.testing.assert_allclose(float(sums["lm_loss"]), sum(per_example), rtol=1e-5)
    np.testing.assert_allclose(float(total), float(clf) + 0.5 * sum(per_example), rtol=1e-6)


def test_special_tokens_are_new_rows_and_pretrained_rows_are_kept():
    from gptjax import model

    pretrained = model.init_params(BASE, jax.random.key(3))
    run = make_run()
    params = finetune_objective(run, CLASSIFY, pretrained).init_params(jax.random.key(0))
    wte = params["gpt"]["wte"]
    assert wte.shape == (BASE.vocab_size + 3, BASE.d_model)
    np.testing.assert_array_equal(wte[: BASE.vocab_size], pretrained["wte"])
    assert float(jnp.abs(wte[BASE.vocab_size :]).min()) > 0
    untied = dataclasses.replace(BASE, tie_embeddings=False)
    pre_untied = model.init_params(untied, jax.random.key(3))
    run_untied = dataclasses.replace(run, model=extended_model(untied))
    head = finetune_objective(run_untied, CLASSIFY, pre_untied).init_params(jax.random.key(0))["gpt"]["lm_head"]
    np.testing.assert_array_equal(head[:, : BASE.vocab_size], pre_untied["lm_head"])


def test_every_registered_task_reads_its_real_rows():
    (root,) = need_data("benchmarks")
    for task in TASKS.values():
        for split in ("train", "validation"):
            examples = load_examples(task, split, root, limit=50)
            assert len(examples) == 50
            for e in examples:
                assert 0 <= e.label < (len(e.sequences) if task.kind == "choice" else task.num_classes)
                assert len(e.sequences) <= task.num_sequences and all(all(seg for seg in s[:1]) for s in e.sequences)
    piqa = load_examples(TASKS["piqa"], "validation", root, limit=1)[0]
    assert piqa.sequences[0][0] == piqa.sequences[1][0]  # the goal is the shared context


def _corpus_source_data(n_per_class: int) -> tuple[list[Example], list[Example]]:
    """A real two-class task: is a line from Shakespeare or from Wikipedia (WikiText-2)?"""
    shakespeare, wiki = need_data("corpora/tinyshakespeare/input.txt", "corpora/wikitext-2-raw/wiki.test.raw")
    lines = [
        [line.strip()[:40] for line in path.read_text().splitlines() if len(line.strip()) > 30 and "=" not in line]
        for path in (shakespeare, wiki)
    ]
    examples = [
        Example(((text,),), label)
        for pair in zip(*(ls[: 2 * n_per_class] for ls in lines))
        for label, text in enumerate(pair)
    ]
    return examples[: 2 * n_per_class], examples[2 * n_per_class :]


def _trainer(run: RunConfig, task: Task, train_examples: list[Example], val: list[Example]) -> train.Trainer:
    splits = {"train": train_examples, "validation": val}
    arrays = {s: encode_examples(ex, encode, SPECIAL, run.sequence_length, 1) for s, ex in splits.items()}
    dataset = ExampleDataset(arrays, run.model.vocab_size, run.seed)
    return train.Trainer(run, dataset, objective=finetune_objective(run, task, None))


def test_a_tiny_model_learns_a_real_task_well_above_chance(tmp_path):
    task = Task("source", "classify", 1, 2, parse=lambda row: Example(((row["text"],),), 0))
    train_examples, val = _corpus_source_data(256)
    run = make_run(run_dir=str(tmp_path), steps=60, batch_size=16, seq_len=48, **{"optim.learning_rate": 3e-3})
    trainer = _trainer(run, task, train_examples, val)
    trainer.restore_or_init()
    trainer.train()
    result = accuracy(trainer, task, trainer.dataset.splits["validation"], 16)  # type: ignore[attr-defined]
    assert result["num_examples"] == 512
    assert result["acc"] > 0.65, result  # chance is 0.5 (balanced classes); 0.65 is 7 standard errors above


def test_a_finetuning_run_resumes_bitwise(tmp_path):
    task = Task("source", "classify", 1, 2, parse=lambda row: Example(((row["text"],),), 0))
    train_examples, val = _corpus_source_data(16)
    common = {"optim.decay_steps": 4, "checkpoint.every": 2, "seq_len": 32, "batch_size": 8}
    trainers, starts = [], []
    for directory, steps in [("a", 4), ("b", 2), ("b", 4)]:  # b: 2 steps, then resumed from its checkpoint
        trainer = _trainer(
            make_run(run_dir=str(tmp_path / directory), steps=steps, **common), task, train_examples, val
        )
        starts.append(trainer.restore_or_init())
        add_standard_hooks(trainer, progress=False)  # the checkpoint saver among them
        trainer.train()
        trainers.append(trainer)
    assert starts == [0, 0, 2]
    straight, resumed = trainers[0], trainers[2]
    for x, y in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):  # params, Adam moments, step
        np.testing.assert_array_equal(x, y)
