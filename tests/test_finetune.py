"""GPT-1 fine-tuning (gptjax/finetune): the input transformations token by token, the head's reading of the
extract state, the order/permutation properties of the similarity and multiple-choice heads, the exact
composition of L2 + λ·L1, the new vocabulary rows, real-task rows, learning above chance, and bitwise resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eval.report import build_report, load_results
from gptjax import cli, config, hf, model, train
from gptjax.checkpoint import Checkpointer
from gptjax.config import ModelConfig, RunConfig
from gptjax.finetune.objective import class_logits, extended_model, finetune_objective, lm_loss_per_example
from gptjax.finetune.run import ExampleDataset, accuracy, results_file
from gptjax.finetune.tasks import TASKS, Task, load_examples
from gptjax.finetune.transforms import Example, SpecialTokens, encode_examples, transform
from gptjax.hooks import CheckpointSaver
from gptjax.plain_tokenizers import ByteTokenizer
from gptjax.rundir import RunDir
from tests.requirements import need_data, need_modules

BASE = ModelConfig(name="ft-test", vocab_size=257, n_ctx=48, n_layer=1, n_head=2, d_model=32)
SPECIAL = SpecialTokens.after(BASE.vocab_size)
S, D, E = 257, 258, 259
encode = ByteTokenizer().encode
CLASSIFY = Task("toy", "classify", 1, 3, parse=lambda row: Example(((row["text"],),), 0))
SIMILAR = Task("toy_sim", "similarity", 2, 3, parse=lambda row: Example(((row["a"], row["b"]),), 0))
CHOICE = Task("toy_mc", "choice", 3, 3, parse=lambda row: Example(((row["q"], row["a"]),), 0))
SOURCE = Task("source", "classify", 1, 2, parse=lambda row: Example(((row["text"],),), 0))


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
    train_examples, val = _corpus_source_data(256)
    run = make_run(run_dir=str(tmp_path), steps=60, batch_size=16, seq_len=48, **{"optim.learning_rate": 3e-3})
    trainer = _trainer(run, SOURCE, train_examples, val)
    trainer.restore_or_init()
    trainer.train()
    result = accuracy(trainer, SOURCE, trainer.dataset.splits["validation"], 16)  # type: ignore[attr-defined]
    assert result["num_examples"] == 512
    assert result["acc"] > 0.65, result  # chance is 0.5 (balanced classes); 0.65 is 7 standard errors above


def _resume_trainer(run_dir: str) -> tuple[train.Trainer, int]:
    """The resume test's run (4 steps, a checkpoint every 2, dropout in the head on), restored or initialised."""
    train_examples, val = _corpus_source_data(16)
    overrides = {"checkpoint.every": 2, "seq_len": 32, "batch_size": 8}
    trainer = _trainer(make_run(dropout=0.1, run_dir=run_dir, **overrides), SOURCE, train_examples, val)
    start = trainer.restore_or_init()
    trainer.add_hook(CheckpointSaver(trainer), every=2)
    return trainer, start


def run_until_killed(run_dir: str) -> None:
    """In a child process: train, and SIGKILL this process during step 3, once step 2's checkpoint is on disk."""
    trainer, _ = _resume_trainer(run_dir)

    def kill(info: train.StepInfo) -> None:
        if info.step == 3:
            trainer.checkpointer.wait()
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.add_hook(kill, every=1)
    trainer.train()


def test_a_finetuning_run_resumes_bitwise_after_a_kill(tmp_path):
    child = f"from tests.test_finetune import run_until_killed; run_until_killed({str(tmp_path / 'b')!r})"
    killed = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parents[1], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    (straight, start_a), (resumed, start_b) = _resume_trainer(str(tmp_path / "a")), _resume_trainer(str(tmp_path / "b"))
    assert (start_a, start_b) == (0, 2)
    resumed.step_fn = straight.step_fn  # the same program (same config and shardings): one compile, not two
    straight.train(), resumed.train()
    for x, y in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):  # params, Adam moments, step
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def head_trained(tmp_path_factory):
    """(parameters before, trainer after) 2 steps of finetune.trainable=head on an untied model."""
    tmp_path = tmp_path_factory.mktemp("head")
    untied = dataclasses.replace(BASE, tie_embeddings=False)
    run = make_run(
        run_dir=str(tmp_path), steps=2, batch_size=8, **{"finetune.trainable": "head", "optim.learning_rate": 1e-2}
    )
    # Weight decay on everything: frozen parameters must not decay either.
    run = config.override(
        dataclasses.replace(run, model=extended_model(untied)),
        ["optim.decay_embeddings=true", "optim.decay_biases_and_norms=true"],
    )
    examples = [Example(((f"text number {i}",),), i % 3) for i in range(8)]
    trainer = _trainer(run, CLASSIFY, examples, examples)
    trainer.restore_or_init()
    before = jax.tree.map(np.asarray, trainer.current_state().params)
    trainer.train()
    return before, trainer


