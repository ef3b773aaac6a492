"""Tokenizers: exact round trips, agreement of the TF and Python paths, and GPT-2 BPE against Hugging Face."""

import json
import pickle
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf

from gptjax.paths import data_path
from gptjax.plain_tokenizers import TokenizerError, get_tokenizer, hf_dir_tokenizer
from gptjax.tokenizers import (
    EOT,
    ByteVocabulary,
    GPT2BPEVocabulary,
    SentencePieceVocabulary,
    get_vocabulary,
    tokenizer_command,
    train_sentencepiece,
)

from requirements import need_modules

SHAKESPEARE = data_path("corpora", "tinyshakespeare", "input.txt")

VARIED = [
    "",
    "Hello world",
    "  leading and trailing spaces  ",
    " ",
    "whitespace   runs\t\ttabs\n\nnewlines\r\n end\n",
    "don't won't I'm we've they're she'll he'd it's 'quoted'",
    "DON'T SHOUT, Don'T",
    "numbers 1234567890 3.14159 -42 1,000,000 2nd 1e-5",
    "emoji 😀👍🏽👨‍👩‍👧 and flags 🇫🇷",
    "CJK 日本語のテキスト 中文字符 한국어",
    "accents café naïve façade Ångström Ελληνικά русский",
    "combining e\u0301 and zero\u200bwidth",
    f"one document{EOT}another document",
    f"{EOT}",
    f"  {EOT} spaced {EOT}{EOT}\n",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "punctuation!!! ??? ... --- *** @user #tag $5 %",
]


def _nonempty(texts):
    return [t for t in texts if t]


# --- bytes ------------------------------------------------------------------------------------------------


def test_byte_vocabulary_round_trips_and_reports_its_ids():
    vocab = ByteVocabulary()
    assert (vocab.vocab_size, vocab.eos_id, vocab.unk_id, vocab.name) == (257, 256, None, "byte")
    for text in VARIED:
        ids = vocab.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert vocab.decode_all(ids) == text
    assert vocab.decode([104, 105, 256, 120]) == "hi"
    assert vocab.decode_all([104, 105, 256, 120]) == f"hi{EOT}x"
    assert vocab.decode([0xE2, 0x82, 0x41]) == "\ufffdA"  # truncated UTF-8 is replaced, not dropped
    with pytest.raises(ValueError, match=r"\[257\]"):
        vocab.decode([65, 257])


def test_byte_vocabulary_tf_paths_agree_with_python():
    vocab = ByteVocabulary()
    for text in VARIED:
        np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), vocab.encode(text))
    rows = [[72, 105, 256, 88, 89], [0xE2, 0x82, 0x41, 0xF0, 0x9F], [0x98, 0x80, 256, 256, 0]]
    decoded = vocab.decode_tf(tf.constant(rows, tf.int32)).numpy()
    assert [d.decode() for d in decoded] == [vocab.decode(r) for r in rows] == ["Hi", "\ufffdA\ufffd", "\ufffd\ufffd"]
    assert vocab.decode_tf(tf.constant([], tf.int32)).numpy() == b""


# --- GPT-2 BPE --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    return get_vocabulary("gpt2")


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """Hugging Face's GPT-2 tokenizer built from the same two files."""
    (transformers,) = need_modules("transformers")
    directory = tmp_path_factory.mktemp("hf_gpt2")
    source = data_path("tokenizers", "gpt2")
    shutil.copy(source / "encoder.json", directory / "vocab.json")
    shutil.copy(source / "vocab.bpe", directory / "merges.txt")
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(directory)
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256  # a real vocabulary, not an empty one
    return tokenizer


def test_gpt2_reports_its_ids(gpt2):
    assert (gpt2.vocab_size, gpt2.eos_id, gpt2.unk_id) == (50257, 50256, None)
    assert gpt2.encode("Hello world") == [15496, 995]  # the published GPT-2 ids
    assert gpt2.encode(f"a{EOT}b") == [64, 50256, 65]
    assert gpt2.decode([15496, 995, 50256, 15496]) == "Hello world"


