"""Which policy a run starts from, and how a run checkpoint is turned back into a policy.

A run starts from exactly one base, recorded in ``trainer_state.json`` as
``base = {"kind": ..., "path": ...}``:

* ``sft``        — ``sft_checkpoint`` (a directory ``HFVLAPolicy.from_checkpoint`` reads);
* ``pretrained`` — ``pretrained_checkpoint`` (an HF model directory, or OpenVLA);
* ``warm_start`` — no checkpoint given and ``sft.num_demos > 0``: scripted demos are
  collected and the tiny VLA is behaviour-cloned into ``<run>/sft`` first;
* ``tiny``       — the tiny VLA's random initialization, saved to ``<run>/base_model``.

Training checkpoints hold only the trainable weights, so evaluating one means
rebuilding that base and loading them on top (``policy_from_run_checkpoint``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from vla_rl_lib.config import VLARLConfig, config_from_dict, load_config, load_template, save_config
from vla_rl_lib.policy.hf_policy import HFVLAPolicy, LoRASettings, build_policy
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig
from vla_rl_lib.training import checkpoint as ckpt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_vla_config(cfg: VLARLConfig) -> TinyVLAConfig:
    return TinyVLAConfig(**cfg.model.tiny_vla_sizes())


def lora_settings(cfg: VLARLConfig) -> LoRASettings | None:
    if not cfg.lora.enabled:
        return None
    return LoRASettings(
        rank=cfg.lora.rank,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
    )


def _load_base(cfg: VLARLConfig, kind: str, path: str) -> HFVLAPolicy:
    """Load a base policy for RL: the config decides decoding and what trains (LoRA or all)."""
    dtype = DTYPES[cfg.model.dtype]
    wanted = lora_settings(cfg)
    policy_cls: type[HFVLAPolicy] = HFVLAPolicy
    model_loader = None
    if cfg.model.name == "openvla":
        from vla_rl_lib.policy.openvla import (
            OpenVLAPolicy,
            build_openvla_policy,
            openvla_model_loader,
        )

        allow = tuple(cfg.trust_remote_code)
        if kind == "pretrained":
            return build_openvla_policy(
                path, decoding=cfg.model.decoding, unnorm_key=cfg.model.unnorm_key, dtype=dtype,
                trust_remote_code_allowlist=allow, lora=wanted, seed=cfg.seed,
            )
        policy_cls = OpenVLAPolicy
        model_loader = openvla_model_loader(allow, dtype=dtype)
    policy = policy_cls.from_checkpoint(
        path,
        decoding=cfg.model.decoding,
        unnorm_key=cfg.model.unnorm_key,
        lora=wanted,
        dtype=dtype,
        seed=cfg.seed,
        model_loader=model_loader,
    )
    if wanted is not None and not policy.use_lora:
        # A full-weight (e.g. merged SFT) model under a LoRA config: train a fresh adapter on it.
        policy = type(policy)(
            policy.model, policy.processor, policy.action_tokenizer,
            action_dim=policy.action_dim, decoding=policy.decoding,
            prompt_template=policy.prompt_template, statistics=policy.statistics,
            unnorm_key=policy.unnorm_key, lora=wanted, seed=cfg.seed,
        )
    return policy


def _resolve(run_dir: Path, path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else run_dir / p)


def build_training_policy(
    cfg: VLARLConfig, run_dir: Path, progress: bool = True
) -> tuple[HFVLAPolicy, dict[str, Any]]:
    """The policy a new (or resumed) run trains, and the record of its base."""
    if cfg.sft_checkpoint:
        base = {"kind": "sft", "path": str(Path(cfg.sft_checkpoint).absolute())}
    elif cfg.pretrained_checkpoint:
        path = cfg.pretrained_checkpoint
        base = {"kind": "pretrained", "path": str(Path(path).absolute()) if Path(path).exists() else path}
    elif cfg.sft.num_demos > 0:
        sft_dir = run_dir / "sft"
        if not (sft_dir / "policy_config.json").is_file():  # a resumed run reuses its warm start
            run_warm_start(cfg, sft_dir, progress=progress)
        base = {"kind": "warm_start", "path": "sft"}
    else:
        base_dir = run_dir / "base_model"
        if not (base_dir / "policy_config.json").is_file():
            fresh = build_policy(
                tiny_vla_config(cfg), lora=None, seed=cfg.seed, decoding=cfg.model.decoding
            )
            fresh.save_pretrained(str(base_dir))
        base = {"kind": "tiny", "path": "base_model"}
    return _load_base(cfg, base["kind"], _resolve(run_dir, base["path"])), base


def run_warm_start(cfg: VLARLConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Scripted demonstrations -> behaviour cloning of a fresh tiny VLA, saved to ``out_dir``."""
    from vla_rl_lib.sft.demos import collect_demonstrations, load_demonstrations
    from vla_rl_lib.sft.trainer import run_sft

    s, r = cfg.sft, cfg.rollout
    t0 = time.perf_counter()
    dataset_dir = (
        Path(s.dataset_dir) / f"demos_{r.env_id}_{s.num_demos}_seed{s.demo_seed}_{r.camera}_{r.image_size}px"
    )
    if not dataset_dir.exists():
        collect_demonstrations(
            s.num_demos,
            s.demo_seed,
            dataset_dir,
            simulator=r.simulator,
            env_id=r.env_id,
            num_envs=r.num_parallel_envs,
            image_size=r.image_size,
            camera=r.camera,
            control_mode=r.control_mode,
            max_episode_steps=r.max_steps,
            instruction=cfg.language_instruction,
            progress=progress,
        )
    demo_s = time.perf_counter() - t0
    dataset = load_demonstrations(dataset_dir)
    policy = build_policy(
        tiny_vla_config(cfg), lora=lora_settings(cfg), seed=cfg.seed, decoding=cfg.model.decoding
    )
    result = run_sft(
        policy,
        dataset,
        epochs=s.epochs,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        seed=cfg.seed,
        out_dir=out_dir,
        progress=progress,
    )
    save_config(cfg, out_dir / ckpt.CONFIG_FILE)  # lets `evaluate --checkpoint <sft dir>` rebuild the env
    return {"dataset": str(dataset_dir), "sft_checkpoint": str(out_dir), "demo_seconds": demo_s,
            "seconds": time.perf_counter() - t0, **result}


