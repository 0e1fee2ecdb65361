"""Batched rollouts: one policy call per control step for every running environment.

The collector plays exactly the episodes it is given (one start seed each) and
returns them time-major as a ``Rollout``. Environments whose next episode
would exceed the target sit idle until the last episodes finish, so every
recorded episode is complete: GRPO can group them by start seed and GAE
never needs a mid-episode bootstrap except at a time-limit truncation.

Simulator faults: when ``env.step`` raises, or returns a non-finite joint
state or reward for an environment (a physics blow-up), or flags it in
``info["sim_unstable"]`` (the engine reset an unstable state itself), the episodes it hit
are dropped (their recorded steps become invalid), their environments are
reset, and each is replayed from its own start seed, so the rollout still
holds exactly one complete episode per seed and GRPO groups stay intact. A
step that raises leaves no environment of the batch trustworthy, so it drops
every running episode. ``Rollout.sim_faults`` counts the dropped episodes; an
episode that faults more than ``MAX_EPISODE_REPLAYS`` times raises
``SimulatorFaultError``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from vla_rl_lib.seed_ranges import SEED_CEILING, TRAIN_SEED_FLOOR

if TYPE_CHECKING:
    from lift import Simulator
    from lift.types import Observation, StepResult
    from vla_rl_lib.policy.base import VLAPolicy

# A start that faults this often is a bug in the simulator or the task, not bad luck.
MAX_EPISODE_REPLAYS = 3

log = logging.getLogger(__name__)


class SimulatorFaultError(RuntimeError):
    """The simulator failed on the same episode more than ``MAX_EPISODE_REPLAYS`` times."""


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
    instructions: np.ndarray  # (T, N) str (object): the prompt the policy saw at each step
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
    sim_faults: int = 0  # episodes dropped (and replayed from their seed) after a simulator fault

    @property
    def env_steps(self) -> int:
        return int(self.valid.sum())

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0


class RolloutCollector:
    """Plays seeded episodes on a batched simulator with a VLA policy.

    ``instruction`` None prompts the policy with each episode's own instruction from
    the observation (``Observation.instructions``); a string overrides it for every
    episode (single-instruction tasks).
    """

    def __init__(
        self,
        env: Simulator,
        policy: VLAPolicy,
        instruction: str | None = None,
        use_binary_reward: bool = True,
    ) -> None:
        self.env = env
        self.policy = policy
        self.instruction = instruction
        self.use_binary_reward = use_binary_reward

    def prompts(self, observation: Observation) -> list[str]:
        return policy_prompts(observation, self.env, self.instruction)

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
        by_index: dict[int, Episode] = {}  # the episodes now playing (or finished), by index
        current = np.full(n, -1, dtype=np.int64)  # episode index each env is playing, -1 idle
        rows: dict[str, list[np.ndarray]] = {
            k: [] for k in ("images", "instructions", "token_ids", "log_probs", "values", "rewards",
                            "terminated", "truncated", "final_values", "valid", "episode_index")
        }
        sim_faults = 0
        replays: dict[int, int] = {}  # episode index -> times it was dropped

        def start(env_ids: list[int]):
            starts = [queue.popleft() for _ in env_ids]
            for env_id, (index, seed) in zip(env_ids, starts, strict=True):
                current[env_id] = index
                ep = Episode(index=index, seed=seed, env_id=env_id)
                if index < record_frames:
                    ep.frames = []
                episodes.append(ep)
                by_index[index] = ep
            return reset_episodes(env, env_ids, [s for _, s in starts])

        def drop(env_ids: Sequence[int], cause: str, error: Exception | None = None) -> None:
            """Forget the episodes playing in ``env_ids`` and queue each again from its seed."""
            nonlocal sim_faults
            again = []
            for env_id in env_ids:
                index = int(current[env_id])
                ep = by_index.pop(index)
                replays[index] = replays.get(index, 0) + 1
                if replays[index] > MAX_EPISODE_REPLAYS:
                    raise SimulatorFaultError(
                        f"the simulator failed {replays[index]} times on the episode with start "
                        f"seed {ep.seed} (last: {cause}); this is not a one-off fault: reproduce it "
                        f"with lift.make_env(...).reset(seed={ep.seed}) and fix the simulator or task"
                    ) from error
                for t, playing in enumerate(rows["episode_index"]):
                    if playing[env_id] == index:
                        playing[env_id] = -1
                        rows["valid"][t][env_id] = False
                        rows["rewards"][t][env_id] = 0.0
                        rows["terminated"][t][env_id] = rows["truncated"][t][env_id] = False
                episodes[:] = [e for e in episodes if e is not ep]
                current[env_id] = -1
                sim_faults += 1
                again.append((index, ep.seed))
                log.warning(
                    "simulator fault in env %d (%s); replaying episode %d from seed %d",
                    env_id, cause, index, ep.seed,
                )
            queue.extendleft(reversed(again))

        first = list(range(min(n, len(queue))))
        t0 = time.perf_counter()
        obs = start(first)
        sim_s += time.perf_counter() - t0

        action_dim = self.policy.action_dim
        frame_hw = None if frame_size is None else (frame_size, frame_size)
        while (current >= 0).any():
            active = np.flatnonzero(current >= 0)
            for env_id in active:
                ep = by_index[current[env_id]]
                if ep.frames is not None:
                    ep.frames.append(env.render("third_person", env_ids=[env_id], size=frame_hw)[0])
            instructions = self.prompts(obs)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = self.policy.act(
                    obs.image[active], [instructions[i] for i in active], temperature, greedy
                )
            policy_s += time.perf_counter() - t0

            actions = np.zeros((n, action_dim), dtype=np.float32)
            actions[active] = out.actions
            t0 = time.perf_counter()
            try:
                res = env.step(actions)
            except Exception as exc:  # a failed batched step leaves no env's state trustworthy
                drop(active, f"env.step raised {type(exc).__name__}: {exc}", exc)
                obs = start(list(active))
                sim_s += time.perf_counter() - t0
                continue
            sim_s += time.perf_counter() - t0
            blown_up = active[~finite_rows(res, active)]
            if blown_up.size:  # a physics blow-up: NaN/inf joint state or reward
                drop(blown_up, "non-finite joint state or reward")
            reset_by_sim = np.setdiff1d(active[unstable_rows(res, active)], blown_up)
            if reset_by_sim.size:  # the physics engine reset the state itself (MuJoCo's warning)
                drop(reset_by_sim, "the simulator reset an unstable state (info['sim_unstable'])")
                blown_up = np.union1d(blown_up, reset_by_sim)

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
                final_prompts = self.prompts(final)
                t0 = time.perf_counter()
                with torch.no_grad():
                    final_values[cut] = (
                        self.policy.act(final.image[cut], [final_prompts[i] for i in cut], temperature, True)
                        .values.float().cpu().numpy()
                    )
                policy_s += time.perf_counter() - t0

            rows["images"].append(obs.image)
            rows["instructions"].append(np.array(instructions, dtype=object))
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
            for env_id in np.flatnonzero(valid):
                ep = by_index[current[env_id]]
                ep.length += 1
                ep.reward_sum += float(reward[env_id])
                ep.success = ep.success or bool(success[env_id])
                if terminated[env_id] or truncated[env_id]:
                    current[env_id] = -1
                    finished.append(env_id)
                    if on_episode is not None:
                        on_episode(ep)
            restart = [*blown_up.tolist(), *finished][: len(queue)]  # replays are queued first
            if restart:
                t0 = time.perf_counter()
                obs = start(restart)
                sim_s += time.perf_counter() - t0

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
            instructions=stacked["instructions"],
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
            sim_faults=sim_faults,
        )


def policy_prompts(observation: Observation, env: Simulator, override: str | None) -> list[str]:
    """Each env's prompt: ``override`` when given, else its episode's instruction from the
    observation (a backend that gives none: the simulator's one instruction)."""
    if override is not None:
        return [override] * env.num_envs
    if observation.instructions is not None:
        return list(observation.instructions)
    if env.instruction is None:
        raise ValueError(
            f"{type(env).__name__} gives no instruction in its observations; "
            "set language_instruction to the task's instruction"
        )
    return [env.instruction] * env.num_envs


def finite_rows(result: StepResult, env_ids: np.ndarray) -> np.ndarray:
    """Per listed env, whether its joint state and reward are finite (False: a blow-up)."""
    obs = result.observation
    return (
        np.isfinite(obs.qpos[env_ids]).all(axis=1)
        & np.isfinite(obs.qvel[env_ids]).all(axis=1)
        & np.isfinite(np.asarray(result.reward, dtype=np.float64)[env_ids])
    )


def unstable_rows(result: StepResult, env_ids: np.ndarray) -> np.ndarray:
    """Per listed env, whether the simulator flagged (and reset) an unstable state this step.

    Backends that do not report ``info["sim_unstable"]`` count as stable.
    """
    flags = result.info.get("sim_unstable")
    if flags is None:
        return np.zeros(len(env_ids), dtype=bool)
    return np.asarray(flags, dtype=bool)[env_ids]