def test_gpt2_matches_hugging_face_on_varied_text(gpt2, hf_gpt2):
    for text in VARIED:
        expected = hf_gpt2.encode(text)
        assert gpt2.encode(text) == expected, text
        assert gpt2.decode_all(expected) == hf_gpt2.decode(expected) == text


@pytest.mark.parametrize(
    "corpus, start", [(("tinyshakespeare", "input.txt"), 0), (("wikitext-2-raw", "wiki.test.raw"), 100_000)]
)
def test_gpt2_matches_hugging_face_on_corpora(gpt2, hf_gpt2, corpus, start):
    text = data_path("corpora", *corpus).read_text(encoding="utf-8")[start : start + 20_000]
    expected = hf_gpt2.encode(text)
    assert len(expected) > 3000
    assert gpt2.encode(text) == expected
    assert gpt2.decode_all(expected) == hf_gpt2.decode(expected) == text


def test_gpt2_tf_paths_agree_with_python_inside_tf_data(gpt2):
    texts = _nonempty(VARIED)
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(gpt2.encode_tf)
    for text, ids in zip(texts, dataset.as_numpy_iterator()):
        assert ids.tolist() == gpt2.encode(text)
    batch = [gpt2.encode(t) + [gpt2.eos_id] for t in ("don't stop", "日本語 😀", "x")]
    width = max(map(len, batch))
    padded = tf.constant([row + [0] * (width - len(row)) for row in batch], tf.int32)  # seqio pads with 0 = "!"
    assert [d.decode() for d in gpt2.decode_tf(padded).numpy()] == ["don't stop", "日本語 😀", "x"]


def test_vocabularies_work_in_seqio_tokenize():
    for vocab in (ByteVocabulary(), get_vocabulary("gpt2")):
        dataset = tf.data.Dataset.from_tensors({"targets": "Hi there"})
        features = {"targets": seqio.Feature(vocab)}
        example = next(seqio.preprocessors.tokenize(dataset, features, with_eos=True).as_numpy_iterator())
        assert example["targets"].tolist() == vocab.encode("Hi there") + [vocab.eos_id]


def test_vocabularies_have_stable_names_equality_and_pickle(gpt2):
    default = data_path("tokenizers", "gpt2")
    same = GPT2BPEVocabulary(default / "encoder.json", default / "vocab.bpe")
    assert same == gpt2 and hash(same) == hash(gpt2) and same.name == gpt2.name
    assert gpt2.name.startswith("gpt2-bpe-") and gpt2.name in repr(gpt2)
    assert gpt2 != ByteVocabulary() and ByteVocabulary() == ByteVocabulary()
    for vocab in (gpt2, ByteVocabulary()):
        clone = pickle.loads(pickle.dumps(vocab))
        assert clone == vocab and clone.encode("pickled ok") == vocab.encode("pickled ok")


# --- SentencePiece ----------------------------------------------------------------------------------------


def test_sentencepiece_trains_loads_and_round_trips(tmp_path):
    model = train_sentencepiece([SHAKESPEARE], tmp_path / "sp" / "shakespeare", vocab_size=300)
    assert model == tmp_path / "sp" / "shakespeare.model" and model.is_file()
    vocab = get_vocabulary(f"sentencepiece:{model}")
    assert isinstance(vocab, SentencePieceVocabulary)
    assert (vocab.vocab_size, vocab.eos_id, vocab.pad_id) == (300, 1, 0)
    assert vocab.name.startswith("sentencepiece-bpe-300-") and vocab.name in repr(vocab)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:3000] + "  two spaces,\n\n  indented line \n"
    ids = vocab.encode(text)
    assert vocab.decode(ids) == vocab.decode_all(ids) == text
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert SentencePieceVocabulary(model) == vocab and pickle.loads(pickle.dumps(vocab)) == vocab

    unigram = train_sentencepiece([SHAKESPEARE], tmp_path / "uni", vocab_size=300, model_type="unigram")
    assert SentencePieceVocabulary(unigram).name.startswith("sentencepiece-unigram-300-")
    assert SentencePieceVocabulary(unigram) != vocab