def policy_from_run_checkpoint(path: Path) -> tuple[HFVLAPolicy, VLARLConfig, dict[str, Any]]:
    """Rebuild the policy a training checkpoint was taken from: its base, then its weights."""
    path = Path(path)
    state = ckpt.load_checkpoint(path)
    cfg = config_from_dict(yaml.safe_load(state["config_yaml"]))
    trainer_state = state["trainer_state"]
    base = trainer_state.get("base")
    if not base:
        raise ckpt.CheckpointError(
            f"{path / ckpt.TRAINER_STATE_FILE} does not record the base model ('base'); "
            "it was not written by this version of vla_rl_lib"
        )
    run_dir = path.parent
    policy = _load_base(cfg, base["kind"], _resolve(run_dir, base["path"]))
    try:
        policy.load_trainable_state_dict(state["policy_state"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ckpt.CheckpointError(
            f"{path / ckpt.POLICY_FILE} does not fit the base model {base['path']}: {exc}"
        ) from exc
    policy.eval()
    return policy, cfg, trainer_state


def load_any_checkpoint(
    path: Path, config: VLARLConfig | None = None
) -> tuple[HFVLAPolicy, VLARLConfig]:
    """A training checkpoint, or a policy directory (SFT result, saved or merged model)."""
    path = Path(path)
    if (path / ckpt.TRAINER_STATE_FILE).is_file() or not (path / "policy_config.json").is_file():
        policy, cfg, _ = policy_from_run_checkpoint(path)
        return policy, config or cfg
    if config is None:
        saved = path / ckpt.CONFIG_FILE
        config = load_config(saved) if saved.is_file() else load_template("default")
    policy = _load_base(config, "sft", str(path))
    policy.eval()
    return policy, config
