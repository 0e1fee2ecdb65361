"""A replica of the learner's policy and simulator in another process (a Ray worker, the
collect-ahead worker): the same base model loaded the same way, its trainable weights sent
with each collect, so it plays the episodes the learner's own collector would."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vla_rl_lib.policy.loading import PolicySettings, load_base_policy
from vla_rl_lib.rollout.collector import RolloutCollector
from vla_rl_lib.rollout.executor import make_collector, make_rollout_env

if TYPE_CHECKING:
    from vla_rl_lib.config import VLARLConfig
    from vla_rl_lib.policy.base import VLAPolicy


def base_location(base: dict[str, Any], run_dir: Path) -> str:
    """The base model as the factory recorded it, with a run-relative path made absolute."""
    path = Path(base["path"])
    if base["kind"] == "pretrained" and not path.is_absolute() and not (run_dir / path).exists():
        return base["path"]  # a hub model name, fetched (or found in the cache) by each node
    return str(path if path.is_absolute() else (run_dir / path).absolute())


def policy_load_settings(policy: VLAPolicy) -> PolicySettings:
    """How the learner's policy was loaded (``load_base_policy``), so each worker loads the same base."""
    settings = getattr(policy, "load_settings", None)
    if not isinstance(settings, PolicySettings):
        raise ValueError(
            "rollout workers (rollout.executor='ray', rollout.collect_ahead) need a policy loaded "
            "by vla_rl_lib.policy.loading.load_base_policy (as training.policy_factory."
            "build_training_policy does), so that they can load the same base; this one was "
            "built another way"
        )
    return settings


def replica_collector(
    config: VLARLConfig, settings: PolicySettings, base_kind: str, base_path: str, device: str
) -> RolloutCollector:
    """A collector on a new simulator with a fresh copy of the base policy on ``device``; load
    the learner's trainable weights into ``collector.policy`` before each collect."""
    policy = load_base_policy(settings, base_kind, base_path)
    policy.to(torch.device(device))
    return make_collector(config, make_rollout_env(config), policy)
