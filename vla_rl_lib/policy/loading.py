"""A run's policy, built or loaded from what the run asks of it (``PolicySettings``).

The training factory reads the run config once into ``PolicySettings``
(``vla_rl_lib.training.policy_factory.policy_settings``) and hands them here;
Ray rollout workers rebuild the same base from the same settings, which the
loaded policy carries as ``load_settings``. Nothing here reads the run config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.hf_policy import HFVLAPolicy, ModelLoader, build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE_KINDS = ("sft", "pretrained", "warm_start", "tiny")


@dataclass(frozen=True)
class PolicySettings:
    """What a run asks of its policy: the model family, decoding, what trains, and how it loads."""

    model: str  # "tiny" (the local tiny VLA) or "openvla"
    decoding: str  # "parallel" or "autoregressive"
    unnorm_key: str | None  # dataset key of the action statistics; None: the checkpoint's own
    lora: LoRAConfig  # enabled: a LoRA adapter trains on a frozen base; else every weight
    dtype: str  # a key of DTYPES
    seed: int  # draws fresh weights (tiny VLA, adapter, value head)
    trust_remote_code: tuple[str, ...]  # OpenVLA checkpoints whose shipped code may run
    tiny_sizes: TinyVLAConfig  # the tiny VLA's sizes (unused by OpenVLA)
    action_dim: int = 8  # the env's action width (lift.task.action_dim of the control mode)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def fresh_tiny_policy(settings: PolicySettings, *, train_all: bool = False) -> HFVLAPolicy:
    """A tiny VLA with random weights from ``settings.seed``; ``train_all`` ignores the LoRA setting."""
    lora = None if train_all else settings.lora
    return build_policy(
        settings.tiny_sizes, lora=lora, seed=settings.seed, decoding=settings.decoding,
        action_dim=settings.action_dim,
    )  # fmt: skip


def fresh_openvla_policy(
    settings: PolicySettings,
    path: str,
    *,
    statistics: ActionStatistics | None = None,
    unnorm_key: str | None = None,
    device: str | torch.device | None = None,
) -> HFVLAPolicy:
    """OpenVLA from a checkpoint folder or hub id, with a fresh adapter when LoRA is enabled.

    ``statistics`` (named by ``unnorm_key``) replace the checkpoint's own, as SFT's
    demonstrations do; without them ``settings.unnorm_key`` picks the checkpoint's.
    """
    from vla_rl_lib.policy.openvla import build_openvla_policy

    return build_openvla_policy(
        path, decoding=settings.decoding, statistics=statistics,
        unnorm_key=unnorm_key if statistics is not None else settings.unnorm_key,
        dtype=settings.torch_dtype, device=device, trust_remote_code_allowlist=settings.trust_remote_code,
        lora=settings.lora, seed=settings.seed, action_dim=settings.action_dim,
    )  # fmt: skip


def load_base_policy(settings: PolicySettings, kind: str, path: str) -> HFVLAPolicy:
    """A run's base policy for RL, from the folder ``path`` (a hub id for an OpenVLA ``pretrained`` base).

    ``kind`` is the base's record in ``trainer_state.json`` (one of ``BASE_KINDS``).
    ``settings`` decide decoding and what trains: a full-weight folder under an
    enabled LoRA gets a fresh adapter. The policy keeps ``settings`` as
    ``load_settings``, so a rollout worker can load the same base.
    """
    if kind not in BASE_KINDS:
        raise ValueError(f"base kind {kind!r} is unknown; expected one of {BASE_KINDS}")
    policy_cls: type[HFVLAPolicy] = HFVLAPolicy
    model_loader: ModelLoader | None = None
    if settings.model == "openvla":
        from vla_rl_lib.policy.openvla import (
            OpenVLAPolicy,
            allowlist_with_saved_policy,
            openvla_model_loader,
        )

        if kind == "pretrained":
            policy = fresh_openvla_policy(settings, path)
            policy.load_settings = settings
            return policy
        # A saved policy folder carries a copy of its base's processor code.
        allow = allowlist_with_saved_policy(path, settings.trust_remote_code)
        policy_cls = OpenVLAPolicy
        model_loader = openvla_model_loader(allow, dtype=settings.torch_dtype)
    policy = policy_cls.from_checkpoint(
        path, decoding=settings.decoding, unnorm_key=settings.unnorm_key, lora=settings.lora,
        dtype=settings.torch_dtype, seed=settings.seed, model_loader=model_loader,
    )  # fmt: skip
    if settings.lora.enabled and not policy.use_lora:
        # A full-weight (e.g. merged SFT) model under a LoRA config: train a fresh adapter on it.
        config = dataclasses.replace(policy.config, lora=settings.lora)
        policy = type(policy)(
            config, policy.model, policy.processor, statistics=policy.statistics, seed=settings.seed
        )
    policy.load_settings = settings
    return policy
