"""The one typed configuration object: a pydantic schema, loaded from YAML and validated once.

``VLARLConfig`` holds every setting of a run: top-level run settings plus the ``rollout``,
``ppo``, ``lora``, ``model`` and ``sft`` sections. Each key is declared once below, with its
type, bounds, default and a one-line description; everything else is derived from that:
YAML loading (``load_config``), the CLI flags (``cli_flags``), the notebook parameters cells
and ``papermill --help-notebook`` (``vla_rl_lib.notebook``), and the full YAML that
``python -m vla_rl_lib config`` writes (``template_text``).

Rules worth knowing:

* Unknown keys, wrong types and impossible values raise ``ConfigError`` (a ``ValueError``)
  with a one-line message naming the dotted key. An int is accepted for a float field; a
  bool is never an int and a str is never a number (pydantic's strict mode); a tuple fills
  a list field. Building the config in Python (``VLARLConfig(...)``, ``model_validate``)
  raises the same one-line ``ConfigError`` as a YAML file.
* A file or dict may leave keys out; they take the defaults below, which are the values of
  ``params/default.yaml`` (a file generated from this schema). ``params/fast.yaml`` and
  ``params/full.yaml`` list only what differs from it.
* ``lora_rank`` / ``lora_alpha`` (top level, the original design's keys) are aliases of
  ``lora.rank`` / ``lora.alpha``: a dict may give either or both (both must then agree),
  and an override of either sets both.
* Batch bound: one update's batch holds at most ``num_rollouts_per_update * max_steps``
  steps (every episode at full length), so ``ppo.minibatch_size`` may not exceed that bound.
  When a real batch is shorter than a minibatch, the PPO update uses the whole batch as one
  minibatch.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from lift.splits import SPLITS, list_splits
from lift.task import PICKPLACE_ENV_ID
from lift.types import CAMERAS, CONTROL_MODES
from vla_rl_lib.policy.lora import LoRAConfig as AdapterConfig
from vla_rl_lib.policy.lora import target_modules_problem
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


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    """A cross-field rule: raise the one-line ``key=value is invalid: why``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {why}")


def setting(default: Any, description: str, *, shortcut: str | None = None, **bounds: Any) -> Any:
    """A schema field: its default, one-line description and bounds (``ge``, ``gt``, ``le``, ``lt``).

    ``shortcut``: a short name the CLI (``--<shortcut>``) and notebooks accept for the key.
    """
    extra = {"shortcut": shortcut} if shortcut else None
    return Field(default, description=description, json_schema_extra=extra, **bounds)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _folder_name(value: str) -> str:
    if not value.strip() or "/" in value:
        raise ValueError("give a non-empty name without '/' (it names a folder)")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]
FolderName = Annotated[str, AfterValidator(_folder_name)]
Camera = Literal[CAMERAS]  # type: ignore[valid-type]
ControlMode = Literal[CONTROL_MODES]  # type: ignore[valid-type]


def _takes_list(annotation: Any) -> bool:
    """Whether a field holds a list (``list[str]``, ``str | list[str]``, ``list[str] | None``)."""
    if typing.get_origin(annotation) is Annotated:
        return _takes_list(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_list(arm) for arm in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


class _Section(BaseModel):
    # strict: a bool is not an int and a str is not a number; an int still fills a float
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def __init__(self, /, **data: Any) -> None:
        """Built in Python (a notebook, a script): a bad value is the same one-line
        ``ConfigError`` as in a YAML file, not pydantic's multi-line ``ValidationError``."""
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise _construction_error(type(self), error, data) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """As pydantic's, with a bad value raised as the one-line ``ConfigError``."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as error:
            raise _construction_error(cls, error, obj if isinstance(obj, dict) else {}) from None

    @model_validator(mode="before")
    @classmethod
    def _tuples_as_lists(cls, data: Any) -> Any:
        """A tuple fills a list field (Python users write ``("val", "test")``); strict mode
        otherwise refuses it, and nothing else is loosened."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {key: list(value) if isinstance(value, tuple) and key in fields
                and _takes_list(fields[key].annotation) else value
                for key, value in data.items()}  # fmt: skip


