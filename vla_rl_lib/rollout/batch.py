"""Rollout -> flat PPO batch: advantages (GAE or GRPO groups) and returns."""

from __future__ import annotations

import numpy as np
import torch

from vla_rl_lib.algorithms.advantage import (
    broadcast_to_steps,
    compute_gae,
    group_normalized_advantages,
)
from vla_rl_lib.algorithms.ppo import PPOBatch
from vla_rl_lib.rollout.collector import Rollout


def rollout_to_batch(
    rollout: Rollout, algorithm: str, gamma: float, gae_lambda: float, group_size: int = 1
) -> PPOBatch:
    """Flatten the valid steps of a rollout into a PPO batch with advantages and returns."""
    valid = rollout.valid
    if algorithm == "ppo":
        advantages, returns = compute_gae(
            torch.from_numpy(rollout.rewards),
            torch.from_numpy(rollout.values),
            torch.from_numpy(rollout.next_values),
            torch.from_numpy(rollout.terminated),
            torch.from_numpy(rollout.truncated),
            gamma,
            gae_lambda,
        )
        advantages, returns = advantages.numpy(), returns.numpy()
    elif algorithm == "grpo":
        episode_returns = np.array([ep.reward_sum for ep in rollout.episodes], dtype=np.float32)
        group_ids = np.array([ep.index // group_size for ep in rollout.episodes])
        per_episode = group_normalized_advantages(
            torch.from_numpy(episode_returns), torch.from_numpy(group_ids)
        )
        step_episode = torch.from_numpy(np.where(valid, rollout.episode_index, 0))
        advantages = broadcast_to_steps(per_episode, step_episode).numpy().astype(np.float32)
        returns = np.zeros_like(advantages)  # GRPO has no critic
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose 'ppo' or 'grpo'")

    # Time-major (T, N) -> flat over valid steps, episode by episode within each env.
    return PPOBatch(
        images=rollout.images[valid],
        instructions=rollout.instructions[valid].tolist(),  # the prompt each step was acted on
        token_ids=torch.from_numpy(rollout.token_ids[valid]),
        old_log_probs=torch.from_numpy(rollout.log_probs[valid]),
        old_values=torch.from_numpy(rollout.values[valid]),
        advantages=torch.from_numpy(np.ascontiguousarray(advantages[valid], dtype=np.float32)),
        returns=torch.from_numpy(np.ascontiguousarray(returns[valid], dtype=np.float32)),
    )
