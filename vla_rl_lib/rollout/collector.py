"""Batched rollouts: one policy call per control step for every running environment.

The collector plays exactly the episodes it is given (one start seed each) and
returns them time-major as a ``Rollout``. Environments whose next episode
would exceed the target sit idle until the last episodes finish, so every
recorded episode is complete: GRPO can group them by start seed and GAE
never needs a mid-episode bootstrap except at a time-limit truncation.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from lift import Simulator
    from vla_rl_lib.policy.base import VLAPolicy

# Training episodes draw start seeds at or above this bound; evaluation (and
# demonstration) seeds live below it, so training never sees a held-out start.
TRAIN_SEED_FLOOR = 2**31
SEED_CEILING = 2**32


def training_episode_seeds(seed: int, update: int, num_episodes: int, group_size: int = 1) -> list[int]:
    """Start seeds for one update: a pure function of (seed, update), so resume is exact.

    With ``group_size > 1`` each start is repeated ``group_size`` times in a row (GRPO groups).
    """
    if num_episodes % group_size:
        raise ValueError(
            f"num_episodes={num_episodes} must be a multiple of group_size={group_size}"
        )
    rng = np.random.default_rng([seed, update, 0x5EED])
    starts = rng.integers(TRAIN_SEED_FLOOR, SEED_CEILING, size=num_episodes // group_size)
    return [int(s) for s in np.repeat(starts, group_size)]


def evaluation_seeds(eval_seed: int, num_episodes: int) -> list[int]:
    """Fixed held-out start seeds; training never draws from this range."""
    if eval_seed < 0 or eval_seed + num_episodes > TRAIN_SEED_FLOOR:
        raise ValueError(
            f"eval_seed={eval_seed} with {num_episodes} episodes leaves the held-out range "
            f"[0, {TRAIN_SEED_FLOOR}); pick a smaller eval_seed"
        )
    return list(range(eval_seed, eval_seed + num_episodes))


def reset_episodes(env: Simulator, env_ids: Sequence[int], seeds: Sequence[int]):
    """Start each listed env on the episode whose start state is a pure function of its seed."""
    obs = None
    for env_id, seed in zip(env_ids, seeds, strict=True):
        obs = env.reset(seed=int(seed), env_ids=[int(env_id)])
    return obs


@dataclass
class Episode:
    index: int
    seed: int
    env_id: int
    length: int = 0
    reward_sum: float = 0.0
    success: bool = False
    frames: list[np.ndarray] | None = None  # third-person frames when recorded


@dataclass
class Rollout:
    """Time-major (T, N) arrays; ``valid`` marks steps that belong to a recorded episode."""

    images: np.ndarray  # (T, N, H, W, 3) uint8
    instructions: list[str]  # (N,) one per environment
    token_ids: np.ndarray  # (T, N, D) int64
    log_probs: np.ndarray  # (T, N) float32
    values: np.ndarray  # (T, N) float32
    rewards: np.ndarray  # (T, N) float32
    terminated: np.ndarray  # (T, N) bool
    truncated: np.ndarray  # (T, N) bool
    next_values: np.ndarray  # (T, N) V(s_{t+1}); V(final obs) at truncations; 0 at terminations
    valid: np.ndarray  # (T, N) bool
    episode_index: np.ndarray  # (T, N) int64, -1 where not valid
    episodes: list[Episode] = field(default_factory=list)
    seconds_sim: float = 0.0
    seconds_policy: float = 0.0
    seconds_total: float = 0.0

    @property
    def env_steps(self) -> int:
        return int(self.valid.sum())

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0


class RolloutCollector:
    """Plays seeded episodes on a batched simulator with a VLA policy."""

    def __init__(
        self,
        env: Simulator,
        policy: VLAPolicy,
        instruction: str,
        use_binary_reward: bool = True,
    ) -> None:
        self.env = env
        self.policy = policy
        self.instruction = instruction
        self.use_binary_reward = use_binary_reward

    def collect(
        self,
        seeds: Sequence[int],
        temperature: float = 1.0,
        greedy: bool = False,
        record_frames: int = 0,
        frame_size: int | None = None,
        on_episode: Callable[[Episode], None] | None = None,
    ) -> Rollout:
        """Play one episode per seed; record third-person frames of the first ``record_frames``."""
        env, n = self.env, self.env.num_envs
        t_start = time.perf_counter()
        sim_s = policy_s = 0.0
        queue = deque(enumerate(seeds))
        episodes: list[Episode] = []
        current = np.full(n, -1, dtype=np.int64)  # episode index each env is playing, -1 idle

        def start(env_ids: list[int]):
            starts = [queue.popleft() for _ in env_ids]
            for env_id, (index, seed) in zip(env_ids, starts, strict=True):
                current[env_id] = index
                ep = Episode(index=index, seed=seed, env_id=env_id)
                if index < record_frames:
                    ep.frames = []
                episodes.append(ep)
            return reset_episodes(env, env_ids, [s for _, s in starts])

        first = list(range(min(n, len(queue))))
        t0 = time.perf_counter()
        obs = start(first)
        sim_s += time.perf_counter() - t0
        by_index = {ep.index: ep for ep in episodes}
        instructions = [self.instruction] * n

        rows: dict[str, list[np.ndarray]] = {
            k: [] for k in ("images", "token_ids", "log_probs", "values", "rewards",
                            "terminated", "truncated", "final_values", "valid", "episode_index")
        }
        action_dim = self.policy.action_dim
        while (current >= 0).any():
            active = np.flatnonzero(current >= 0)
            for env_id in active:
                ep = by_index[current[env_id]]
                if ep.frames is not None:
                    ep.frames.append(env.render("third_person", env_ids=[env_id], size=frame_size)[0])
            t0 = time.perf_counter()
            with torch.no_grad():
                out = self.policy.act(
                    obs.image[active], [instructions[i] for i in active], temperature, greedy
                )
            policy_s += time.perf_counter() - t0

            actions = np.zeros((n, action_dim), dtype=np.float32)
            actions[active] = out.actions
            t0 = time.perf_counter()
            res = env.step(actions)
            sim_s += time.perf_counter() - t0

            success = np.asarray(res.info["success"], dtype=bool)
            reward = success.astype(np.float32) if self.use_binary_reward else res.reward.astype(np.float32)
            valid = current >= 0
            terminated = res.terminated & valid
            truncated = res.truncated & ~res.terminated & valid
            token_ids = np.zeros((n, action_dim), dtype=np.int64)
            token_ids[active] = out.token_ids.cpu().numpy()
            log_probs = np.zeros(n, dtype=np.float32)
            log_probs[active] = out.log_probs.float().cpu().numpy()
            values = np.zeros(n, dtype=np.float32)
            values[active] = out.values.float().cpu().numpy()

            final_values = np.zeros(n, dtype=np.float32)
            cut = np.flatnonzero(truncated)
            if cut.size:  # bootstrap a time-limit cut from the value of where it stopped
                final = res.final_observation if res.final_observation is not None else res.observation
                t0 = time.perf_counter()
                with torch.no_grad():
                    final_values[cut] = (
                        self.policy.act(final.image[cut], [instructions[i] for i in cut], temperature, True)
                        .values.float().cpu().numpy()
                    )
                policy_s += time.perf_counter() - t0

            rows["images"].append(obs.image)
            rows["token_ids"].append(token_ids)
            rows["log_probs"].append(log_probs)
            rows["values"].append(values)
            rows["rewards"].append(np.where(valid, reward, 0.0).astype(np.float32))
            rows["terminated"].append(terminated)
            rows["truncated"].append(truncated)
            rows["final_values"].append(final_values)
            rows["valid"].append(valid.copy())
            rows["episode_index"].append(current.copy())

            obs = res.observation
            finished = []
            for env_id in active:
                ep = by_index[current[env_id]]
                ep.length += 1
                ep.reward_sum += float(reward[env_id])
                ep.success = ep.success or bool(success[env_id])
                if terminated[env_id] or truncated[env_id]:
                    current[env_id] = -1
                    finished.append(env_id)
                    if on_episode is not None:
                        on_episode(ep)
            restart = finished[: len(queue)]
            if restart:
                t0 = time.perf_counter()
                obs = start(restart)
                sim_s += time.perf_counter() - t0
                by_index.update({ep.index: ep for ep in episodes[-len(restart):]})

        stacked = {k: np.stack(v) for k, v in rows.items()}
        values = stacked["values"]
        next_values = np.zeros_like(values)
        next_values[:-1] = values[1:]  # same env, same episode, one step later (if it continued)
        done = stacked["terminated"] | stacked["truncated"]
        next_values = np.where(done, 0.0, next_values)
        next_values = np.where(stacked["truncated"], stacked["final_values"], next_values)
        episodes.sort(key=lambda e: e.index)
        return Rollout(
            images=stacked["images"],
            instructions=instructions,
            token_ids=stacked["token_ids"],
            log_probs=stacked["log_probs"],
            values=values,
            rewards=stacked["rewards"],
            terminated=stacked["terminated"],
            truncated=stacked["truncated"],
            next_values=next_values.astype(np.float32),
            valid=stacked["valid"],
            episode_index=stacked["episode_index"],
            episodes=episodes,
            seconds_sim=sim_s,
            seconds_policy=policy_s,
            seconds_total=time.perf_counter() - t_start,
        )