class RolloutConfig(_Section):
    """How episodes are collected."""

    simulator: Literal["mujoco", "maniskill", "genesis", "isaacsim"] = setting(
        "mujoco", "physics engine: mujoco | maniskill | genesis (the last two are optional installs)",
        shortcut="simulator")  # fmt: skip
    env_id: NonBlank = setting("Lift-CRANE-X7", "task: Lift-CRANE-X7 | PickPlace-CRANE-X7", shortcut="env_id")
    backend: Literal["cpu", "gpu"] = setting("cpu", "where the simulator runs: cpu | gpu", shortcut="backend")
    num_parallel_envs: int = setting(
        4, "batched envs stepped together (4: 2 cores, rendering 64x64 is cheap)", ge=1,
        shortcut="num_parallel_envs")  # fmt: skip
    num_rollouts_per_update: int = setting(
        8, "episodes per update; a batch holds at most this * max_steps steps", ge=1,
        shortcut="num_rollouts")  # fmt: skip
    max_steps: int = setting(
        60, "steps per episode (6 s at 10 Hz; the expert needs about 42); longer is truncated", ge=1
    )
    use_binary_reward: bool = setting(True, "reward 1.0 on success else 0.0 (false: shaped dense reward)")
    temperature: float = setting(1.0, "action-token sampling temperature during rollouts", gt=0,
                                 shortcut="temperature")  # fmt: skip
    camera: Camera = setting("third_person", f"the policy's view: {' | '.join(CAMERAS)}")
    image_size: int = setting(64, "render size in pixels per side; equals model.image_size for the tiny model", ge=8)
    media_size: int = setting(256, "videos, GIFs and filmstrips, pixels per side; the policy sees image_size", ge=16)
    control_mode: ControlMode = setting(
        "pd_joint_delta_pos", "action meaning; pd_joint_delta_pos moves joint targets <= 0.1 rad a step, "
        "pd_ee_delta_pos (mujoco only) the gripper <= 0.02 m a step along x, y, z"
    )
    executor: Literal["local", "ray"] = setting("local", "who steps the envs: local | ray", shortcut="executor")
    ray_address: str | None = setting(
        None, 'with executor ray: null starts a local Ray, "auto" or "host:port" joins one',
        shortcut="ray_address")  # fmt: skip
    num_workers: int = setting(1, "rollout workers (ray)", ge=1, shortcut="num_workers")
    worker_num_cpus: float = setting(1.0, "CPUs reserved per Ray worker", gt=0)
    worker_num_gpus: float = setting(0.0, "GPUs reserved per Ray worker", ge=0)
    env_groups: int = setting(
        1, "the batch is stepped in this many groups of envs, one simulator each (CPU backends)", ge=1)  # fmt: skip
    overlap: bool = setting(
        False, "one group's policy call runs while another group's simulator steps; same rollout to the bit")  # fmt: skip
    collect_ahead: bool = setting(
        False, "a worker process plays the next update's episodes during this update (one update of policy lag)")  # fmt: skip

    @model_validator(mode="after")
    def _ee_control_needs_mujoco(self) -> RolloutConfig:
        _check(self.control_mode != "pd_ee_delta_pos" or self.simulator == "mujoco", "rollout.control_mode",
               self.control_mode, f"runs on simulator 'mujoco' only (this is {self.simulator!r}); "
               "set rollout.simulator: mujoco or use pd_joint_delta_pos")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _ray_address_needs_ray(self) -> RolloutConfig:
        _check(self.executor == "ray" or self.ray_address is None, "rollout.ray_address", self.ray_address,
               "only used with rollout.executor='ray'; set it to null or switch the executor")  # fmt: skip
        return self


