"""The pipeline's stages as resumable runs, one run directory each, chained by their directories:

    gptjax align pretrain --run-dir P          a fresh model on the toy pretraining language
    gptjax align sft --run-dir S --from P      supervised fine-tuning on demonstrations
    gptjax align rm  --run-dir R --from S      the reward model on K-way rankings of S's samples
    gptjax align ppo --run-dir O --sft S --rm R

A stage's directory holds what a pre-training run's does (config.json, metrics.jsonl, checkpoints/, the
heartbeat) plus align.json (its `AlignConfig`: the task, the runs it starts from, the RM's data sizes, PPO's
config) and, when it ends, align_result.json (held-out figures; the RM's centring shift). Pretraining, SFT
and the RM run pre-training's Trainer, so their checkpoints, resume, non-finite guard and metrics are
pre-training's; PPO runs `pipeline.PPORun`, which writes the same files (RunConfig.steps counts PPO
iterations there, and `ppo.*` holds its optimiser). Overrides are key=value: `task.*`, `ppo.*` and
AlignConfig's own fields go to align.json, everything else to the RunConfig. Everything is validated before
anything is written: a directory whose align.json differs, or a source run of another task or model, is
refused. `run_toy` chains every stage (and the β = 0 and PPO-ptx variants) for bench/rlhf_toy.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from gptjax import config, model
from gptjax import metrics as metrics_lib
from gptjax.checkpoint import Checkpointer, CheckpointError
from gptjax.config import ModelConfig, RunConfig
from gptjax.errors import ConfigError
from gptjax.rlhf import pipeline, reward
from gptjax.rlhf.ppo import PPOConfig
from gptjax.rlhf.sequences import init_scalar_head
from gptjax.rlhf.toy import ToyTask
from gptjax.rundir import PathLike, RunDir, as_path, read_json, write_json

# stage -> (the stage its first source must be, default steps, batch size, peak learning rate)
STAGES: dict[str, tuple[str | None, int, int, float]] = {
    "pretrain": (None, 100, 32, 3e-3),
    "sft": ("pretrain", 100, 32, 1e-3),
    "rm": ("sft", 150, 16, 1e-3),
    "ppo": ("sft", 20, 16, 1e-3),  # sources: (SFT run, RM run); steps = PPO iterations
}


@dataclass(frozen=True)
class AlignConfig:
    """What a stage computes beyond its RunConfig; written to <run_dir>/align.json."""

    stage: str = "pretrain"
    task: ToyTask = ToyTask()
    sources: tuple[str, ...] = ()  # the run directories it starts from (sft: pretrain; rm: sft; ppo: sft, rm)
    rm_prompts: int = 512  # prompts whose K SFT samples are ranked to train the RM
    rm_held_out: int = 256  # prompts (K samples each) held out to measure it
    k: int = 4  # responses ranked per prompt (InstructGPT: 4-9)
    ppo: PPOConfig = PPOConfig()
    ptx_rows: int = 16  # pretraining rows per PPO minibatch (PPO-ptx)
    eval_prompts: int = 256  # held-out prompts PPO's policy is evaluated on

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r} is not one of {sorted(STAGES)}")
        if not 2 <= self.k <= 9:
            raise ConfigError(f"k={self.k} must be in 2..9 (responses ranked per prompt)")
        for name in ("rm_prompts", "rm_held_out", "ptx_rows", "eval_prompts"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def _read_align(run_dir: RunDir) -> AlignConfig:
    if not run_dir.align_file.is_file():
        raise ConfigError(f"{run_dir.align_file} not found: {run_dir.path} is not an alignment stage's run")
    return config.from_dict(AlignConfig, read_json(run_dir.align_file))


def _without_dropout(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)


def prepare(
    stage: str, run_dir: PathLike, sources: Sequence[PathLike] = (), overrides: Sequence[str] = ()
) -> tuple[RunConfig, AlignConfig]:
    """The (RunConfig, AlignConfig) of a stage from its defaults, its source runs and key=value overrides;
    validates everything against the sources and a run already in `run_dir`, writes nothing."""
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is not one of {sorted(STAGES)}")
    wanted, steps, batch_size, learning_rate = STAGES[stage]
    align_fields = {f.name for f in dataclasses.fields(AlignConfig)} - {"stage", "sources"}
    is_align = lambda o: o.split("=", 1)[0].strip().split(".")[0] in align_fields  # noqa: E731
    paths = tuple(os.path.abspath(os.fspath(s)) for s in sources)
    if len(paths) != (0 if wanted is None else 2 if stage == "ppo" else 1):
        raise ConfigError(f"stage {stage} needs {'no' if wanted is None else wanted} source run(s), got {paths}")
    base_task, cfg = ToyTask(), None
    if paths:
        first = _read_align(RunDir(paths[0]))
        if first.stage != wanted:
            raise ConfigError(f"{paths[0]} is a {first.stage} run; stage {stage} starts from a {wanted} run")
        if stage == "ppo" and _read_align(RunDir(paths[1])).stage != "rm":
            raise ConfigError(f"{paths[1]} is not a reward-model (rm) run")
        base_task, cfg = first.task, RunDir(paths[0]).read_config().model
    align = config.override(
        AlignConfig(stage=stage, task=base_task, sources=paths), [o for o in overrides if is_align(o)]
    )
    if paths and align.task != base_task:
        raise ConfigError(f"task {align.task} differs from the task of {paths[0]} ({base_task})")
    cfg = cfg or align.task.model_config(n_ctx=16, d_model=32, n_layer=2)
    run = pipeline.stage_run(cfg, steps, batch_size, learning_rate, run_dir=os.fspath(run_dir))
    own = [o for o in overrides if not is_align(o)]
    run = config.override(run, ["optim.warmup_steps=0", *own])  # the warm-up follows the steps given ...
    if not any(o.split("=", 1)[0].strip() == "optim.warmup_steps" for o in own):  # ... unless it is given
        run = config.override(run, [f"optim.warmup_steps={max(1, run.steps // 20)}"])
    if paths and _without_dropout(run.model) != _without_dropout(cfg):
        raise ConfigError(f"model {run.model} differs from the model of {paths[0]} ({cfg}) beyond dropout")
    for source in paths[1:]:
        if _without_dropout(RunDir(source).read_config().model) != _without_dropout(cfg):
            raise ConfigError(f"{source} has another model than {paths[0]}")
    directory = RunDir(run_dir)
    if directory.align_file.is_file() and _read_align(directory) != align:
        raise ConfigError(
            f"{directory.align_file} describes another stage ({_read_align(directory)}); use a new run_dir"
        )
    directory.check_same_run(run)
    return run, align


def load_params(run_dir: PathLike, abstract: Any) -> Any:
    """The `params` of a run's latest checkpoint, shaped as `abstract`, on the first local device."""
    checkpointer = Checkpointer(RunDir(run_dir).checkpoints_dir)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise CheckpointError(f"{RunDir(run_dir).checkpoints_dir} holds no finished checkpoint")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
        return checkpointer.restore_subtree(step, {"params": target})["params"]
    finally:
        checkpointer.close()