def test_tokenizer_command_trains_a_model(tmp_path, capsys):
    out = tmp_path / "cli"
    assert tokenizer_command(["train", "--corpus", str(SHAKESPEARE), "--vocab-size", "280", "--out", str(out)]) == 0
    assert (tmp_path / "cli.model").is_file() and "sentencepiece-bpe-280-" in capsys.readouterr().out
    assert (
        tokenizer_command(
            ["train", "--corpus", str(tmp_path / "missing.txt"), "--vocab-size", "280", "--out", str(out)]
        )
        == 1
    )
    assert "missing.txt" in capsys.readouterr().err


def test_train_sentencepiece_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="'wordpiece'"):
        train_sentencepiece([SHAKESPEARE], tmp_path / "m", 300, model_type="wordpiece")
    with pytest.raises(ValueError, match="-5"):
        train_sentencepiece([SHAKESPEARE], tmp_path / "m", -5)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_sentencepiece([tmp_path / "nope.txt"], tmp_path / "m", 300)


# --- specs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "bytes", "gpt-2", "gpt2x", "sentencepiece", "sentencepiece:", "bpe:300"])
def test_get_vocabulary_rejects_unknown_specs(spec):
    with pytest.raises(ValueError, match="valid forms: 'byte', 'gpt2', 'gpt2:DIR'.*'sentencepiece:FILE.model'"):
        get_vocabulary(spec)


def test_get_vocabulary_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        get_vocabulary(f"gpt2:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="absent.model"):
        get_vocabulary(f"sentencepiece:{tmp_path / 'absent.model'}")
    assert get_vocabulary("byte") == ByteVocabulary()


# --- plain tokenizers and Hugging Face model dirs ----------------------------------------------------------


def test_plain_tokenizers_are_the_vocabularies_without_tensorflow(gpt2, tmp_path):
    """Same names, ids and texts as the seqio vocabularies (inference uses these, training those)."""
    model = train_sentencepiece([SHAKESPEARE], tmp_path / "sp", vocab_size=300)
    for spec in ("byte", "gpt2", f"sentencepiece:{model}"):
        plain, vocab = get_tokenizer(spec), get_vocabulary(spec)
        assert (plain.name, plain.vocab_size, plain.eos_id) == (vocab.name, vocab.vocab_size, vocab.eos_id)
        for text in VARIED:
            ids = plain.encode(text)
            assert ids == list(vocab.encode(text)), (spec, text)
            with_eos = ids + [plain.eos_id] + ids
            assert plain.decode(with_eos) == vocab.decode(with_eos)
            assert plain.decode_all(with_eos) == vocab.decode_all(with_eos)


def test_hf_dir_tokenizer_reads_tokenizer_json_as_transformers_saves_it(hf_gpt2, tmp_path):
    """transformers 5 saves only tokenizer.json (+ tokenizer_config.json): the same GPT-2 BPE, same name."""
    hf_gpt2.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "vocab.json").exists()
    tokenizer = hf_dir_tokenizer(tmp_path / "saved")
    assert tokenizer.name == get_tokenizer("gpt2").name and tokenizer.source.endswith("tokenizer.json")
    assert all(tokenizer.encode(text) == hf_gpt2.encode(text) for text in VARIED)
    assert hf_dir_tokenizer(tmp_path) is None  # no tokenizer files at all

    spec = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "saved" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=r"not GPT-2's byte-level BPE: pre_tokenizer.add_prefix_space=True"):
        hf_dir_tokenizer(tmp_path / "saved")
    config = tmp_path / "saved" / "tokenizer_config.json"
    config.write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    with pytest.raises(TokenizerError, match="tokenizer_class 'LlamaTokenizer' is not one of"):
        hf_dir_tokenizer(tmp_path / "saved")
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(b"")
    with pytest.raises(TokenizerError, match=r"holds \['tokenizer.model'\], not a GPT-2 BPE"):
        hf_dir_tokenizer(tmp_path / "sp")