class PPOConfig(_Section):
    """The policy-gradient update (PPO with a critic, or critic-free GRPO)."""

    algorithm: Literal["ppo", "grpo"] = setting(
        "ppo", "ppo (critic + GAE) | grpo (group-normalized returns, no critic)", shortcut="algorithm"
    )
    learning_rate: float = setting(
        2e-5, "policy learning rate; 1e-4 gave approx_kl ~0.5 and clip fraction ~0.6 per update", gt=0,
        shortcut="learning_rate")  # fmt: skip
    value_learning_rate: float = setting(5e-4, "value head learning rate (> 0 for ppo: the critic has to learn)", ge=0)
    gamma: float = setting(0.99, "discount", gt=0, le=1)
    gae_lambda: float = setting(0.95, "GAE lambda", ge=0, le=1)
    clip_ratio: float = setting(0.2, "PPO's epsilon", gt=0, lt=1)
    clip_ratio_high: float | None = setting(
        None, "upper clip; null = symmetric, e.g. 0.28 for DAPO's clip-higher (>= clip_ratio)"
    )
    value_loss_coef: float = setting(0.5, "weight of the value loss", ge=0)
    entropy_coef: float = setting(0.0, "entropy bonus; sampling at temperature 1 already explores", ge=0)
    num_epochs: int = setting(2, "passes over each batch", ge=1, shortcut="num_epochs")
    minibatch_size: int = setting(64, "samples per optimizer step", ge=1)
    micro_batch_size: int = setting(
        32, "samples per forward/backward (gradient accumulation; bounds activation memory)", ge=1
    )
    max_grad_norm: float = setting(1.0, "gradient clipping norm", gt=0)
    target_kl: float | None = setting(
        None, "stop an update's epochs early past this approx KL; null = off", gt=0
    )
    clip_value_loss: bool = setting(True, "clip the value prediction's move, as PPO clips the policy's")
    value_clip_range: float = setting(0.2, "value prediction may move this far from the old value", gt=0)
    value_loss_type: Literal["mse", "huber"] = setting("mse", "mse | huber")
    normalize_advantages: bool = setting(
        True, "per batch, before the epochs (PPO; GRPO keeps its per-group ones)"
    )
    group_size: int = setting(4, "GRPO only: rollouts from one start state (divides num_rollouts_per_update)", ge=1)
    update_threads: int = setting(
        1, "torch threads during the update on CPU (rollouts keep one); 0 = one per core", ge=0)  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        if self.algorithm == "ppo":
            _check(self.value_learning_rate > 0, "ppo.value_learning_rate", self.value_learning_rate,
                   "must be > 0 for algorithm 'ppo' (the critic has to learn)")  # fmt: skip
        if self.clip_ratio_high is not None:
            _check(self.clip_ratio_high >= self.clip_ratio, "ppo.clip_ratio_high", self.clip_ratio_high,
                   f"must be >= ppo.clip_ratio ({self.clip_ratio}), or null for a symmetric clip")  # fmt: skip
        _check(self.micro_batch_size <= self.minibatch_size, "ppo.micro_batch_size", self.micro_batch_size,
               f"must be in [1, ppo.minibatch_size={self.minibatch_size}]")  # fmt: skip
        if self.algorithm == "grpo":
            _check(self.group_size >= 2, "ppo.group_size", self.group_size,
                   "GRPO needs groups of >= 2 rollouts (a group of one always has advantage 0)")  # fmt: skip
        return self


def _section_of(dataclass_type: type, doc: str) -> type[_Section]:
    """A config section whose keys are a pydantic dataclass's fields, declared there once."""
    fields = {name: (info.annotation, info) for name, info in dataclass_type.__pydantic_fields__.items()}
    return create_model(dataclass_type.__name__, __base__=_Section, __doc__=doc, **fields)


class LoRAConfig(_section_of(AdapterConfig, "Low-rank adapters instead of full fine-tuning.")):  # type: ignore[misc]
    """Low-rank adapters instead of full fine-tuning."""

    @model_validator(mode="after")
    def _targets(self) -> LoRAConfig:
        why = target_modules_problem(self.target_modules)
        _check(why is None, "lora.target_modules", self.target_modules, why or "")
        return self

    def adapter(self) -> AdapterConfig:
        """The policy package's ``LoRAConfig`` holding these values."""
        return AdapterConfig(**self.model_dump())


class ModelConfig(_Section):
    """The VLA: the tiny local model (sizes below) or OpenVLA."""

    name: Literal["tiny", "openvla"] = setting("tiny", "tiny (local, random init or SFT) | openvla")
    decoding: Literal["parallel", "autoregressive"] = setting(
        "parallel", "parallel (all action tokens in one pass) | autoregressive (OpenVLA)"
    )
    image_size: int = setting(64, "input pixels per side (64 / patch 16 = 16 image tokens)", ge=1)
    # Sizes of the tiny local VLA (ignored by OpenVLA); text decoder first, then vision.
    hidden_size: int = setting(96, "tiny model: text decoder width (about 1M parameters in all)", ge=1)
    num_layers: int = setting(4, "tiny model: text decoder layers", ge=1)
    num_attention_heads: int = setting(4, "tiny model: text decoder heads (divide hidden_size)", ge=1)
    intermediate_size: int = setting(256, "tiny model: text decoder MLP width", ge=1)
    vision_hidden_size: int = setting(64, "tiny model: vision encoder width", ge=1)
    vision_layers: int = setting(2, "tiny model: vision encoder layers", ge=1)
    vision_num_attention_heads: int = setting(2, "tiny model: vision heads (divide vision_hidden_size)", ge=1)
    vision_intermediate_size: int = setting(128, "tiny model: vision MLP width", ge=1)
    patch_size: int = setting(16, "tiny model: image patch side in pixels (divides image_size)", ge=1)
    vision_stem: Literal["patch", "conv"] = setting(
        "patch", "tiny model: pixels to image tokens by one linear patch projection (patch) or a "
        "small CNN of stride-2 3x3 convolutions (conv; patch_size a power of two)"
    )
    vision_film: bool = setting(
        False, "tiny model, conv stem only: FiLM-condition each stem convolution on the instruction "
        "(mean of its token embeddings; RT-1, BC-Z), so the image tokens can depend on the named cube"
    )
    unnorm_key: str | None = setting(
        None, "dataset key of the action un-normalization statistics; null when there is one set"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32", "float32 keeps rollout and recomputed log-probs equal"
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in backward: less memory, ~1/3 more compute"
    )

    @model_validator(mode="after")
    def _divisible(self) -> ModelConfig:
        _check(self.image_size % self.patch_size == 0, "model.patch_size", self.patch_size,
               f"must divide model.image_size ({self.image_size})")  # fmt: skip
        power_of_two = self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0
        _check(self.vision_stem != "conv" or power_of_two, "model.patch_size", self.patch_size,
               "must be a power of two (>= 2) with model.vision_stem: conv (each convolution halves the image)")  # fmt: skip
        _check(not self.vision_film or self.vision_stem == "conv", "model.vision_film", self.vision_film,
               f"needs model.vision_stem: conv (it is {self.vision_stem}); FiLM modulates the conv stem")  # fmt: skip
        _check(self.hidden_size % self.num_attention_heads == 0, "model.num_attention_heads",
               self.num_attention_heads, f"must divide model.hidden_size ({self.hidden_size})")  # fmt: skip
        _check(self.vision_hidden_size % self.vision_num_attention_heads == 0,
               "model.vision_num_attention_heads", self.vision_num_attention_heads,
               f"must divide model.vision_hidden_size ({self.vision_hidden_size})")  # fmt: skip
        return self

    def tiny_vla_sizes(self) -> dict[str, int | str | bool]:
        """These sizes (and the vision stem and FiLM) under the names of ``vla_rl_lib.policy.tiny_vla.TinyVLAConfig``."""
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
            "vision_stem": self.vision_stem,
            "vision_film": self.vision_film,
        }


