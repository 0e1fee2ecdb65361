"""The one typed configuration object, loaded from YAML and validated once at the edge.

``VLARLConfig`` holds every setting of a run: top-level run settings plus the
``rollout``, ``ppo``, ``lora``, ``model`` and ``sft`` sections. YAML files
(``params/*.yaml``), notebook parameters (papermill) and CLI flags all map onto
it; ``apply_overrides`` changes only the keys it is given.

Rules worth knowing:

* Unknown keys, wrong types and impossible values raise ``ConfigError`` (a
  ``ValueError``) with a one-line message naming the key. An int is accepted
  for a float field; a bool is never an int and a str is never a number.
* A file or dict may leave keys out; they take the defaults below (which are
  the values of ``params/default.yaml``).
* ``lora_rank`` / ``lora_alpha`` (top level, the original design's keys) are
  aliases of ``lora.rank`` / ``lora.alpha``: a dict may give either or both
  (both must then agree), and an override of either sets both.
* Batch bound: one update's batch holds at most
  ``num_rollouts_per_update * max_steps`` steps (every episode at full
  length), so ``ppo.minibatch_size`` may not exceed that bound. When a real
  batch is shorter than a minibatch, the PPO update uses the whole batch as
  one minibatch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lift.splits import SPLITS, list_splits
from lift.task import PICKPLACE_ENV_ID
from lift.types import CAMERAS, CONTROL_MODES
from vla_rl_lib.seed_ranges import (
    SEED_CEILING,
    TRAIN_SEED_FLOOR,
    SeedRangeError,
    SeedStream,
    check_disjoint,
    demo_attempts,
)
from vla_rl_lib.utils import write_text_atomic

TEMPLATE_NAMES = ("default", "fast", "full")


class ConfigError(ValueError):
    """A configuration key is unknown, mistyped or holds an impossible value."""


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass
class RolloutConfig:
    """How episodes are collected."""

    simulator: str = field(
        default="mujoco", metadata=_choices("mujoco", "maniskill", "genesis", "isaacsim")
    )
    env_id: str = "Lift-CRANE-X7"
    backend: str = field(default="cpu", metadata=_choices("cpu", "gpu"))
    render_mode: str = field(default="rgb_array", metadata=_choices("rgb_array"))
    num_parallel_envs: int = 4
    num_rollouts_per_update: int = 8  # episodes per update
    max_steps: int = 60  # per episode; a longer episode is truncated (and bootstrapped)
    use_binary_reward: bool = True
    temperature: float = 1.0  # sampling temperature of the action tokens
    camera: str = field(default="third_person", metadata=_choices(*CAMERAS))
    image_size: int = 64  # square renders, pixels per side
    media_size: int = 256  # evaluation videos, GIFs and filmstrips (pixels per side); the policy sees image_size
    control_mode: str = field(default="pd_joint_delta_pos", metadata=_choices(*CONTROL_MODES))
    executor: str = field(default="local", metadata=_choices("local", "ray"))
    ray_address: str | None = None  # None: start a local Ray; "auto" or "host:port": join one
    num_workers: int = 1
    worker_num_cpus: float = 1.0
    worker_num_gpus: float = 0.0
    # The batch is stepped in this many groups of envs (one simulator each; CPU backends only);
    # overlap runs one group's policy call while another's simulator steps, and plays the same
    # rollout as overlap off, to the bit. Off by default: on the tiny VLA a policy call costs
    # nearly as much for half the batch, and the GIL serializes both threads' Python.
    env_groups: int = 1
    overlap: bool = False


@dataclass
class PPOConfig:
    """The policy-gradient update (PPO with a critic, or critic-free GRPO)."""

    algorithm: str = field(default="ppo", metadata=_choices("ppo", "grpo"))
    learning_rate: float = 2e-5
    value_learning_rate: float = 5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_ratio: float = 0.2
    clip_ratio_high: float | None = None  # None: symmetric clip (DAPO uses a higher upper clip)
    value_loss_coef: float = 0.5
    entropy_coef: float = 0.0
    num_epochs: int = 2
    minibatch_size: int = 64
    micro_batch_size: int = 32  # gradient accumulation chunk; bounds activation memory
    max_grad_norm: float = 1.0
    target_kl: float | None = None  # None: no early stop
    clip_value_loss: bool = True
    value_clip_range: float = 0.2
    value_loss_type: str = field(default="mse", metadata=_choices("mse", "huber"))
    normalize_advantages: bool = True  # PPO only: GRPO's advantages are normalized per group
    group_size: int = 4  # GRPO: rollouts that share one start state
    # torch intra-op threads during the update on CPU (rollouts keep one); 0 = one per core.
    # 1 by default: on a busy 2-core machine 2 threads made the update 13x slower (spinning
    # OpenMP workers waiting for a descheduled peer); raise it on an idle machine.
    update_threads: int = 1


@dataclass
class LoRAConfig:
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class ModelConfig:
    name: str = field(default="tiny", metadata=_choices("tiny", "openvla"))
    decoding: str = field(default="parallel", metadata=_choices("parallel", "autoregressive"))
    image_size: int = 64
    # Sizes of the tiny local VLA (ignored by OpenVLA); text decoder first, then vision.
    hidden_size: int = 96
    num_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_num_attention_heads: int = 2
    vision_intermediate_size: int = 128
    patch_size: int = 16
    unnorm_key: str | None = None  # dataset key of the un-normalization statistics
    dtype: str = field(default="float32", metadata=_choices("float32", "bfloat16", "float16"))
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute

    def tiny_vla_sizes(self) -> dict[str, int]:
        """These sizes under the names of ``vla_rl_lib.policy.tiny_vla.TinyVLAConfig``."""
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "vision_hidden_size": self.vision_hidden_size,
            "vision_intermediate_size": self.vision_intermediate_size,
            "vision_layers": self.vision_layers,
            "vision_heads": self.vision_num_attention_heads,
            "text_hidden_size": self.hidden_size,
            "text_intermediate_size": self.intermediate_size,
            "text_layers": self.num_layers,
            "text_heads": self.num_attention_heads,
        }


@dataclass
class SFTConfig:
    """Behaviour cloning on scripted demonstrations before RL."""

    num_demos: int = 20  # scripted demos for the warm start when no checkpoint is given; 0 = none
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    demo_seed: int = 12345
    dataset_dir: str = "outputs/demos"


@dataclass
class VLARLConfig:
    experiment_name: str = "crane_x7_pickplace"
    seed: int = 0
    device: str = field(default="auto", metadata=_choices("cpu", "cuda", "auto"))
    pretrained_checkpoint: str | None = None
    sft_checkpoint: str | None = None
    lora_rank: int = 8  # alias of lora.rank
    lora_alpha: float = 16.0  # alias of lora.alpha
    num_updates: int = 1000
    # null: prompt the policy with each episode's instruction from the env (Observation.instructions);
    # a string overrides it for every episode (single-instruction tasks such as Lift-CRANE-X7).
    language_instruction: str | None = None
    use_wandb: bool = False
    wandb_project: str = "vla-rl"
    log_interval: int = 1
    eval_interval: int = 40  # 0: never evaluate during training
    save_interval: int = 40  # 0: save only at the end
    num_eval_episodes: int = 100
    output_dir: str = "outputs"
    eval_seed: int = 1_000_000
    # Splits evaluated every eval_interval updates (lift.list_splits): val chooses checkpoint_best,
    # the rest are reported only. The task's other splits (OOD) are evaluated once, at the end.
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    trust_remote_code: list[str] = field(default_factory=lambda: ["openvla/openvla-7b"])
    max_consecutive_skips: int = 5
    max_minutes: float | None = 50.0  # stop at the first update past this much training wall-clock
    distributed_strategy: str = field(default="ddp", metadata=_choices("ddp", "fsdp"))  # under torchrun
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    def max_batch_steps(self) -> int:
        """Upper bound on one update's batch: every episode runs to ``max_steps``."""
        return self.rollout.num_rollouts_per_update * self.rollout.max_steps