def load_policy(run_dir: PathLike) -> Any:
    return load_params(run_dir, model.abstract_params(RunDir(run_dir).read_config().model))


def load_reward_model(run_dir: PathLike) -> Any:
    """The trained RM with its bias centred (reference responses score 0 on average)."""
    cfg = RunDir(run_dir).read_config().model
    rm = load_params(run_dir, jax.eval_shape(lambda: init_scalar_head(model.abstract_params(cfg), cfg)))
    shift = read_json(RunDir(run_dir).align_result_file)["bias_shift"]
    return {**rm, "head": {**rm["head"], "b": rm["head"]["b"] - jnp.float32(shift)}}


def run_stage(run: RunConfig, align: AlignConfig) -> dict[str, Any]:
    """Run (or resume) one prepared stage to its last step; its result (also align_result.json)."""
    directory, task = RunDir(run.run_dir), align.task
    if jax.process_index() == 0:
        write_json(directory.align_file, config.to_dict(align))
    result: dict[str, Any] = {"stage": align.stage}
    if align.stage == "pretrain":
        pipeline.pretrain(task, run)
    elif align.stage == "sft":
        pipeline.sft(task, run, load_policy(align.sources[0]))
    elif align.stage == "rm":
        sft = load_policy(align.sources[0])
        fit, held = pipeline.comparison_data(
            task, sft, run.model, align.rm_prompts, align.rm_held_out, align.k, run.seed
        )
        rm = pipeline.train_reward_model(run, sft, fit, held)
        shift = pipeline.reference_shift(rm, run.model, fit)
        rm = reward.center(rm, jnp.float32(shift))
        result |= {"bias_shift": shift, **pipeline.rm_figures(task, rm, run.model, held)}
    else:
        if jax.process_index() == 0:
            directory.write_config(run)
        sft, rm = load_policy(align.sources[0]), load_reward_model(align.sources[1])
        frozen = pipeline.Policy(run.model, sft, rm)
        ppo_run = pipeline.PPORun(task, frozen, align.ppo, run.seed, align.ptx_rows, run.mesh, run.run_dir)
        try:
            ppo_run.run(run.steps, run.checkpoint.every)
            policy = jax.device_get(ppo_run.current_state().params["policy"])
        finally:
            ppo_run.close()
        result |= pipeline.evaluate(task, frozen, policy, align.eval_prompts, run.seed)
        result["pretraining_loss"] = pipeline.pretraining_loss(task, policy, run.model, 64, run.seed)
    losses = pipeline.stage_losses(directory)
    if losses:
        result["loss"] = [losses[0], losses[-1]]
    if jax.process_index() == 0:
        write_json(directory.align_result_file, result)
        if align.stage == "ppo":
            directory.mark_done()
    return result


