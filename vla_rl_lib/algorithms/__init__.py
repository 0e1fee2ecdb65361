"""RL algorithms: advantage estimation and the PPO/GRPO update. Only torch and numpy: no simulator,
model or run-config code here."""

from vla_rl_lib.algorithms.advantage import (
    broadcast_to_steps,
    compute_gae,
    episode_ids,
    episode_returns,
    group_normalized_advantages,
)
from vla_rl_lib.algorithms.ppo import (
    PPOBatch,
    PPOSettings,
    explained_variance,
    ppo_loss,
    ppo_update,
)

__all__ = [
    "PPOBatch",
    "PPOSettings",
    "broadcast_to_steps",
    "compute_gae",
    "episode_ids",
    "episode_returns",
    "explained_variance",
    "group_normalized_advantages",
    "ppo_loss",
    "ppo_update",
]