LRSchedule = Literal["constant", "cosine"]  # sft.lr_schedule; sft/trainer.py reads the names here


class SFTConfig(_Section):
    """Behaviour cloning on scripted demonstrations before RL."""

    num_demos: int = setting(
        20, "scripted demos cloned before RL when no checkpoint is given; 0 = none", ge=0,
        shortcut="num_demos")  # fmt: skip
    epochs: int = setting(40, "passes over the demos", ge=1, shortcut="sft_epochs")
    batch_size: int = setting(32, "samples per optimizer step", ge=1)
    learning_rate: float = setting(1e-3, "behaviour-cloning learning rate", gt=0)
    lr_schedule: LRSchedule = setting(
        "constant", "constant | cosine (anneal the learning rate to 0 over the epochs, a step "
        "per batch)")  # fmt: skip
    demo_seed: int = setting(12345, "first demo episode seed (apart from training and eval seeds)", ge=0)
    dataset_dir: NonBlank = setting("outputs/demos", "where the demos are cached")
    augment_shift: int = setting(
        0, "random-shift augmentation of the SFT images: pad by this many pixels (edge replicated) "
        "and crop back at a random offset per sample; 0 = off", ge=0)  # fmt: skip
    demo_action_noise: float = setting(
        0.0, "DART: std of noise added to the expert's executed arm action (normalized units; "
        "the clean action is recorded); 0 = none", ge=0)  # fmt: skip
    demo_noise_correlation: float = setting(
        0.9, "step-to-step correlation of that noise (AR(1)): near 1 lets the arm drift for "
        "several steps before the expert pulls it back", ge=0, lt=1)  # fmt: skip