# -- the whole pipeline on the toy task (bench/rlhf_toy.py, `gptjax align toy`) -----------------------------


@dataclass(frozen=True)
class ToyExperiment:
    """Sizes of the end-to-end toy run: each stage is `prepare`d with these as overrides."""

    d_model: int = 64
    n_layer: int = 2
    pretrain_steps: int = 100
    sft_steps: int = 100
    rm_steps: int = 300
    rm_prompts: int = 512
    k: int = 8
    held_out_prompts: int = 256
    ppo_iterations: int = 10
    beta0_iterations: int = 30  # PPO with β = 0 runs longer (over-optimisation: bench/rlhf_toy.py --overopt)
    ppo_learning_rate: float = 1e-3
    ptx_coef: float = 0.05  # the paper's 27.8 is for its loss scale; the toy's pretraining loss is per token
    seed: int = 0


Stage = Callable[[str, str, Sequence[str], list[str]], dict[str, Any]]


def toy_stage(task: ToyTask, exp: ToyExperiment, work_dir: PathLike) -> Stage:
    """`stage(name, directory, sources, overrides)`: prepare and run (or resume) one stage in
    `work_dir`/directory, its sources named relative to `work_dir`, with the experiment's seed."""
    root = as_path(work_dir)

    def stage(name: str, directory: str, sources: Sequence[str], overrides: list[str]) -> dict[str, Any]:
        paths = [os.fspath(root / s) for s in sources]
        return run_stage(*prepare(name, root / directory, paths, [*overrides, f"seed={exp.seed}"]))

    return stage


