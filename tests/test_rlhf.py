"""InstructGPT's stages (gptjax/rlhf): the formulas against hand computations and reference loops, the stages
chained through their run directories (SFT -> RM -> PPO raises the RM score), PPO's bitwise resume and its
sharded iteration against the single-device one."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import config as config_lib
from gptjax import metrics as metrics_lib
from gptjax import model, train
from gptjax.rlhf import pipeline, ppo, reward, stages
from gptjax.rlhf.sequences import init_scalar_head, lm_batch, masked_mean, token_logprobs, whiten
from gptjax.rlhf.toy import END, ToyTask, pack
from gptjax.rundir import RunDir
from gptjax.sharding import MeshConfig

TASK = ToyTask()
CFG = TASK.model_config(n_ctx=16, d_model=32, n_layer=1)


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts = TASK.prompts(n, rng)
    return {k: jnp.asarray(v) for k, v in pack(prompts, TASK.demonstrations(prompts, rng), TASK.seq_len).items()}


def _params(seed: int):
    return model.init_params(CFG, jax.random.key(seed))


def test_ranking_loss_is_the_hand_computation_for_k3_with_a_tie():
    # Prompt 0: response 0 beats 1 and 2, which tie (that pair is dropped): two pairs.
    # Prompt 1: all three tie, so it has no comparison and is not counted.
    rewards = jnp.array([[1.0, 0.0, 0.5], [0.3, -2.0, 4.0]])
    ranks = jnp.array([[0, 1, 1], [0, 0, 0]])
    total, count = reward.ranking_loss_sums(rewards, ranks)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.5))) / 2
    assert float(count) == 1.0
    assert float(total) == pytest.approx(expected, rel=1e-6)
    # Reversed ranks give the loss of the opposite margins.
    total, _ = reward.ranking_loss_sums(rewards[:1], jnp.array([[2, 0, 1]]))  # 1 > 2 > 0
    expected = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(0.5)) + math.log1p(math.exp(0.5))) / 3
    assert float(total) == pytest.approx(expected, rel=1e-6)
    assert reward.pairwise_accuracy(np.array([[1.0, 0.0, 0.5]]), np.array([[0, 2, 1]])) == 1.0


def _gae_reference(rewards, values, mask, gamma, lam):
    out = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[b])
        adv = 0.0
        for n, t in reversed(list(enumerate(idx))):
            next_value = values[b, idx[n + 1]] if n + 1 < len(idx) else 0.0
            adv = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * adv
            out[b, t] = adv
    return out


def test_gae_matches_a_reference_loop_and_is_reward_to_go_minus_values_at_gamma_lambda_1():
    rng = np.random.default_rng(0)
    rows = _rows(6, 0)
    mask = np.asarray(lm_batch(rows["tokens"], rows["prompt_len"], rows["total_len"])["loss_mask"], np.float32)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.7)):
        got = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, lam)
        np.testing.assert_allclose(got, _gae_reference(rewards, values, mask, gamma, lam), rtol=1e-5, atol=1e-5)
    got = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 1.0, 1.0)
    to_go = np.flip(np.cumsum(np.flip(rewards * mask, 1), 1), 1)
    np.testing.assert_allclose(got, (to_go - values) * mask, rtol=1e-5, atol=1e-5)


def test_masked_whitening_ignores_padding():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (4, 7)).astype(np.float32)
    mask = (rng.random((4, 7)) < 0.6).astype(np.float32)
    noisy = np.where(mask > 0, x, 1e6)
    a, b = whiten(jnp.asarray(x), jnp.asarray(mask)), whiten(jnp.asarray(noisy), jnp.asarray(mask))
    np.testing.assert_array_equal(a, b)
    assert float(masked_mean(a, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(masked_mean(a**2, mask)) == pytest.approx(1.0, abs=1e-4)
    assert np.all(np.asarray(a)[mask == 0] == 0)


def test_clipped_objective_and_value_loss_match_the_formulas():
    rng = np.random.default_rng(2)
    shape = (3, 5)
    logp, logp_old = rng.normal(-2, 0.3, shape), rng.normal(-2, 0.3, shape)
    adv, mask = rng.normal(size=shape), (rng.random(shape) < 0.7).astype(np.float64)
    loss, stats = ppo.policy_loss(*(jnp.asarray(a, jnp.float32) for a in (logp, logp_old, adv, mask)), 0.2)
    ratio = np.exp(logp - logp_old)
    terms = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
    clipped = (-adv * np.clip(ratio, 0.8, 1.2)) > (-adv * ratio)
    assert float(loss) == pytest.approx((terms * mask).sum() / mask.sum(), rel=1e-5)
    assert float(stats["clip_fraction"]) == pytest.approx((clipped * mask).sum() / mask.sum(), rel=1e-6)
    assert 0 < float(stats["clip_fraction"]) < 1  # the example exercises both branches

    v, v_old, ret = rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape)
    got = ppo.value_loss(*(jnp.asarray(a, jnp.float32) for a in (v, v_old, ret, mask)), 0.2)
    vc = v_old + np.clip(v - v_old, -0.2, 0.2)
    assert float(got) == pytest.approx(
        0.5 * (np.maximum((v - ret) ** 2, (vc - ret) ** 2) * mask).sum() / mask.sum(), rel=1e-5
    )


def test_rm_score_lands_on_the_last_token_and_kl_reward_is_per_token():
    score = jnp.array([2.0, -1.0])
    mask = jnp.array([[0, 1, 1, 0], [0, 0, 1, 0]], jnp.float32)
    logp, logp_ref = jnp.full((2, 4), -1.0), jnp.full((2, 4), -1.5)
    rewards, kl = ppo.per_token_rewards(score, logp, logp_ref, mask, jnp.float32(0.1))
    np.testing.assert_allclose(kl, 0.5 * mask)
    np.testing.assert_allclose(rewards, [[0, -0.05, 1.95, 0], [0, 0, -1.05, 0]], rtol=1e-6)


def test_sft_loss_counts_response_tokens_only():
    rows = _rows(5, 3)
    batch = lm_batch(rows["tokens"], rows["prompt_len"], rows["total_len"])
    params = _params(0)
    run = pipeline.stage_run(CFG, 10, 5, 1e-3)
    loss_fn = jax.jit(train.lm_objective(run).loss_fn)
    total, sums = loss_fn(params, batch, None)
    assert float(sums["count"]) == float((rows["total_len"] - rows["prompt_len"]).sum())  # response + end token
    logp, _ = jax.jit(token_logprobs, static_argnums=1)(params, CFG, batch)
    targets = np.asarray(batch["targets"])
    response = np.asarray(batch["loss_mask"]) > 0
    assert float(total) == pytest.approx(-float(np.asarray(logp)[response].sum()), rel=1e-5)
    assert set(targets[response][targets[response] < 3].tolist()) <= {END}  # no separator or padding targets
    # Changing what the prompt's own positions predict changes nothing: only the last prompt token is scored.
    changed = batch | {"targets": batch["targets"].at[:, 0].set(7)}
    assert float(loss_fn(params, changed, None)[0]) == float(total)


def test_kl_estimator_matches_the_exact_kl_over_a_tiny_vocabulary():
    """One sampled token per prompt (at temperature 0.7): the mean of log π − log π_SFT over many samples is
    the exact KL of the two tempered next-token distributions, within 4 standard errors."""
    policy, ref = _params(1), _params(2)
    policy = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, policy)  # sharper logits: a sizeable KL
    prompts = np.repeat(TASK.prompts(1, np.random.default_rng(0)), 4000, axis=0)
    responses = ppo.sample_responses(policy, CFG, prompts, 1, END, 0.7, jax.random.key(0))
    rows = {k: jnp.asarray(v) for k, v in pack(prompts, responses, TASK.seq_len).items()}
    batch = lm_batch(rows["tokens"], rows["prompt_len"], rows["total_len"])
    logprobs = jax.jit(token_logprobs, static_argnums=(1, 3))
    logp, _ = logprobs(policy, CFG, batch, 0.7)
    logp_ref, _ = logprobs(ref, CFG, batch, 0.7)
    _, kl = ppo.per_token_rewards(jnp.zeros(len(prompts)), logp, logp_ref, batch["loss_mask"], jnp.float32(0.0))
    samples = np.asarray(kl.sum(1))
    p = jax.nn.log_softmax(model.forward(policy, jnp.asarray(prompts[:1]), CFG)[0, -1] / 0.7)
    q = jax.nn.log_softmax(model.forward(ref, jnp.asarray(prompts[:1]), CFG)[0, -1] / 0.7)
    exact = float((jnp.exp(p) * (p - q)).sum())
    assert exact > 0.1
    assert abs(samples.mean() - exact) < 4 * samples.std() / math.sqrt(len(samples))


def _scored(policy, value, ref, rm, config, rows):
    return ppo.score_rollout(
        {"policy": policy, "value": value}, ref, rm, CFG, rows, jnp.float32(config.kl_coef), config
    )


def test_at_step_0_kl_is_0_ratio_1_clip_fraction_0():
    sft = _params(3)
    rm = init_scalar_head(_params(4), CFG)
    rm = {**rm, "head": {"w": jax.random.normal(jax.random.key(5), (CFG.d_model,)), "b": jnp.float32(0.0)}}
    config = ppo.PPOConfig(rollout_batch=8, minibatches=2)
    scored = _scored(sft, rm, sft, rm, config, _rows(8, 4))
    np.testing.assert_array_equal(scored["kl"], 0.0)
    mask = scored["loss_mask"]
    # Without the KL term the per-token rewards are the score alone; advantages are whitened over the mask.
    assert float(masked_mean(scored["advantages"], mask)) == pytest.approx(0.0, abs=1e-5)
    _, stats = jax.jit(ppo.ppo_loss, static_argnums=(3, 4))({"policy": sft, "value": rm}, scored, None, CFG, config)
    assert float(stats["ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(stats["clip_fraction"]) == 0.0


def test_ptx_coefficient_0_is_plain_ppo():
    """γ = 0 with pretraining rows is plain PPO exactly (loss and gradients); γ > 0 adds γ times their LM loss."""
    sft, rm = _params(6), init_scalar_head(_params(7), CFG)
    rm = {**rm, "head": {"w": jax.random.normal(jax.random.key(8), (CFG.d_model,)), "b": jnp.float32(0.0)}}
    ptx = pipeline.pretraining_batch(TASK, 4, np.random.default_rng(0))
    config = ppo.PPOConfig(rollout_batch=8, minibatches=2)
    scored = _scored(sft, rm, sft, rm, config, _rows(8, 5))
    params = {"policy": sft, "value": rm}

    @jax.jit
    def losses(params, scored, ptx):
        grad = jax.grad(lambda p, c, b: ppo.ppo_loss(p, scored, b, CFG, c)[0])
        lm_loss = -masked_mean(token_logprobs(params["policy"], CFG, ptx)[0], ptx["loss_mask"])
        off, mixed = dataclasses.replace(config, ptx_coef=0.0), dataclasses.replace(config, ptx_coef=2.5)
        return {
            "plain": ppo.ppo_loss(params, scored, None, CFG, off)[0],
            "zero": ppo.ppo_loss(params, scored, ptx, CFG, off)[0],
            "mixed": ppo.ppo_loss(params, scored, ptx, CFG, mixed)[0],
            "lm": lm_loss,
            "grad_plain": grad(params, off, None),
            "grad_zero": grad(params, off, ptx),
            "grad_mixed": grad(params, mixed, ptx),
        }

    out = losses(params, scored, ptx)
    assert float(out["zero"]) == float(out["plain"])
    jax.tree.map(np.testing.assert_array_equal, out["grad_zero"], out["grad_plain"])
    assert float(out["mixed"]) == pytest.approx(float(out["plain"]) + 2.5 * float(out["lm"]), rel=1e-5)
    assert np.abs(np.asarray(out["grad_mixed"]["policy"]["wte"] - out["grad_plain"]["policy"]["wte"])).max() > 1e-4


PPO_ARGS = ["steps=6", "checkpoint.every=3", "ppo.ptx_coef=0.05", "ppo.target_kl=1", "ppo.kl_horizon=320"]
PPO_ARGS += ["ppo.learning_rate=1e-3", "ppo.rollout_batch=32", "ppo.minibatches=2", "ppo.epochs=2", "ptx_rows=8"]
PPO_ARGS += ["eval_prompts=32"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The stages chained through their run directories by the CLI, briefly on a 1-layer model: pretrain
    (2 steps), SFT on demonstrations, an RM on K=4 rankings of SFT samples, six PPO-ptx iterations with the
    adaptive KL controller (checkpoints at 3 and 6). The later tests reuse its runs and compiled steps."""
    from gptjax.cli import main

    root = tmp_path_factory.mktemp("align")
    fast = ["logging.peak_flops_per_device=1e12"]
    runs = {name: str(root / name) for name in ("pretrain", "sft", "rm", "ppo")}
    assert main(["align", "pretrain", "--run-dir", runs["pretrain"], "steps=2", "model.n_layer=1", *fast]) == 0
    sft = ["steps=40", "optim.learning_rate=3e-3", *fast]
    assert main(["align", "sft", "--run-dir", runs["sft"], "--from", runs["pretrain"], *sft]) == 0
    rm = ["steps=40", "batch_size=16", "optim.learning_rate=2e-3", "rm_prompts=64", "rm_held_out=32", *fast]
    assert main(["align", "rm", "--run-dir", runs["rm"], "--from", runs["sft"], *rm]) == 0
    assert main(["align", "ppo", "--run-dir", runs["ppo"], "--sft", runs["sft"], "--rm", runs["rm"], *PPO_ARGS]) == 0
    return {k: RunDir(v) for k, v in runs.items()}


