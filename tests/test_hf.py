"""gptjax.hf against transformers' own GPT2LMHeadModel, on small random models built locally (no hub access).

Every parameter (LayerNorm scales and all biases included) is randomised, so a swapped, transposed or
mis-split tensor changes the logits. Logits are compared at 1e-4 absolute: both sides run the same fp32
arithmetic on logits of order 1, so honest differences are float rounding (~1e-6).
"""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from requirements import need_modules

os.environ["HF_HUB_OFFLINE"] = "1"
torch, transformers = need_modules("torch", "transformers")

from gptjax import hf, model  # noqa: E402
from gptjax.config import ConfigError, ModelConfig, get_preset  # noqa: E402

ATOL = 1e-4
VOCAB = 1000
# Jitted once per config: eager flax init/apply compiles every op separately, which dominates the run time.
init_params = jax.jit(model.init_params, static_argnums=0)
forward = jax.jit(model.forward, static_argnums=2)


def _hf_model(tmp_path, name="hf-small", tie=True):
    """A randomly initialised small GPT-2 saved with save_pretrained, as in a downloaded checkpoint."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=128,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        tie_word_embeddings=tie,
    )
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # LayerNorm scales off 1, biases off 0
    hf_model.save_pretrained(tmp_path / name, safe_serialization=True)
    return hf_model, tmp_path / name


def _noise(cfg, seed=0):
    """N(0, 0.05) for every parameter of `cfg`, drawn on the host (eager jax.random compiles per shape)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0.0, 0.05, x.shape).astype(np.float32), model.abstract_params(cfg))


def _hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.from_numpy(tokens)).logits.numpy()


def _tokens(n_ctx, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(2, n_ctx), dtype=np.int64)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("tie", [True, False])
def test_import_matches_transformers_logits(tmp_path, tie):
    hf_model, path = _hf_model(tmp_path, tie=tie)
    cfg, params = hf.import_hf(path)
    assert (cfg.name, cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_ctx) == ("hf:hf-small", 2, 64, 4, 128)
    assert (cfg.norm, cfg.final_norm, cfg.tie_embeddings, cfg.resid_dropout) == ("pre", True, tie, 0.1)
    assert ("lm_head" in params) == (not tie)
    tokens = _tokens(cfg.n_ctx, VOCAB)  # the full context, so every position embedding is used
    ours = np.asarray(forward(params, tokens.astype(np.int32), cfg))
    theirs = _hf_logits(hf_model, tokens)
    err = np.abs(ours - theirs).max()
    print(f"import tie={tie}: max |logit error| = {err:.3g} (logit scale {np.abs(theirs).max():.3g})")
    assert err < ATOL


def test_import_unprefixed_keys_and_mask_buffers(tmp_path):
    """OpenAI-style checkpoints: bare GPT2Model keys (`h.0...`), causal-mask buffers, tied lm_head saved."""
    _, path = _hf_model(tmp_path)
    _, reference = hf.import_hf(path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(path / "model.safetensors").items()}
    tensors["lm_head.weight"] = tensors["wte.weight"]
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), np.float32))
    save_file(tensors, path / "model.safetensors")
    _, params = hf.import_hf(path)
    _assert_trees_equal(params, reference)


def test_export_import_roundtrip_is_identity(tmp_path):
    _, path = _hf_model(tmp_path / "a", name="m")
    cfg, params = hf.import_hf(path)
    out = hf.export_hf(params, cfg, tmp_path / "b" / "m")  # same dir name, so the same config name
    cfg2, params2 = hf.import_hf(out)
    assert cfg2 == cfg
    _assert_trees_equal(params2, params)
    original, exported = load_file(path / "model.safetensors"), load_file(out / "model.safetensors")
    _assert_trees_equal(exported, original)  # the file itself is transformers' layout, bit for bit


@pytest.mark.parametrize("tie,d_ff", [(True, 0), (False, 96)])
def test_gptjax_model_exports_to_transformers(tmp_path, tie, d_ff):
    cfg = ModelConfig(
        name="tiny-gpt2",
        vocab_size=VOCAB,
        n_ctx=64,
        n_layer=2,
        n_head=4,
        d_model=64,
        d_ff=d_ff,
        tie_embeddings=tie,
        embd_dropout=0.1,
        attn_dropout=0.0,
        resid_dropout=0.05,
    )
    params = jax.tree.map(np.add, init_params(cfg, jax.random.key(0)), _noise(cfg))

    out = hf.export_hf(params, cfg, tmp_path / "exported")
    hf_model, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["n_inner"] == (d_ff or None)  # GPT-2 writes null for the default 4 * n_embd
    assert hf_config["eos_token_id"] is None  # 50256 is outside the vocab
    tokens = _tokens(cfg.n_ctx, VOCAB, seed=1)
    ours = np.asarray(forward(params, tokens.astype(np.int32), cfg))
    theirs = _hf_logits(hf_model.eval(), tokens)
    err = np.abs(ours - theirs).max()
    print(f"export tie={tie} d_ff={d_ff}: max |logit error| = {err:.3g} (logit scale {np.abs(theirs).max():.3g})")
    assert err < ATOL

    cfg2, params2 = hf.import_hf(out)
    _assert_trees_equal(params2, params)
    assert cfg2.d_ff == cfg.d_ff and cfg2.tie_embeddings == tie and cfg2.resid_dropout == 0.05