SECTIONS: dict[str, type] = {
    "rollout": RolloutConfig,
    "ppo": PPOConfig,
    "lora": LoRAConfig,
    "model": ModelConfig,
    "sft": SFTConfig,
}
_ALIASES = {"lora_rank": "lora.rank", "lora_alpha": "lora.alpha"}


# ---------------------------------------------------------------- key names


def _scalar_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in SECTIONS]


def all_keys() -> list[str]:
    """Every valid key as a dotted name ("seed", "ppo.learning_rate", ...)."""
    keys = [f.name for f in _scalar_fields(VLARLConfig)]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _unknown_key(key: str) -> ConfigError:
    keys = all_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
    hint = f"did you mean {close[0]!r}?" if close else f"valid sections: {', '.join(SECTIONS)}"
    return ConfigError(f"unknown config key {key!r}; {hint}")


# ---------------------------------------------------------------- types


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return "None" if hint is type(None) else hint.__name__


def _matches(value: Any, hint: Any) -> tuple[bool, Any]:
    """(does value fit hint, value converted to it)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, converted = _matches(value, arm)
            if ok:
                return True, converted
        return False, value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False, value
        converted = []
        for element in value:
            ok, element = _matches(element, item)
            if not ok:
                return False, value
            converted.append(element)
        return True, converted
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:  # inf and nan pass every `> 0` check below, so they stop here
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False, value
        try:
            converted = float(value)
        except OverflowError:  # an int beyond float range
            return False, value
        return math.isfinite(converted), converted
    return isinstance(value, hint), value


def _build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in hints or key in SECTIONS:
            raise _unknown_key(dotted)
        ok, converted = _matches(value, hints[key])
        if not ok and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key {dotted!r} must be a finite number, got {value!r}")
        if not ok:
            raise ConfigError(
                f"config key {dotted!r} expects {_type_name(hints[key])}, "
                f"got {value!r} ({type(value).__name__})"
            )
        kwargs[key] = converted
    return cls(**kwargs)


# ---------------------------------------------------------------- values


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {why}")


def _check_choices(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices is not None:
            value = getattr(obj, f.name)
            _check(value in choices, prefix + f.name, value, f"choose one of {list(choices)}")


def validate_config(cfg: VLARLConfig) -> None:
    """Raise ``ConfigError`` on the first impossible or inconsistent value."""
    _check_choices(cfg, "")
    for section in SECTIONS:
        _check_choices(getattr(cfg, section), f"{section}.")
    r, p, lo, m, s = cfg.rollout, cfg.ppo, cfg.lora, cfg.model, cfg.sft

    _check(
        cfg.experiment_name.strip() != "" and "/" not in cfg.experiment_name,
        "experiment_name",
        cfg.experiment_name,
        "give a non-empty name without '/' (it names a folder)",
    )
    _check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    _check(cfg.eval_seed >= 0, "eval_seed", cfg.eval_seed, "must be >= 0")
    for key in ("pretrained_checkpoint", "sft_checkpoint"):
        value = getattr(cfg, key)
        _check(
            value is None or value.strip() != "",
            key,
            value,
            "give a model id or path, or null for none",
        )
    _check(
        not (cfg.pretrained_checkpoint and cfg.sft_checkpoint),
        "sft_checkpoint",
        cfg.sft_checkpoint,
        f"set either pretrained_checkpoint ({cfg.pretrained_checkpoint!r}) or sft_checkpoint, not both",
    )
    if m.name == "openvla":
        _check(
            bool(cfg.pretrained_checkpoint or cfg.sft_checkpoint),
            "pretrained_checkpoint",
            None,
            "model.name='openvla' needs pretrained_checkpoint (e.g. 'openvla/openvla-7b') or sft_checkpoint",
        )
        _check(
            m.decoding == "autoregressive",
            "model.decoding",
            m.decoding,
            "OpenVLA decodes its action tokens one at a time; set model.decoding: autoregressive",
        )
    _check(
        cfg.lora_rank == lo.rank,
        "lora_rank",
        cfg.lora_rank,
        f"is an alias of lora.rank ({lo.rank}); set one of them, or both to the same value",
    )
    _check(
        cfg.lora_alpha == lo.alpha,
        "lora_alpha",
        cfg.lora_alpha,
        f"is an alias of lora.alpha ({lo.alpha}); set one of them, or both to the same value",
    )
    _check(cfg.num_updates >= 1, "num_updates", cfg.num_updates, "must be >= 1")
    _check(
        cfg.language_instruction is None or cfg.language_instruction.strip() != "",
        "language_instruction",
        cfg.language_instruction,
        "give the task in words, e.g. 'pick up the blue cube', or null to take each episode's from the env",
    )
    _check(
        cfg.language_instruction is None or r.env_id != PICKPLACE_ENV_ID,
        "language_instruction",
        cfg.language_instruction,
        f"{PICKPLACE_ENV_ID} names a different cube and plate each episode, so one instruction "
        "for all would hide the task; set language_instruction: null",
    )
    _check(
        cfg.wandb_project.strip() != "" or not cfg.use_wandb,
        "wandb_project",
        cfg.wandb_project,
        "use_wandb is on: give a project name",
    )
    _check(cfg.log_interval >= 1, "log_interval", cfg.log_interval, "must be >= 1 (updates)")
    _check(
        cfg.eval_interval >= 0,
        "eval_interval",
        cfg.eval_interval,
        "must be >= 0 (0 turns evaluation off)",
    )
    _check(
        cfg.save_interval >= 0,
        "save_interval",
        cfg.save_interval,
        "must be >= 0 (0 saves only at the end)",
    )
    _check(cfg.num_eval_episodes >= 0, "num_eval_episodes", cfg.num_eval_episodes, "must be >= 0")
    if cfg.eval_interval > 0:
        _check(
            cfg.num_eval_episodes >= 1,
            "num_eval_episodes",
            cfg.num_eval_episodes,
            "must be >= 1 while eval_interval > 0 (set eval_interval: 0 to turn evaluation off)",
        )
    _check_eval_splits(cfg)
    _check(cfg.output_dir.strip() != "", "output_dir", cfg.output_dir, "give a folder")
    _check(
        all(name.strip() for name in cfg.trust_remote_code),
        "trust_remote_code",
        cfg.trust_remote_code,
        "entries must be non-empty model ids or paths",
    )
    _check(
        cfg.max_consecutive_skips >= 1,
        "max_consecutive_skips",
        cfg.max_consecutive_skips,
        "must be >= 1",
    )
    _check(
        cfg.max_minutes is None or cfg.max_minutes > 0,
        "max_minutes",
        cfg.max_minutes,
        "must be > 0 (or null for no time limit)",
    )

    _check(r.env_id.strip() != "", "rollout.env_id", r.env_id, "give an environment id")
    _check(
        r.num_parallel_envs >= 1,
        "rollout.num_parallel_envs",
        r.num_parallel_envs,
        "need at least 1 environment",
    )
    _check(
        r.num_rollouts_per_update >= 1,
        "rollout.num_rollouts_per_update",
        r.num_rollouts_per_update,
        "must be >= 1",
    )
    _check(r.max_steps >= 1, "rollout.max_steps", r.max_steps, "must be >= 1")
    _check(
        r.temperature > 0,
        "rollout.temperature",
        r.temperature,
        "must be > 0 (logits are divided by it)",
    )
    _check(r.image_size >= 8, "rollout.image_size", r.image_size, "must be >= 8 pixels")
    _check(r.media_size >= 16, "rollout.media_size", r.media_size, "must be >= 16 pixels (256 for people)")
    _check(r.num_workers >= 1, "rollout.num_workers", r.num_workers, "must be >= 1")
    _check(r.worker_num_cpus > 0, "rollout.worker_num_cpus", r.worker_num_cpus, "must be > 0")
    _check(r.worker_num_gpus >= 0, "rollout.worker_num_gpus", r.worker_num_gpus, "must be >= 0")
    _check(
        cfg.ppo.update_threads >= 0,
        "ppo.update_threads",
        cfg.ppo.update_threads,
        "must be >= 0 (0: one per core)",
    )
    _check(r.env_groups >= 1, "rollout.env_groups", r.env_groups, "must be >= 1 (1: no groups)")
    _check(
        r.executor == "ray" or r.ray_address is None,
        "rollout.ray_address",
        r.ray_address,
        "only used with rollout.executor='ray'; set it to null or switch the executor",
    )

    _check(p.learning_rate > 0, "ppo.learning_rate", p.learning_rate, "must be > 0")
    _check(
        p.value_learning_rate >= 0, "ppo.value_learning_rate", p.value_learning_rate, "must be >= 0"
    )
    if p.algorithm == "ppo":
        _check(
            p.value_learning_rate > 0,
            "ppo.value_learning_rate",
            p.value_learning_rate,
            "must be > 0 for algorithm 'ppo' (the critic has to learn)",
        )
    _check(0 < p.gamma <= 1, "ppo.gamma", p.gamma, "must be in (0, 1]")
    _check(0 <= p.gae_lambda <= 1, "ppo.gae_lambda", p.gae_lambda, "must be in [0, 1]")
    _check(0 < p.clip_ratio < 1, "ppo.clip_ratio", p.clip_ratio, "must be in (0, 1)")
    if p.clip_ratio_high is not None:
        _check(
            p.clip_ratio_high >= p.clip_ratio,
            "ppo.clip_ratio_high",
            p.clip_ratio_high,
            f"must be >= ppo.clip_ratio ({p.clip_ratio}), or null for a symmetric clip",
        )
    _check(p.value_loss_coef >= 0, "ppo.value_loss_coef", p.value_loss_coef, "must be >= 0")
    _check(p.entropy_coef >= 0, "ppo.entropy_coef", p.entropy_coef, "must be >= 0")
    _check(p.num_epochs >= 1, "ppo.num_epochs", p.num_epochs, "must be >= 1")
    _check(p.minibatch_size >= 1, "ppo.minibatch_size", p.minibatch_size, "must be >= 1")
    _check(
        p.minibatch_size <= cfg.max_batch_steps(),
        "ppo.minibatch_size",
        p.minibatch_size,
        f"exceeds the largest possible batch, rollout.num_rollouts_per_update * rollout.max_steps "
        f"= {cfg.max_batch_steps()}",
    )
    _check(
        1 <= p.micro_batch_size <= p.minibatch_size,
        "ppo.micro_batch_size",
        p.micro_batch_size,
        f"must be in [1, ppo.minibatch_size={p.minibatch_size}]",
    )
    _check(p.max_grad_norm > 0, "ppo.max_grad_norm", p.max_grad_norm, "must be > 0")
    _check(
        p.target_kl is None or p.target_kl > 0,
        "ppo.target_kl",
        p.target_kl,
        "must be > 0, or null to turn early stopping off",
    )
    _check(p.value_clip_range > 0, "ppo.value_clip_range", p.value_clip_range, "must be > 0")
    _check(p.group_size >= 1, "ppo.group_size", p.group_size, "must be >= 1")
    if p.algorithm == "grpo":
        _check(
            p.group_size >= 2,
            "ppo.group_size",
            p.group_size,
            "GRPO needs groups of >= 2 rollouts (a group of one always has advantage 0)",
        )
        _check(
            r.num_rollouts_per_update % p.group_size == 0,
            "ppo.group_size",
            p.group_size,
            f"must divide rollout.num_rollouts_per_update ({r.num_rollouts_per_update})",
        )

    _check(lo.rank >= 1, "lora.rank", lo.rank, "must be >= 1")
    _check(lo.alpha > 0, "lora.alpha", lo.alpha, "must be > 0")
    _check(0 <= lo.dropout < 1, "lora.dropout", lo.dropout, "must be in [0, 1)")
    if isinstance(lo.target_modules, str):
        _check(
            lo.target_modules == "all-linear",
            "lora.target_modules",
            lo.target_modules,
            "give 'all-linear' or a list of module names",
        )
    else:
        _check(
            len(lo.target_modules) > 0 and all(n.strip() for n in lo.target_modules),
            "lora.target_modules",
            lo.target_modules,
            "give 'all-linear' or a non-empty list of module names",
        )

    for key in (
        "image_size",
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "intermediate_size",
        "vision_hidden_size",
        "vision_layers",
        "vision_num_attention_heads",
        "vision_intermediate_size",
        "patch_size",
    ):
        _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "must be >= 1")
    _check(
        m.image_size % m.patch_size == 0,
        "model.patch_size",
        m.patch_size,
        f"must divide model.image_size ({m.image_size})",
    )
    _check(
        m.hidden_size % m.num_attention_heads == 0,
        "model.num_attention_heads",
        m.num_attention_heads,
        f"must divide model.hidden_size ({m.hidden_size})",
    )
    _check(
        m.vision_hidden_size % m.vision_num_attention_heads == 0,
        "model.vision_num_attention_heads",
        m.vision_num_attention_heads,
        f"must divide model.vision_hidden_size ({m.vision_hidden_size})",
    )
    if m.name == "tiny":
        _check(
            r.image_size == m.image_size,
            "rollout.image_size",
            r.image_size,
            f"must equal model.image_size ({m.image_size}): the tiny model does not resize images",
        )

    _check(s.num_demos >= 0, "sft.num_demos", s.num_demos, "must be >= 0 (0 = no warm start)")
    _check(s.epochs >= 1, "sft.epochs", s.epochs, "must be >= 1")
    _check(s.batch_size >= 1, "sft.batch_size", s.batch_size, "must be >= 1")
    _check(s.learning_rate > 0, "sft.learning_rate", s.learning_rate, "must be > 0")
    _check(s.demo_seed >= 0, "sft.demo_seed", s.demo_seed, "must be >= 0")
    _check(s.dataset_dir.strip() != "", "sft.dataset_dir", s.dataset_dir, "give a folder")
    try:
        check_disjoint(seed_streams(cfg))
    except SeedRangeError as error:
        raise ConfigError(str(error)) from None


def _check_eval_splits(cfg: VLARLConfig) -> None:
    """``eval_splits`` names splits of the task and includes val, which chooses checkpoint_best."""
    env_id = cfg.rollout.env_id
    if env_id not in SPLITS:  # a task without named splits is evaluated on its held-out seeds
        return
    available = list_splits(env_id)
    unknown = [name for name in cfg.eval_splits if name not in available]
    _check(not unknown, "eval_splits", cfg.eval_splits,
           f"{unknown} are not splits of {env_id}; available: {available}")  # fmt: skip
    _check(
        "val" in cfg.eval_splits or cfg.eval_interval == 0,
        "eval_splits",
        cfg.eval_splits,
        "must include 'val': checkpoint_best is chosen on val, never on test or OOD splits",
    )


def seed_streams(cfg: VLARLConfig) -> list[SeedStream]:
    """Every start-seed stream the run draws from; ``validate_config`` keeps them disjoint.

    The ranges are seeds of the ``train`` split: training episodes and the demonstrations play
    it. The evaluation range is played on each of ``eval_splits`` (val, test) and, at the end,
    the OOD splits; a split other than train mixes its own stream into every episode's
    generator (``lift.task.episode_rng``), so the same seed number gives an independent start
    there and demonstration seeds cannot leak into val or test even where the numbers meet.
    The evaluation range is still kept apart from the demonstrations and training because
    ``evaluate --splits train`` (and a task without named splits) plays it on train itself.
    """
    streams = [SeedStream("training", "fixed", range(TRAIN_SEED_FLOOR, SEED_CEILING))]
    if cfg.num_eval_episodes > 0:
        streams.append(
            SeedStream("evaluation", "eval_seed", range(cfg.eval_seed, cfg.eval_seed + cfg.num_eval_episodes))
        )
    if cfg.sft.num_demos > 0:
        start = cfg.sft.demo_seed
        streams.append(
            SeedStream("demonstration", "sft.demo_seed", range(start, start + demo_attempts(cfg.sft.num_demos)))
        )
    return streams


# ---------------------------------------------------------------- dicts


def config_from_dict(d: dict[str, Any]) -> VLARLConfig:
    """Build and validate a config from a (possibly partial) nested dict."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(d).__name__}")
    d = {k: (dict(v) if k in SECTIONS and isinstance(v, dict) else v) for k, v in d.items()}
    for alias, dotted in _ALIASES.items():
        section, key = dotted.split(".")
        lora = d.setdefault(section, {})
        if not isinstance(lora, dict):
            break  # reported below
        if alias in d and key in lora and d[alias] != lora[key]:
            raise ConfigError(
                f"{alias}={d[alias]!r} disagrees with {dotted}={lora[key]!r}; "
                f"{alias} is an alias of {dotted}: give one, or both equal"
            )
        if alias in d:
            lora[key] = d[alias]
        elif key in lora:
            d[alias] = lora[key]
    sections = {}
    for section, cls in SECTIONS.items():
        values = d.pop(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        sections[section] = _build_section(cls, values, f"{section}.")
    top = _build_section(VLARLConfig, d, "")
    cfg = dataclasses.replace(top, **sections)
    validate_config(cfg)
    return cfg


def config_to_dict(cfg: VLARLConfig) -> dict[str, Any]:
    """A nested dict of plain values; ``config_from_dict`` inverts it exactly."""
    return dataclasses.asdict(cfg)


def _flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"ppo": {"gamma": 1}, "ppo.clip_ratio": .1, "learning_rate": 1e-4} -> dotted keys."""
    top_level = {f.name for f in _scalar_fields(VLARLConfig)}
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in flat and flat[key] != value:
            raise ConfigError(
                f"override {key!r} is given twice with different values: {flat[key]!r} and {value!r}"
            )
        flat[key] = value

    for key, value in overrides.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"override of section {key!r} must be a mapping like {{'{key}': {{...}}}}, got {value!r}"
                )
            for sub, sub_value in value.items():
                put(f"{key}.{sub}", sub_value)
        elif "." in key:
            put(key, value)
        elif key in top_level:
            put(key, value)
        else:
            owners = [
                s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}
            ]
            if len(owners) > 1:
                options = " or ".join(f"'{s}.{key}'" for s in owners)
                raise ConfigError(f"override {key!r} is ambiguous; write {options}")
            if not owners:
                raise _unknown_key(key)
            put(f"{owners[0]}.{key}", value)
    for alias, dotted in _ALIASES.items():
        if alias in flat and dotted in flat and flat[alias] != flat[dotted]:
            raise ConfigError(
                f"overrides {alias}={flat[alias]!r} and {dotted}={flat[dotted]!r} disagree; they are aliases"
            )
        if alias in flat or dotted in flat:
            flat[alias] = flat[dotted] = flat.get(alias, flat.get(dotted))
    return flat


def apply_overrides(cfg: VLARLConfig, overrides: dict[str, Any]) -> VLARLConfig:
    """A new validated config where only the given keys change.

    Keys may be nested (``{"ppo": {"learning_rate": 1e-4}}``, as papermill
    passes notebook parameters), dotted (``{"ppo.learning_rate": 1e-4}``) or
    flat (``{"seed": 3}``; a section key such as ``"learning_rate"`` is
    accepted when exactly one section has it).
    """
    d = config_to_dict(cfg)
    for key, value in _flatten_overrides(overrides).items():
        parts = key.split(".")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] not in SECTIONS):
            raise _unknown_key(key)
        if len(parts) == 2:
            section, sub = parts
            if sub not in d[section]:
                raise _unknown_key(key)
            d[section][sub] = value
        else:
            if key not in d or key in SECTIONS:
                raise _unknown_key(key)
            d[key] = value
    return config_from_dict(d)


# ---------------------------------------------------------------- YAML files


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_config(path: str | os.PathLike) -> VLARLConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; templates: {', '.join(TEMPLATE_NAMES)} in {template_dir()}"
        )
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    try:
        return config_from_dict(data if data is not None else {})
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def save_config(cfg: VLARLConfig, path: str | os.PathLike) -> None:
    """Write YAML atomically (a temp file in the same folder, then rename)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    write_text_atomic(path, text)


def template_dir() -> Path:
    """``params/`` at the repository root (this file lives in <root>/vla_rl_lib/)."""
    return Path(__file__).resolve().parent.parent / "params"


def load_template(name: str) -> VLARLConfig:
    if name not in TEMPLATE_NAMES:
        close = difflib.get_close_matches(name, TEMPLATE_NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {list(TEMPLATE_NAMES)}"
        raise ConfigError(f"unknown config template {name!r}; {hint}")
    path = template_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"template {path} is missing: the templates ship in the repository's params/ folder; "
            "install the package editable (pip install -e .) from a checkout"
        )
    return load_config(path)