def _frozen(chain):
    frozen = pipeline.Policy(CFG, stages.load_policy(chain["sft"].path), stages.load_reward_model(chain["rm"].path))
    align = config_lib.from_dict(stages.AlignConfig, json.loads(chain["ppo"].align_file.read_text()))
    return frozen, align


def test_stages_chain_rm_ranks_above_chance_and_ppo_raises_the_rm_score(chain):
    assert json.loads(chain["sft"].align_file.read_text())["sources"] == [str(chain["pretrain"].path)]
    sft_losses = pipeline.stage_losses(chain["sft"])
    assert len(sft_losses) == 40 and sft_losses[-1] < sft_losses[0]
    rm = json.loads(chain["rm"].align_result_file.read_text())
    assert rm["held_out_pairwise_accuracy"] > 0.6
    # Centred: the reference responses (each training prompt's first sample) score 0 on average.
    fit, _ = pipeline.comparison_data(TASK, stages.load_policy(chain["sft"].path), CFG, 64, 32, 4, 0)
    centred = stages.load_reward_model(chain["rm"].path)
    assert pipeline.reference_shift(centred, CFG, fit) == pytest.approx(0.0, abs=1e-4)
    history = metrics_lib.read_metrics(chain["ppo"].metrics_file)
    assert [h["step"] for h in history] == list(range(1, 7)) and history[0]["kl"] == 0.0
    for name in ("rm_score", "kl", "entropy", "clip_fraction", "value_loss", "explained_variance", "ptx_loss"):
        assert all(math.isfinite(h[name]) for h in history), name
    first, last = history[0]["rm_score"], np.mean([h["rm_score"] for h in history[-2:]])
    assert last > first + 0.2, [h["rm_score"] for h in history]
    # β follows the adaptive controller on each iteration's measured KL.
    _, align = _frozen(chain)
    for before, after in zip(history, history[1:]):
        assert after["kl_coef"] == pytest.approx(
            ppo.adapt_kl_coef(before["kl_coef"], before["kl"], align.ppo), rel=1e-6
        )
    assert history[-1]["kl_coef"] != history[0]["kl_coef"]
    assert chain["ppo"].is_done()