class VLARLConfig(_Section):
    """Every setting of a run."""

    experiment_name: FolderName = setting(
        "crane_x7_lift", "names the run folder under output_dir", shortcut="experiment_name"
    )
    seed: int = setting(0, "seed of the run's random streams", ge=0, shortcut="seed")
    device: Literal["cpu", "cuda", "auto"] = setting(
        "auto", "cpu | cuda | auto (cuda when available)", shortcut="device"
    )
    pretrained_checkpoint: NonBlank | None = setting(
        None, "model id or path to start from; null = the tiny model's random init", shortcut="pretrained"
    )
    sft_checkpoint: NonBlank | None = setting(
        None, "an SFT result to start RL from (exclusive with pretrained_checkpoint)", shortcut="sft_checkpoint"
    )
    lora_rank: int = setting(8, "alias of lora.rank (the original design's key); must agree with it")
    lora_alpha: float = setting(16.0, "alias of lora.alpha; must agree with it")
    num_updates: int = setting(1000, "rollout + PPO update cycles", ge=1, shortcut="num_updates")
    language_instruction: NonBlank | None = setting(
        None, "null: each episode's instruction from the env; a string overrides it for every episode",
        shortcut="instruction")  # fmt: skip
    use_wandb: bool = setting(False, "log to Weights & Biases as well as TensorBoard", shortcut="use_wandb")
    wandb_project: str = setting("vla-rl", "W&B project name", shortcut="wandb_project")
    log_interval: int = setting(1, "updates between progress lines when output is not a terminal", ge=1)
    eval_interval: int = setting(40, "updates between held-out evaluations; 0 = never", ge=0)
    save_interval: int = setting(40, "updates between checkpoints; 0 = only the final one", ge=0)
    num_eval_episodes: int = setting(100, "held-out episodes per evaluation, greedy decoding", ge=0)
    output_dir: NonBlank = setting("outputs", "where run folders are written", shortcut="output_dir")
    eval_seed: int = setting(1_000_000, "base of the held-out seed stream, far from training seeds", ge=0)
    eval_splits: list[str] = setting(
        ["val", "test"], "splits evaluated every eval_interval updates: val picks checkpoint_best, "
        "the rest are reported; the task's OOD splits are evaluated once, at the end")  # fmt: skip
    trust_remote_code: list[NonBlank] = setting(
        ["openvla/openvla-7b"], "model ids/paths allowed to run their own Python code"
    )
    max_consecutive_skips: int = setting(5, "stop after this many updates in a row with non-finite loss", ge=1)
    max_minutes: float | None = setting(
        50.0, "stop after the first update past this many minutes of training; null = no limit", gt=0
    )
    distributed_strategy: Literal["ddp", "fsdp"] = setting(
        "ddp", "under torchrun: ddp (a model copy per GPU) | fsdp (sharded); docs/scaling.md"
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)

    def max_batch_steps(self) -> int:
        """Upper bound on one update's batch: every episode runs to ``max_steps``."""
        return self.rollout.num_rollouts_per_update * self.rollout.max_steps

    @model_validator(mode="before")
    @classmethod
    def _sync_aliases(cls, data: Any) -> Any:
        return _sync_aliases(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _run_rules(self) -> VLARLConfig:
        _check_start(self)
        _check_batch(self)
        _check_logging(self)
        _check_eval_splits(self)
        _check_collect_ahead(self)
        _check_sft(self)
        try:
            check_disjoint(seed_streams(self))
        except SeedRangeError as error:
            raise ConfigError(str(error)) from None
        return self


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in VLARLConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
}
# Top-level keys that are aliases of section keys (the original design's names).
KEY_ALIASES = {"lora_rank": "lora.rank", "lora_alpha": "lora.alpha"}
# The shortcuts a notebook's parameters cell declares besides the keys (the CLI takes them all).
NOTEBOOK_SHORTCUTS = ("simulator", "num_parallel_envs", "learning_rate", "algorithm")
# Keys that existed once: (the only value they could hold, why they went). A file holding one
# at that value loads with the key dropped: run folders written before the removal keep
# resuming (a checkpoint's SHA-256 covers its config.yaml, so the line cannot be edited out).
# Any other value gets the one-line "was removed" error.
REMOVED_KEYS: dict[str, tuple[Any, str]] = {
    "rollout.render_mode": ("rgb_array", "frames are always RGB arrays (rgb_array was its only value); delete the line"),
}


# ---------------------------------------------------------------- cross-field rules


def _drop_removed(data: dict[str, Any]) -> None:
    """Drop removed keys that hold the only value they ever could (see ``REMOVED_KEYS``)."""
    for key, (legacy, _) in REMOVED_KEYS.items():
        section, _, leaf = key.rpartition(".")
        values = data.get(section) if section else data
        if isinstance(values, dict) and leaf in values and values[leaf] == legacy:
            del values[leaf]


def _sync_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """``lora_rank`` and ``lora.rank`` (and alpha) hold one value: fill the missing one."""
    data = {k: (dict(v) if k in SECTIONS and isinstance(v, dict) else v) for k, v in data.items()}
    _drop_removed(data)
    for alias, dotted in KEY_ALIASES.items():
        section, key = dotted.split(".")
        values = data.setdefault(section, {})
        if not isinstance(values, dict):
            break  # reported by the section's own validation
        if alias in data and key in values and data[alias] != values[key]:
            raise ConfigError(
                f"{alias}={data[alias]!r} disagrees with {dotted}={values[key]!r}; "
                f"{alias} is an alias of {dotted}: give one, or both equal"
            )
        if alias in data:
            values[key] = data[alias]
        elif key in values:
            data[alias] = values[key]
    return data