def test_head_only_training_leaves_every_pretrained_parameter_bitwise_unchanged(head_trained):
    before, trainer = head_trained
    after = jax.tree.map(np.asarray, trainer.current_state().params)
    v = BASE.vocab_size
    for path, x in jax.tree_util.tree_leaves_with_path(before["gpt"]):
        y = after["gpt"]
        for key in path:
            y = y[key.key]
        name = path[-1].key
        if name == "wte":
            np.testing.assert_array_equal(y[:v], x[:v])
            assert (y[v:] != x[v:]).all(axis=1).any(), "the new rows train"
        elif name == "lm_head":
            np.testing.assert_array_equal(y[:, :v], x[:, :v])
            assert (y[:, v:] != x[:, v:]).any(), "the new columns train"
        else:
            np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))
    assert all((a != b).any() for a, b in zip(jax.tree.leaves(before["head"]), jax.tree.leaves(after["head"])))


def test_paper_schedule_is_linear_warmup_then_linear_decay_and_the_head_has_dropout():
    def dropout(p: float) -> bool:
        return finetune_objective(make_run(dropout=p), CLASSIFY, None).dropout

    assert dropout(0.1) and not dropout(0.0)
    run = make_run(steps=1000, **{"optim.schedule": "linear", "optim.warmup_steps": 2, "optim.min_lr_ratio": 0})
    lr = train.learning_rate_schedule(run)
    peak = run.optim.learning_rate
    values = [float(lr(s)) for s in (0, 1, 2, 501, 1000, 1200)]
    np.testing.assert_allclose(values, [0, peak / 2, peak, peak / 2, 0, 0], rtol=1e-6, atol=1e-12)


def test_hf_export_of_a_finetuned_run_carries_the_new_tokens(tmp_path):
    (bpe,) = need_data("tokenizers/gpt2")
    base = dataclasses.replace(BASE, vocab_size=50257)
    run = dataclasses.replace(make_run(run_dir=str(tmp_path / "ft"), batch_size=8), model=extended_model(base))
    run = config.override(run, ["data.vocab=gpt2"])
    state = train.init_state(
        run,
        train.make_optimizer(run),
        jax.random.key_data(jax.random.key(0)),
        objective=finetune_objective(run, CLASSIFY, None),
    )
    RunDir(run.run_dir).write_config(run)
    checkpointer = Checkpointer(RunDir(run.run_dir).checkpoints_dir)
    checkpointer.save(0, state)
    checkpointer.wait()
    checkpointer.close()
    out = tmp_path / "hf"
    assert cli.main(["hf-export", "--run-dir", run.run_dir, "--out", str(out), "--tokenizer-dir", str(bpe)]) == 0
    cfg, imported = hf.import_hf(out)
    assert cfg.vocab_size == 50260
    tokens = jnp.array([[50257, 464, 3290, 50258, 318, 50259]])
    np.testing.assert_allclose(
        model.forward(imported, tokens, cfg),
        model.forward(state.params["gpt"], tokens, run.model),
        rtol=1e-5,
        atol=1e-6,
    )
    (transformers,) = need_modules("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 50260
    assert tokenizer.convert_tokens_to_ids(["_start_", "_delimiter_", "_classify_"]) == [50257, 50258, 50259]


def test_report_shows_the_finetuned_model_beside_zero_and_few_shot_results(tmp_path, head_trained):
    _, trainer = head_trained
    metrics = accuracy(trainer, CLASSIFY, trainer.dataset.splits["validation"], 8)  # type: ignore[attr-defined]
    finetuned = tmp_path / "finetuned.json"
    finetuned.write_text(json.dumps(results_file(trainer, CLASSIFY, metrics, trainer.dataset)))  # type: ignore[arg-type]
    fewshot = {
        "model": {"name": "ft-test", "params": 20000, "non_embedding_params": 12000, "checkpoint": None, "step": 9},
        "tokenizer": "byte",
        "created": "2026-12-01T00:00:00+00:00",
        "gptjax_version": "0",
        "results": [
            {
                "task": "toy",
                "split": "validation",
                "num_fewshot": k,
                "fewshot_split": "train" if k else "",
                "seed": 1234,
                "num_docs": 8,
                "metrics": {"acc": acc, "acc_stderr": 0.1},
                "example_prompt": "text",
            }
            for k, acc in ((0, 0.25), (4, 0.375))
        ],
    }
    (tmp_path / "fewshot.json").write_text(json.dumps(fewshot))
    run = load_results(finetuned)
    assert run.name == "ft-test fine-tuned on toy" and run.step == 2
    assert run.results[0].metrics == {"acc": metrics["acc"], "acc_stderr": metrics["acc_stderr"]}
    build_report([tmp_path / "fewshot.json", finetuned], tmp_path / "report")
    rows = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("| toy")]
    zero_shot, few_shot = (next(r for r in rows if f"| {k} |" in r) for k in (0, 4))
    assert "25.0" in zero_shot and f"{100 * metrics['acc']:.1f}" in zero_shot  # the same row: K = 0, both models
    assert "37.5" in few_shot and "—" in few_shot  # the fine-tuned model has no few-shot result