def test_a_stage_refuses_bad_sources_and_changed_configs_before_writing(chain, tmp_path, capsys):
    from gptjax.cli import main

    new = tmp_path / "rm2"
    assert main(["align", "rm", "--run-dir", str(new), "--from", str(chain["pretrain"].path)]) == 2  # not an SFT run
    assert main(["align", "sft", "--run-dir", str(new), "--from", str(chain["pretrain"].path), "task.tau=0.5"]) == 2
    assert not new.exists()
    ppo_dir, sft_dir, rm_dir = (str(chain[k].path) for k in ("ppo", "sft", "rm"))
    assert main(["align", "ppo", "--run-dir", ppo_dir, "--sft", sft_dir, "--rm", rm_dir, "ppo.clip=0.3"]) == 2
    assert main(["align", "toy", "--out", str(tmp_path / "toy.json"), "bogus=1"]) == 2
    assert not (tmp_path / "toy.json").exists()
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("gptjax align: error:") for e in errors)
    assert "is a pretrain run" in errors[0] and "differs from the task" in errors[1]
    assert "describes another" in errors[2] and "bogus" in errors[3]


def test_adaptive_kl_controller_follows_its_formula():
    """Ziegler et al.: β ← β (1 + clip(KL/target − 1, −0.2, 0.2) · n_episodes / horizon); target 0 = fixed β."""
    config = ppo.PPOConfig(target_kl=6.0, kl_horizon=1000, rollout_batch=64)
    for kl, error in ((6.0, 0.0), (6.6, 0.1), (12.0, 0.2), (3.0, -0.2), (5.4, -0.1)):
        assert ppo.adapt_kl_coef(0.1, kl, config) == pytest.approx(0.1 * (1 + error * 64 / 1000), rel=1e-12)
    assert ppo.adapt_kl_coef(0.1, 50.0, dataclasses.replace(config, target_kl=0.0)) == 0.1