def _check_collect_ahead(cfg: VLARLConfig) -> None:
    """The local executor's rollout worker and the update each take one CPU core (README "Using
    both cores"); Ray's workers have their own resources."""
    if not cfg.rollout.collect_ahead or cfg.rollout.executor != "local":
        return
    _check(cfg.ppo.update_threads == 1, "ppo.update_threads", cfg.ppo.update_threads,
           "must be 1 with rollout.collect_ahead and the local executor: its rollout worker process "
           "uses the other core")  # fmt: skip
    _check(cfg.device != "cuda", "device", cfg.device,
           "rollout.collect_ahead with the local executor runs on CPU; set device: cpu, "
           "rollout.executor: ray, or rollout.collect_ahead: false")  # fmt: skip
    _check(cfg.rollout.backend == "cpu", "rollout.backend", cfg.rollout.backend,
           "rollout.collect_ahead with the local executor runs on CPU; set rollout.backend: cpu, "
           "rollout.executor: ray, or rollout.collect_ahead: false")  # fmt: skip


def _check_start(cfg: VLARLConfig) -> None:
    """Where the policy comes from, and what that model needs."""
    _check(not (cfg.pretrained_checkpoint and cfg.sft_checkpoint), "sft_checkpoint", cfg.sft_checkpoint,
           f"set either pretrained_checkpoint ({cfg.pretrained_checkpoint!r}) or sft_checkpoint, not both")  # fmt: skip
    m = cfg.model
    if m.name == "openvla":
        _check(bool(cfg.pretrained_checkpoint or cfg.sft_checkpoint), "pretrained_checkpoint", None,
               "model.name='openvla' needs pretrained_checkpoint (e.g. 'openvla/openvla-7b') or sft_checkpoint")  # fmt: skip
        _check(m.decoding == "autoregressive", "model.decoding", m.decoding,
               "OpenVLA decodes its action tokens one at a time; set model.decoding: autoregressive")  # fmt: skip
    if m.name == "tiny":
        _check(cfg.rollout.image_size == m.image_size, "rollout.image_size", cfg.rollout.image_size,
               f"must equal model.image_size ({m.image_size}): the tiny model does not resize images")  # fmt: skip
    _check(cfg.language_instruction is None or cfg.rollout.env_id != PICKPLACE_ENV_ID, "language_instruction",
           cfg.language_instruction,
           f"{PICKPLACE_ENV_ID} names a different cube and plate each episode, so one instruction "
           "for all would hide the task; set language_instruction: null")  # fmt: skip


def _check_sft(cfg: VLARLConfig) -> None:
    shift, size = cfg.sft.augment_shift, cfg.rollout.image_size
    _check(2 * shift < size, "sft.augment_shift", shift,
           f"must be below half of rollout.image_size ({size}): use at most {(size - 1) // 2}")  # fmt: skip


def _check_batch(cfg: VLARLConfig) -> None:
    """The PPO batch against what one update's rollouts can hold."""
    p, bound = cfg.ppo, cfg.max_batch_steps()
    _check(p.minibatch_size <= bound, "ppo.minibatch_size", p.minibatch_size,
           f"exceeds the largest possible batch, rollout.num_rollouts_per_update * rollout.max_steps = {bound}")  # fmt: skip
    if p.algorithm == "grpo":
        rollouts = cfg.rollout.num_rollouts_per_update
        _check(rollouts % p.group_size == 0, "ppo.group_size", p.group_size,
               f"must divide rollout.num_rollouts_per_update ({rollouts})")  # fmt: skip


def _check_logging(cfg: VLARLConfig) -> None:
    _check(cfg.wandb_project.strip() != "" or not cfg.use_wandb, "wandb_project", cfg.wandb_project,
           "use_wandb is on: give a project name")  # fmt: skip
    if cfg.eval_interval > 0:
        _check(cfg.num_eval_episodes >= 1, "num_eval_episodes", cfg.num_eval_episodes,
               "must be >= 1 while eval_interval > 0 (set eval_interval: 0 to turn evaluation off)")  # fmt: skip


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
    """Every start-seed stream the run draws from; validation keeps them disjoint.

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


# ---------------------------------------------------------------- key names and fields


def all_keys() -> list[str]:
    """Every valid key as a dotted name ("seed", "ppo.learning_rate", ...)."""
    keys = [name for name in VLARLConfig.model_fields if name not in SECTIONS]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{name}" for name in cls.model_fields]
    return keys


def field_info(key: str) -> Any:
    """The pydantic ``FieldInfo`` of a dotted key (its annotation, default, description)."""
    section, _, leaf = key.rpartition(".")
    cls = SECTIONS[section] if section else VLARLConfig
    return cls.model_fields[leaf]


def choices(key: str) -> list[Any] | None:
    """The allowed values of a key with a fixed set (``rollout.simulator``), else None."""
    annotation = field_info(key).annotation
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None


def shortcuts() -> dict[str, str]:
    """Short name -> dotted key, from the schema's ``shortcut=`` marks (CLI flags, notebooks)."""
    out = {}
    for key in all_keys():
        extra = field_info(key).json_schema_extra
        if isinstance(extra, dict) and extra.get("shortcut"):
            out[str(extra["shortcut"])] = key
    return out