def toy_supervised(
    task: ToyTask, exp: ToyExperiment, stage: Stage, rm_prompts: int | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pretraining, SFT and an RM on `rm_prompts` (default: the experiment's) prompts, in the directories
    pretrain, sft and rm (rm<n> for another size); their figures under pretrain_loss, sft_loss and rm."""
    n = exp.rm_prompts if rm_prompts is None else rm_prompts
    tasks = [f"task.{k}={v}" for k, v in dataclasses.asdict(task).items()]
    size = [f"model.d_model={exp.d_model}", f"model.n_layer={exp.n_layer}"]
    out: dict[str, Any] = {}
    out["pretrain_loss"] = stage("pretrain", "pretrain", [], [*tasks, *size, f"steps={exp.pretrain_steps}"])["loss"]
    out["sft_loss"] = stage("sft", "sft", ["pretrain"], [f"steps={exp.sft_steps}"])["loss"]
    log(f"pretrain loss {out['pretrain_loss']}, SFT loss {out['sft_loss']}")
    rm_over = [f"steps={exp.rm_steps}", f"rm_prompts={n}", f"rm_held_out={exp.held_out_prompts}", f"k={exp.k}"]
    out["rm"] = stage("rm", rm_dir(exp, n), ["sft"], rm_over)
    log(f"RM on {n} prompts {out['rm']}")
    return out


def rm_dir(exp: ToyExperiment, rm_prompts: int) -> str:
    return "rm" if rm_prompts == exp.rm_prompts else f"rm{rm_prompts}"


def ppo_overrides(exp: ToyExperiment) -> list[str]:
    """The overrides every toy PPO run shares (plain PPO: no ptx)."""
    base = [f"ppo.learning_rate={exp.ppo_learning_rate}", "ppo.epochs=2", f"eval_prompts={exp.held_out_prompts}"]
    return [*base, "ppo.ptx_coef=0", f"checkpoint.every={exp.ppo_iterations}"]


def run_toy(
    task: ToyTask, exp: ToyExperiment, work_dir: PathLike, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every stage (one run directory each under `work_dir`, resumed where present) and every figure of the
    issue's evidence list, as one JSON-able dict."""
    root = as_path(work_dir)
    stage = toy_stage(task, exp, root)
    out: dict[str, Any] = {"task": dataclasses.asdict(task), "experiment": dataclasses.asdict(exp)}
    out |= toy_supervised(task, exp, stage, log=log)

    cfg = RunDir(root / "sft").read_config().model
    sft = load_policy(root / "sft")
    frozen = pipeline.Policy(cfg, sft, load_reward_model(root / "rm"))
    n_eval = exp.held_out_prompts
    out["sft"] = pipeline.evaluate(task, frozen, sft, n_eval, exp.seed) | {
        "pretraining_loss": pipeline.pretraining_loss(task, sft, cfg, 64, exp.seed)
    }
    out["best_of_n"] = pipeline.best_of_n(task, frozen, n_eval, (1, 2, 4, 8, 16, 32, 64), exp.seed)
    log(f"SFT {out['sft']}\nbest-of-n {out['best_of_n']}")
    base = ppo_overrides(exp)
    variants = {
        "ppo": [f"steps={exp.ppo_iterations}"],
        "ppo_ptx": [f"steps={exp.ppo_iterations}", f"ppo.ptx_coef={exp.ptx_coef}"],
        "ppo_beta0": [f"steps={exp.beta0_iterations}", "ppo.kl_coef=0"],
    }
    for name, extra in variants.items():
        out[name] = toy_ppo(stage, root, name, "rm", base + extra)
        log(f"{name} {out[name]['held_out']}")
    return out


def toy_ppo(stage: Stage, root: PathLike, name: str, rm: str, overrides: list[str]) -> dict[str, Any]:
    """Run PPO from sft against the RM in directory `rm`: its config, per-iteration history and held-out
    figures."""
    held_out = stage("ppo", name, ["sft", rm], overrides)
    directory = RunDir(as_path(root) / name)
    history = metrics_lib.read_metrics(directory.metrics_file)
    return {"config": read_json(directory.align_file)["ppo"], "history": history, "held_out": held_out}