def test_ppo_resumes_bitwise_from_its_checkpoints(chain, tmp_path):
    """The chain's PPO stage killed after iteration 3's checkpoint (a copy of its directory without
    checkpoint 6) and run again by the same command: the state at 6 (policy, value net, Adam, β, key, step)
    and the logged metrics of iterations 4-6 equal the uninterrupted run's bit for bit."""
    from gptjax.cli import main

    killed = tmp_path / "ppo"
    shutil.copytree(chain["ppo"].path, killed)
    shutil.rmtree(killed / "checkpoints" / "6")
    sft_dir, rm_dir = str(chain["sft"].path), str(chain["rm"].path)
    assert main(["align", "ppo", "--run-dir", str(killed), "--sft", sft_dir, "--rm", rm_dir, *PPO_ARGS]) == 0
    frozen, align = _frozen(chain)
    states = []
    for directory in (killed, chain["ppo"].path):
        run = pipeline.PPORun(TASK, frozen, align.ppo, 0, align.ptx_rows, MeshConfig(), run_dir=str(directory))
        assert run.restore_or_init() == 6
        run.close()
        states.append(run.current_state())
    jax.tree.map(np.testing.assert_array_equal, *states)
    drop_time = lambda records: [{k: v for k, v in r.items() if k != "time"} for r in records]  # noqa: E731
    assert drop_time(metrics_lib.read_metrics(RunDir(killed).metrics_file)) == drop_time(
        metrics_lib.read_metrics(chain["ppo"].metrics_file)
    )


