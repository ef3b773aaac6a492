"""The data pipeline: seqio tasks, packing, the cache and the deterministic order of rows. All offline."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from gptjax.config import ConfigError, DataConfig
from gptjax.data import cache, get_task, make_dataset, packing, register_mixture, register_text_task, sampling
from gptjax.paths import data_path

EOS = 256  # the byte vocabulary's <|endoftext|>
KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def _text_task(tmp_path: Path, text: str, name: str = "", **kwargs) -> str:
    """Register a fresh corpus-file task (names are global in seqio, so each test uses new ones)."""
    name = name or f"t_{uuid.uuid4().hex[:10]}"
    path = tmp_path / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    register_text_task(name, path, **kwargs)
    return name


def _cached(cache_dir: Path, pattern: str) -> np.ndarray:
    (path,) = cache_dir.glob(pattern)
    return np.load(path)


@pytest.fixture(scope="module")
def shakespeare_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def shakespeare(shakespeare_cache):
    return make_dataset(DataConfig(task="tinyshakespeare", seed=3), 64, shakespeare_cache)


# -- packing ------------------------------------------------------------------------------------------------


def test_packing_exact_rows(tmp_path):
    # Documents "ab", "cde", "f", "gh"; the last 20% of documents ("gh") is validation. seq_len 4, so rows
    # are 5-token slices of the stream  a b E c d | e E f E  (the second one short, hence padded).
    name = _text_task(tmp_path, "ab|cde|f|gh", separator=r"\|", validation_fraction=0.2)
    ds = make_dataset(DataConfig(task=name), 4, tmp_path / "cache")
    a, b, c, d, e, f = (ord(ch) for ch in "abcdef")
    assert ds.num_tokens("train") == 9 and ds.num_rows("train") == 2
    assert ds.num_tokens("validation") == 3  # "gh" + EOS
    (batch,) = ds.eval_batches(batch_size=3, max_batches=5, split="train")
    expected = {
        "inputs": [[a, b, EOS, c], [e, EOS, f, EOS], [0, 0, 0, 0]],
        "targets": [[b, EOS, c, d], [EOS, f, EOS, 0], [0, 0, 0, 0]],
        # The EOS ending a document is a target inside it and, as an input, opens the next segment.
        "segment_ids": [[1, 1, 2, 2], [1, 2, 2, 3], [0, 0, 0, 0]],
        "positions": [[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]],
        "loss_mask": [[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]],  # padding targets and rows are masked
    }
    for key in KEYS:
        np.testing.assert_array_equal(batch[key], np.array(expected[key]), err_msg=key)
        assert batch[key].dtype == (np.float32 if key == "loss_mask" else np.int32)


def test_num_rows_needs_a_real_target():
    assert packing.num_rows(10, 4) == 2  # 5 + 5
    assert packing.num_rows(11, 4) == 2  # a last row of one token has nothing to predict
    assert packing.num_rows(12, 4) == 3


# -- determinism --------------------------------------------------------------------------------------------


def test_sampling_is_pinned():
    """Golden values: the order must not change with processes, restarts or NumPy versions."""
    assert sampling.permutation(0, "order:x", 0, 10).tolist() == [6, 8, 4, 9, 1, 5, 3, 2, 0, 7]
    np.testing.assert_allclose(
        sampling.uniform(0, "mixture", 5, np.arange(3)), [0.30346508904362723, 0.07220890719365092, 0.33032746224000675]
    )


def test_batch_is_a_pure_function_of_seed_and_step(shakespeare, tmp_path):
    other = make_dataset(DataConfig(task="tinyshakespeare", seed=3), 64, tmp_path)
    for step in (0, 1, 57, 10_000):
        full, again = shakespeare.batch(step, 16), other.batch(step, 16)
        for key in KEYS:
            np.testing.assert_array_equal(full[key], again[key])
        for rows in (np.arange(4), np.arange(4, 16), [5], [0, 1, 8, 9], [15, 3, 7]):  # any rows, in any order
            part = shakespeare.batch(step, 16, rows=rows)
            for key in KEYS:
                np.testing.assert_array_equal(part[key], full[key][rows], err_msg=f"{key} {rows}")
    assert not np.array_equal(shakespeare.batch(0, 16)["inputs"], shakespeare.batch(1, 16)["inputs"])
    reseeded = make_dataset(DataConfig(task="tinyshakespeare", seed=4), 64, tmp_path)
    assert not np.array_equal(shakespeare.batch(0, 16)["inputs"], reseeded.batch(0, 16)["inputs"])


def test_each_epoch_is_a_permutation_of_all_rows(tmp_path):
    name = _text_task(tmp_path, "".join(f"{i:05d}" for i in range(600)))
    ds = make_dataset(DataConfig(task=name), 16, tmp_path / "cache")
    n, batch_size = ds.num_rows("train"), 10
    in_order = [tuple(r) for b in ds.eval_batches(batch_size, 10**6, split="train") for r in b["inputs"]][:n]
    steps = [ds.batch(step, batch_size)["inputs"] for step in range(2 * n // batch_size + 1)]
    drawn = [tuple(r) for b in steps for r in b]
    epoch0, epoch1 = drawn[:n], drawn[n : 2 * n]
    assert sorted(epoch0) == sorted(in_order) == sorted(epoch1)
    assert epoch0 != in_order and epoch0 != epoch1


def test_mixture_row_shares_match_rates(tmp_path):
    a = _text_task(tmp_path, "a" * 2000)
    b = _text_task(tmp_path, "b" * 2000)
    mixture = f"mix_{uuid.uuid4().hex[:10]}"
    register_mixture(mixture, {a: 4.0, b: 1.0})  # normalised to 0.8 / 0.2
    ds = make_dataset(DataConfig(task=mixture, seed=1), 16, tmp_path / "cache")
    steps, batch_size, p = 200, 32, 0.8
    from_a = sum(int((ds.batch(s, batch_size)["inputs"] == ord("a")).any(axis=1).sum()) for s in range(steps))
    n = steps * batch_size
    assert abs(from_a - p * n) < 4 * math.sqrt(n * p * (1 - p))  # 4 binomial standard deviations
    registered = seqio.get_mixture_or_task(f"{mixture}.byte")
    assert {t.name: registered.get_rate(t) for t in registered.tasks} == {f"{a}.byte": 4.0, f"{b}.byte": 1.0}
    # Evaluation interleaves the components' validation rows (equal sizes here: alternating).
    (first,) = ds.eval_batches(batch_size=4, max_batches=1)
    assert [chr(row[0]) for row in first["inputs"]] == ["a", "b", "a", "b"]


# -- sources ------------------------------------------------------------------------------------------------


def test_tinyshakespeare_byte_task(shakespeare, shakespeare_cache):
    raw = data_path("corpora", "tinyshakespeare", "input.txt").read_bytes()
    assert shakespeare.num_tokens("train") + shakespeare.num_tokens("validation") == len(raw) + 2  # one EOS each
    cut = int(len(raw) * 0.9)  # ASCII, so characters are bytes
    validation = _cached(shakespeare_cache, "tinyshakespeare.byte.validation.*.npy")
    np.testing.assert_array_equal(validation, np.append(np.frombuffer(raw[cut:], np.uint8), EOS))
    np.testing.assert_array_equal(
        _cached(shakespeare_cache, "tinyshakespeare.byte.train.*.npy")[:-1], np.frombuffer(raw[:cut], np.uint8)
    )


def test_seqio_task_is_registered_and_tokenizes():
    task = get_task("tinyshakespeare", "byte")
    assert seqio.TaskRegistry.get("tinyshakespeare.byte") is task
    (example,) = task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator()
    raw = data_path("corpora", "tinyshakespeare", "input.txt").read_bytes()
    assert bytes(example["targets"][:-1].astype(np.uint8)) == raw[int(len(raw) * 0.9) :]
    assert example["targets"][-1] == EOS


def test_document_splitting_of_builtin_corpora(tmp_path):
    make_dataset(DataConfig(task="wikitext2"), 64, tmp_path)
    train = _cached(tmp_path, "wikitext2.byte.train.*.npy")
    validation = _cached(tmp_path, "wikitext2.byte.validation.*.npy")
    documents = (train == EOS).sum() + (validation == EOS).sum()
    assert documents == 62 and (validation == EOS).sum() == 6  # round(10%) of the documents
    assert bytes(train[:20].astype(np.uint8)).startswith(b"= Robert Boulter =")

    gpt2 = make_dataset(DataConfig(task="tinystories_sample", vocab="gpt2"), 32, tmp_path)
    assert gpt2.vocab.eos_id == 50256
    stories = [_cached(tmp_path, f"tinystories_sample.*.{split}.*.npy") for split in ("train", "validation")]
    assert [(s == 50256).sum() for s in stories] == [4, 1]
    assert gpt2.vocab.decode(stories[1]).startswith("Once upon a time, in a small house")


def test_jsonl_task(tmp_path):
    lines = [json.dumps({"body": f"doc {i}", "id": i}) for i in range(10)]
    name = _text_task(tmp_path, "\n".join(lines) + "\n", jsonl_field="body")
    ds = make_dataset(DataConfig(task=name), 4, tmp_path / "cache")
    assert ds.num_tokens("train") == 9 * 6 and ds.num_tokens("validation") == 6  # "doc i" + EOS

    bad = _text_task(tmp_path, '{"body": "x"}\n{"text": "y"}\n', jsonl_field="body")
    with pytest.raises(ValueError, match=r":2 has no string field 'body'"):
        make_dataset(DataConfig(task=bad), 4, tmp_path / "cache")


def test_tfds_source_under_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        texts = [ex["text"] for ex in tfds.load("tiny_shakespeare", split="train").as_numpy_iterator()]
        ds = make_dataset(
            DataConfig(task="tiny_shakespeare", tfds_data_dir=str(tmp_path / "tfds")), 8, tmp_path / "cache"
        )
        assert ds.num_tokens("train") == sum(len(t) + 1 for t in texts)
        assert get_task("tiny_shakespeare", "byte", str(tmp_path / "tfds")).name.startswith("tiny_shakespeare.byte.")
        batch = ds.batch(0, 4)
        assert batch["inputs"].shape == (4, 8) and batch["loss_mask"].sum() > 0
        (first,) = ds.eval_batches(1, 1, split="train")
        assert bytes(first["inputs"][0].astype(np.uint8)) == texts[0][:8]


# -- the cache ----------------------------------------------------------------------------------------------


def test_cache_hit_does_not_retokenize(tmp_path, monkeypatch):
    name = _text_task(tmp_path, "hello world " * 50)
    first = make_dataset(DataConfig(task=name), 8, tmp_path / "cache").batch(2, 4)

    def fail(*args, **kwargs):
        raise AssertionError("tokenised again despite a cache hit")

    monkeypatch.setattr(cache, "tokenize", fail)
    again = make_dataset(DataConfig(task=name), 8, tmp_path / "cache").batch(2, 4)
    for key in KEYS:
        np.testing.assert_array_equal(first[key], again[key])


def test_partial_writes_are_never_trusted(tmp_path, monkeypatch):
    name = _text_task(tmp_path, "hello world " * 50)
    cache_dir = tmp_path / "cache"
    reference = make_dataset(DataConfig(task=name), 8, cache_dir).batch(0, 4)
    finals = sorted(cache_dir.glob("*.npy"))
    for path in finals:  # as if killed mid-write: no final file, a truncated temporary one
        path.with_name(path.name + ".tmp-999-deadbeef").write_bytes(path.read_bytes()[:100])
        path.unlink()

    def crash(file, array):
        file.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(DataConfig(task=name), 8, cache_dir)
    assert not list(cache_dir.glob("*.npy"))  # the interrupted write left nothing under a final name
    monkeypatch.undo()
    rebuilt = make_dataset(DataConfig(task=name), 8, cache_dir).batch(0, 4)
    for key in KEYS:
        np.testing.assert_array_equal(rebuilt[key], reference[key])
    assert sorted(cache_dir.glob("*.npy")) == finals


# -- errors -------------------------------------------------------------------------------------------------


def test_errors_name_the_offending_values(shakespeare, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown data.task 'nope'; valid tasks: .*tinyshakespeare"):
        make_dataset(DataConfig(task="nope"), 8, tmp_path)
    missing = f"gone_{uuid.uuid4().hex[:8]}"
    register_text_task(missing, tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        make_dataset(DataConfig(task=missing), 8, tmp_path)
    small = _text_task(tmp_path, "tiny corpus")
    with pytest.raises(ValueError, match=r"seq_len=64 is larger than the data: .* has 10 training tokens"):
        make_dataset(DataConfig(task=small), 64, tmp_path)
    with pytest.raises(IndexError, match=r"rows \[16, 19\] are not rows of the global batch of 16 rows"):
        shakespeare.batch(0, 16, rows=[8, 16, 19])
    with pytest.raises(IndexError, match=r"rows \[-2\]"):
        shakespeare.batch(0, 16, rows=[-2])
    with pytest.raises(ValueError, match="unknown split 'test'"):
        shakespeare.num_tokens("test")
    with pytest.raises(ValueError, match="already registered"):
        register_text_task("tinyshakespeare", "x.txt")