def test_scanned_layout_round_trips_through_transformers(tmp_path):
    """A model trained with scan_layers exports one HF entry per layer; importing and restacking gives back
    its parameters bit for bit."""
    cfg = ModelConfig(name="scanned", vocab_size=VOCAB, n_ctx=64, n_layer=2, n_head=4, d_model=64, scan_layers=True)
    params = jax.tree.map(np.add, init_params(cfg, jax.random.key(0)), _noise(cfg))
    assert params["layers"]["block_0"]["mlp"]["fc_kernel"].shape == (2, 64, 256)
    out = hf.export_hf(params, cfg, tmp_path / "scanned")
    tokens = _tokens(cfg.n_ctx, VOCAB, seed=2)
    theirs = _hf_logits(transformers.GPT2LMHeadModel.from_pretrained(out).eval(), tokens)
    assert np.abs(np.asarray(forward(params, tokens.astype(np.int32), cfg)) - theirs).max() < ATOL
    cfg2, imported = hf.import_hf(out)
    assert not cfg2.scan_layers and "h_1" in imported
    _assert_trees_equal(jax.tree.map(np.asarray, model.stack_layers(imported, cfg)), params)


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (the alphabet of its vocab.json)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return [table[b] for b in range(256)]


def test_export_with_tokenizer_loads_in_auto_tokenizer(tmp_path):
    """A GPT-2 BPE dir in OpenAI's naming (encoder.json/vocab.bpe): byte tokens, one merge, <|endoftext|>."""
    vocab = {c: b for b, c in enumerate(_bytes_to_unicode())} | {"<|endoftext|>": 256, "he": 257}
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "bpe" / "vocab.bpe").write_text("#version: 0.2\nh e\n")
    cfg = ModelConfig(vocab_size=258, n_ctx=16, n_layer=1, n_head=2, d_model=16)
    out = hf.export_hf(_noise(cfg), cfg, tmp_path / "exported", tokenizer_dir=tmp_path / "bpe")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("hello").input_ids == [257, ord("l"), ord("l"), ord("o")]
    assert tokenizer.eos_token_id == json.loads((out / "config.json").read_text())["eos_token_id"] == 256

    small = ModelConfig(vocab_size=257, n_ctx=16, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(ConfigError, match="token ids up to 257, outside model.vocab_size=257"):
        hf.export_hf(_noise(small), small, tmp_path / "x", tmp_path / "bpe")
    with pytest.raises(FileNotFoundError, match=r"none of \['vocab.json', 'encoder.json'\]"):
        hf.export_hf(_noise(cfg), cfg, tmp_path / "x", tokenizer_dir=tmp_path)


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        hf.import_hf(tmp_path / "nowhere")

    _, path = _hf_model(tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")  # never opened: it could be any pickle
    with pytest.raises(FileNotFoundError, match="no model.safetensors .*pytorch_model.bin.*only safetensors"):
        hf.import_hf(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        hf.import_hf(path)

    _, path = _hf_model(tmp_path, name="relu")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"activation_function": "relu"}))
    with pytest.raises(ConfigError, match="activation_function='relu'"):
        hf.import_hf(path)
    (path / "config.json").write_text(json.dumps(config | {"n_layer": 3}))
    with pytest.raises(ValueError, match=r"missing transformer\.h\.2\.ln_1\.weight \(64,\)"):
        hf.import_hf(path)


def test_export_refuses_what_gpt2_cannot_represent(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.norm='post'.*model\.final_norm=False"):
        hf.export_hf({}, get_preset("gpt1"), tmp_path)  # the config is checked before the params
    with pytest.raises(ConfigError, match=r"model\.attention_pattern=\('dense', 'banded'\)"):
        hf.export_hf({}, get_preset("gpt3-small"), tmp_path)
    with pytest.raises(ConfigError, match="model.d_head=8 gives n_head\\*d_head=16 != d_model=32"):
        hf.export_hf({}, ModelConfig(d_model=32, n_head=2, d_head=8), tmp_path)
    with pytest.raises(ConfigError, match="model.positions='rotary' .GPT-2 has learned absolute position"):
        hf.export_hf({}, ModelConfig(d_model=32, n_head=2, positions="rotary"), tmp_path)

    cfg = ModelConfig(vocab_size=300, n_ctx=16, n_layer=1, n_head=2, d_model=16)
    params = _noise(cfg)
    params["h_0"]["mlp"]["fc_kernel"] = params["h_0"]["mlp"]["fc_kernel"][:, :8]
    with pytest.raises(ValueError, match=r"h_0/mlp/fc_kernel has shape \(16, 8\), expected \(16, 64\)"):
        hf.export_hf(params, cfg, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written on refusal