def _unknown_key(key: str) -> ConfigError:
    if key in REMOVED_KEYS:
        return ConfigError(f"config key {key!r} was removed: {REMOVED_KEYS[key][1]}")
    keys = all_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
    hint = f"did you mean {close[0]!r}?" if close else f"valid sections: {', '.join(SECTIONS)}"
    return ConfigError(f"unknown config key {key!r}; {hint}")


# ---------------------------------------------------------------- pydantic errors -> one line


def type_name(hint: Any) -> str:
    """``float or None``, ``list of str``: how an error message names an annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arm) for arm in typing.get_args(hint))
    if origin is list:
        return f"list of {type_name(typing.get_args(hint)[0])}"
    if origin is Literal:
        return "str"
    if origin is Annotated:
        return type_name(typing.get_args(hint)[0])
    return "None" if hint is type(None) else hint.__name__


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_TYPE_ERRORS = ("_type", "_parsing", "none_required", "is_instance_of")


def _error_key(loc: tuple) -> str:
    """The dotted key an error location points at (list indexes and union arms dropped)."""
    names = [part for part in loc if isinstance(part, str)]
    if names and names[0] in SECTIONS and len(names) > 1:
        return f"{names[0]}.{names[1]}"
    return names[0] if names else ""


def _one_line(error: Any, data: dict[str, Any]) -> ConfigError:
    """One pydantic error as the one-line ``ConfigError`` users read."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    if isinstance(ctx.get("error"), ConfigError):
        return ctx["error"]
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a key that is not a string
        return _unknown_key(".".join(map(str, loc)))
    key = _error_key(loc)
    if key in SECTIONS and len([p for p in loc if isinstance(p, str)]) == 1:
        return ConfigError(f"config section {key!r} must be a mapping, got {error['input']!r}")
    value = _lookup(data, key)
    described = field_info(key).description if key in all_keys() else ""
    if kind == "finite_number":
        return ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return ConfigError(f"{key}={value!r} is invalid: must be {_BOUNDS[kind]} {bound:g} ({described})")
    if kind == "literal_error":
        return ConfigError(f"{key}={value!r} is invalid: choose one of {choices(key)}")
    if kind == "value_error":
        why = str(ctx.get("error", error["msg"]))
        return ConfigError(f"{key}={value!r} is invalid: {why} ({described})")
    expected = type_name(field_info(key).annotation) if key in all_keys() else "a valid value"
    return ConfigError(f"config key {key!r} expects {expected}, got {value!r} ({type(value).__name__})")


def _lookup(data: dict[str, Any], key: str) -> Any:
    section, _, leaf = key.rpartition(".")
    values = data.get(section, {}) if section else data
    return values.get(leaf) if isinstance(values, dict) else None


def _construction_error(cls: type[_Section], error: ValidationError, data: dict[str, Any]) -> ConfigError:
    """A section's or the whole config's validation error as the one-line ``ConfigError``,
    keys dotted from the top (``rollout.num_parallel_envs``) however it was built."""
    section = next((name for name, section_cls in SECTIONS.items() if section_cls is cls), None)
    if section is None:
        return _first_error(error.errors(), data)
    errors = [{**e, "loc": (section, *e["loc"])} for e in error.errors()]
    return _first_error(errors, {section: data})


def _first_error(errors: list[Any], data: dict[str, Any]) -> ConfigError:
    """The first key's error; of a union's several, the bound or rule it broke over 'wrong type'."""
    first = _error_key(errors[0]["loc"])
    same = [e for e in errors if _error_key(e["loc"]) == first]
    rule = [e for e in same if not e["type"].endswith(_TYPE_ERRORS)]
    return _one_line((rule or same)[0], data)


# ---------------------------------------------------------------- dicts


