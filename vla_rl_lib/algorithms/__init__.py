"""RL algorithms: advantage estimation and the PPO/GRPO update. No simulator or model code here."""

from vla_rl_lib.algorithms.advantage import (
    broadcast_to_steps,
    compute_gae,
    episode_ids,
    episode_returns,
    group_normalized_advantages,
)

__all__ = [
    "broadcast_to_steps",
    "compute_gae",
    "episode_ids",
    "episode_returns",
    "group_normalized_advantages",
]