_SHARDED = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_rlhf import TASK, _frozen
from gptjax.rlhf import pipeline
from gptjax.rundir import RunDir
from gptjax.sharding import MeshConfig
chain = {{k: RunDir(v) for k, v in json.loads(sys.argv[1]).items()}}
frozen, align = _frozen(chain)
run = pipeline.PPORun(TASK, frozen, align.ppo, 0, align.ptx_rows, mesh=MeshConfig(data=2, fsdp=2, tensor=2))
metrics = run.run(1)[0]
wte = run.current_state().params["policy"]["wte"]
np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(jax.device_get(run.current_state()))])
print(json.dumps({{"metrics": metrics, "shards": len(wte.addressable_shards), "devices": jax.device_count(),
                  "shard_shape": list(wte.addressable_shards[0].data.shape)}}))
"""


def test_sharded_ppo_iteration_equals_the_single_device_one(chain, tmp_path):
    """The chain's first PPO iteration (rollout, scoring, update with ptx) on 8 emulated devices as
    data 2 x fsdp 2 x tensor 2, the state sharded by gptjax.sharding's rules, against one device: the same
    metrics and state within fp32 reduction-order tolerance (an Adam step of lr 1e-3 moves a weight <= 1e-3)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    code = _SHARDED.format(tests=str(Path(__file__).parent))
    dirs = json.dumps({k: str(v.path) for k, v in chain.items()})
    leaves = tmp_path / "state.npz"
    out = subprocess.run(
        [sys.executable, "-c", code, dirs, str(leaves)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["shards"] == 8
    assert result["shard_shape"] == [TASK.vocab_size // 2, CFG.d_model // 2]  # vocab over tensor, embed over fsdp
    one = {k: v for k, v in metrics_lib.read_metrics(chain["ppo"].metrics_file)[0].items() if k not in ("step", "time")}
    assert one.keys() == result["metrics"].keys()
    for name, value in one.items():
        assert result["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    frozen, align = _frozen(chain)
    single = pipeline.PPORun(TASK, frozen, align.ppo, 0, align.ptx_rows)
    single.run(1)
    sharded = np.load(leaves)
    for i, leaf in enumerate(jax.tree.leaves(jax.device_get(single.current_state()))):
        np.testing.assert_allclose(sharded[f"arr_{i}"], np.asarray(leaf), rtol=1e-4, atol=1e-5)
