"""Advantage estimation as pure functions of tensors.

Rollout tensors are time-major, shape (T, N): T steps of N parallel
environments. ``terminated`` (the task ended: success) and ``truncated`` (the
step limit cut the episode) are kept apart: a truncated step is bootstrapped
from the value of its final observation, a terminated one is not. Either one
ends the episode, so the GAE recursion never crosses it.

Every function accepts torch tensors or numpy arrays and returns the same kind.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_tensor(x: ArrayLike, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return torch.as_tensor(x, dtype=dtype)


def _like(result: torch.Tensor, template: ArrayLike) -> ArrayLike:
    return result.numpy() if isinstance(template, np.ndarray) else result


def compute_gae(
    rewards: ArrayLike,
    values: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: float,
    gae_lambda: float,
) -> tuple[ArrayLike, ArrayLike]:
    """Generalized advantage estimation over (T, N) rollouts.

    ``next_values[t]`` is V of the observation after step t: for a truncated
    step, the value of that episode's final observation (not the reset one);
    for a terminated step it is ignored. The last row (t = T-1) of a running
    episode bootstraps from ``next_values[T-1]``.

        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
        A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}

    Returns ``(advantages, returns)`` with ``returns = advantages + values``
    (the value target), both shaped and typed like ``values``.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
        raise ValueError(f"gamma={gamma} and gae_lambda={gae_lambda} must both lie in [0, 1]")
    r = _as_tensor(rewards, "rewards")
    v = _as_tensor(values, "values")
    nv = _as_tensor(next_values, "next_values")
    term = _as_tensor(terminated, "terminated", torch.bool)
    trunc = _as_tensor(truncated, "truncated", torch.bool)
    for name, x in (
        ("rewards", r),
        ("next_values", nv),
        ("terminated", term),
        ("truncated", trunc),
    ):
        if x.shape != v.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, values has {tuple(v.shape)}; all must be (T, N)"
            )
    if v.ndim == 0 or v.shape[0] == 0:
        raise ValueError(f"need at least one time step along dim 0, got shape {tuple(v.shape)}")
    dtype = torch.promote_types(v.dtype, r.dtype) if v.is_floating_point() else torch.float32
    r, v, nv = r.to(dtype), v.to(dtype), nv.to(dtype)

    not_terminated = (~term).to(dtype)
    deltas = r + gamma * not_terminated * nv - v
    carry = (gamma * gae_lambda) * (~(term | trunc)).to(dtype)
    # A_t = delta_t + carry_t * A_{t+1}, with A_T = 0, is a linear recurrence. Solve it with a
    # Hillis-Steele scan instead of a Python loop over T: after the pass with stride s,
    # A_t = acc_t + gain_t * A_{t+s}; each pass doubles s, so log2(T) passes reach the end.
    acc, gain, stride = deltas, carry, 1
    while stride < acc.shape[0]:
        acc = torch.cat([torch.addcmul(acc[:-stride], gain[:-stride], acc[stride:]), acc[-stride:]])
        gain = torch.cat([gain[:-stride] * gain[stride:], torch.zeros_like(gain[-stride:])])
        stride *= 2
    advantages = acc
    return _like(advantages, values), _like(advantages + v, values)


def group_normalized_advantages(
    episode_returns: ArrayLike, group_ids: ArrayLike, eps: float = 1e-6
) -> ArrayLike:
    """GRPO's outcome advantage: (R - mean of the group) / (std of the group + eps).

    A group holds the rollouts that started from the same initial state.
    ``std`` is the unbiased (n - 1) standard deviation, as in SimpleVLA-RL /
    veRL. A group whose returns are all equal (including a group of one)
    gets advantage exactly 0: it carries no signal about which action was better.
    """
    returns = _as_tensor(episode_returns, "episode_returns")
    ids = _as_tensor(group_ids, "group_ids")
    if returns.ndim != 1 or ids.shape != returns.shape:
        raise ValueError(
            f"episode_returns {tuple(returns.shape)} and group_ids {tuple(ids.shape)} must be the same 1-D shape"
        )
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be integers, got dtype {ids.dtype}")
    returns = returns.to(torch.promote_types(returns.dtype, torch.float32))
    _, group = torch.unique(ids, return_inverse=True)
    num_groups = int(group.max()) + 1 if group.numel() else 0

    def per_group_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_groups, dtype=x.dtype).index_add_(0, group, x)

    counts = per_group_sum(torch.ones_like(returns))
    mean = per_group_sum(returns) / counts
    centered = returns - mean[group]
    std = (per_group_sum(centered**2) / (counts - 1).clamp(min=1)).sqrt()
    group_max = torch.full((num_groups,), -torch.inf, dtype=returns.dtype).scatter_reduce(
        0, group, returns, "amax"
    )
    group_min = torch.full((num_groups,), torch.inf, dtype=returns.dtype).scatter_reduce(
        0, group, returns, "amin"
    )
    advantages = centered / (std[group] + eps)
    advantages = torch.where((group_max == group_min)[group], 0.0, advantages)
    return _like(advantages, episode_returns)


def episode_ids(done: ArrayLike) -> tuple[ArrayLike, int]:
    """Number the episodes of a (T, N) rollout: env by env, then in time order.

    Step (t, n) belongs to episode ``ids[t, n]``; an episode ends at its done
    step and the next one starts at t + 1. An episode still running at T - 1
    is counted too. Returns ``(ids, num_episodes)``.
    """
    d = _as_tensor(done, "done", torch.bool)
    if d.ndim != 2:
        raise ValueError(f"done must be (T, N), got shape {tuple(d.shape)}")
    # episodes finished before step t, within each env
    before = torch.cumsum(d.long(), dim=0) - d.long()
    per_env = before[-1] + 1  # the episode holding the last step counts, finished or not
    offsets = torch.cumsum(per_env, dim=0) - per_env
    ids = before + offsets
    return _like(ids, done), int(per_env.sum())


def broadcast_to_steps(episode_values: ArrayLike, step_episode_ids: ArrayLike) -> ArrayLike:
    """Give every step its episode's value: ``episode_values[step_episode_ids]`` (any shape)."""
    values = _as_tensor(episode_values, "episode_values")
    ids = _as_tensor(step_episode_ids, "step_episode_ids", torch.long)
    if values.ndim != 1:
        raise ValueError(f"episode_values must be 1-D (one per episode), got {tuple(values.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= values.shape[0]):
        raise ValueError(
            f"step_episode_ids span [{int(ids.min())}, {int(ids.max())}] but there are {values.shape[0]} episodes"
        )
    return _like(values[ids], episode_values)


def episode_returns(rewards: ArrayLike, done: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Undiscounted return of every episode of a (T, N) rollout.

    Returns ``(returns (E,), ids (T, N))`` with episodes numbered as in ``episode_ids``.
    """
    r = _as_tensor(rewards, "rewards")
    ids, count = episode_ids(_as_tensor(done, "done", torch.bool))
    if r.shape != ids.shape:
        raise ValueError(
            f"rewards {tuple(r.shape)} and done {tuple(ids.shape)} must have the same (T, N) shape"
        )
    r = r.to(torch.promote_types(r.dtype, torch.float32))
    totals = torch.zeros(count, dtype=r.dtype).index_add_(0, ids.reshape(-1), r.reshape(-1))
    return _like(totals, rewards), _like(ids, done)