def config_from_dict(d: dict[str, Any]) -> VLARLConfig:
    """Build and validate a config from a (possibly partial) nested dict."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(d).__name__}")
    return VLARLConfig.model_validate(d)


def validate_config(cfg: VLARLConfig) -> None:
    """Raise ``ConfigError`` on the first impossible or inconsistent value (e.g. after
    ``model_copy(update=...)``, which does not validate)."""
    config_from_dict(config_to_dict(cfg))


def config_to_dict(cfg: VLARLConfig) -> dict[str, Any]:
    """A nested dict of plain values; ``config_from_dict`` inverts it exactly."""
    return cfg.model_dump()


def _put(flat: dict[str, Any], key: str, value: Any) -> None:
    if key in flat and flat[key] != value:
        raise ConfigError(f"override {key!r} is given twice with different values: {flat[key]!r} and {value!r}")
    flat[key] = value


def _dotted(key: str) -> str:
    """A flat override key as its dotted name: ``seed``, ``ppo.gamma``, or ``gamma`` -> ``ppo.gamma``."""
    if "." in key or key in VLARLConfig.model_fields:
        return key
    owners = [s for s, cls in SECTIONS.items() if key in cls.model_fields]
    if len(owners) > 1:
        options = " or ".join(f"'{s}.{key}'" for s in owners)
        raise ConfigError(f"override {key!r} is ambiguous; write {options}")
    if not owners:
        raise _unknown_key(key)
    return f"{owners[0]}.{key}"


def _flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"ppo": {"gamma": 1}, "ppo.clip_ratio": .1, "learning_rate": 1e-4} -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"override of section {key!r} must be a mapping like {{'{key}': {{...}}}}, got {value!r}"
                )
            for sub, sub_value in value.items():
                _put(flat, f"{key}.{sub}", sub_value)
        else:
            _put(flat, _dotted(key), value)
    for alias, dotted in KEY_ALIASES.items():
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
        if key not in all_keys():
            raise _unknown_key(key)
        section, _, leaf = key.rpartition(".")
        (d[section] if section else d)[leaf] = value
    return config_from_dict(d)


# ---------------------------------------------------------------- YAML files


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    """YAML text as Python values, ``1e-4`` read as a float."""
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | os.PathLike) -> VLARLConfig:
    """A YAML file over the defaults: keys it leaves out keep the schema's (= default.yaml's) values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; templates: {', '.join(TEMPLATE_NAMES)} in {template_dir()}"
        )
    try:
        data = read_yaml(path.read_text())
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


def _template_path(name: str) -> Path:
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
    return path


def load_template(name: str) -> VLARLConfig:
    """``params/<name>.yaml`` over the defaults (fast and full list only what differs)."""
    return load_config(_template_path(name))


# ---------------------------------------------------------------- the full YAML of a template

DEFAULT_HEADER = """\
# Default run: the tiny local VLA on a 2-core CPU, about an hour of training.
# Generated from the schema in vla_rl_lib/config.py (defaults and descriptions): edit the
# schema, then `python -m vla_rl_lib config --template default -o params/default.yaml`.
# Every key is listed; a value left out of a user file takes the value shown here.
"""


def yaml_value(value: Any) -> str:
    """One value as inline YAML (``[val, test]``, ``2.0e-05``, ``null``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _overlay_comments(text: str) -> tuple[str, dict[str, str]]:
    """An overlay file's leading comment block, and the comment of each key it sets (dotted)."""
    lines = text.splitlines()
    body = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header = "".join(f"{line}\n" for line in lines[:body])
    comments, section = {}, ""
    for line in lines:
        match = re.match(r"^( *)([A-Za-z_]\w*):(.*?)(?:\s+# ?(.*))?$", line)
        if match is None:
            continue
        indent, key, value, comment = match.groups()
        if not indent:
            section = key if not value.strip() else ""
        dotted = f"{section}.{key}" if indent and section else key
        if comment:
            comments[dotted] = comment
    return header, comments


def _key_line(key: str, value: Any, comment: str, indent: str) -> str:
    line = f"{indent}{key.rpartition('.')[2]}: {yaml_value(value)}"
    return f"{line.ljust(24)}  # {comment}\n" if comment else f"{line}\n"


def template_text(name: str) -> str:
    """The whole YAML of a template: every key with its value and a comment (what ``python -m
    vla_rl_lib config`` writes). Comments are the schema's descriptions, or the overlay's own
    comment where ``params/<name>.yaml`` sets the key."""
    header, comments, cfg = DEFAULT_HEADER, {}, VLARLConfig()
    if name != "default":  # default.yaml itself is this text for the schema's defaults
        header, comments = _overlay_comments(_template_path(name).read_text())
        cfg = load_template(name)
    values = config_to_dict(cfg)
    out = [header, "\n"]
    for key in VLARLConfig.model_fields:
        if key not in SECTIONS:
            out.append(_key_line(key, values[key], comments.get(key, field_info(key).description), ""))
    for section, cls in SECTIONS.items():
        out.append(f"\n{section}:  # {cls.__doc__}\n")
        for leaf in cls.model_fields:
            key = f"{section}.{leaf}"
            out.append(_key_line(key, values[section][leaf], comments.get(key, field_info(key).description), "  "))
    return "".join(out)
