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

Parts: ``EpisodeQueue`` (``episode_queue.py``) decides which env plays which
seeded episode and puts a spoiled one back first; ``RolloutBuffer``
(``buffer.py``) holds the preallocated time-major arrays and forgets a spoiled
episode's rows; ``RolloutCollector.collect`` is the step loop: act, step, record,
restart the envs whose episodes ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vla_rl_lib.rollout.buffer import RolloutBuffer
from vla_rl_lib.rollout.env_groups import EnvGroups
from vla_rl_lib.rollout.episode_queue import EpisodeQueue
from vla_rl_lib.seed_ranges import SEED_CEILING, TRAIN_SEED_FLOOR

if TYPE_CHECKING:
    from lift import Simulator
    from lift.types import Observation, StepResult
    from vla_rl_lib.policy.base import ActOutput, VLAPolicy

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

    The environments are stepped in groups: one group per simulator of an
    ``EnvGroups`` (see ``env_groups.py``), else the whole batch. At every step
    each group in turn gets its actions from one policy call on its own rows,
    then its simulator steps. With ``overlap`` the policy call for the next
    group runs on a second thread while this thread steps the current group;
    the calls happen in the same order, on the same rows, with the same
    random stream, so the rollout is the synchronous one to the bit. The
    simulator stays on the calling thread (a GL context belongs to the thread
    that made it current).

    ``instruction`` None prompts the policy with each episode's own instruction from
    the observation (``Observation.instructions``); a string overrides it for every
    episode (single-instruction tasks). The reward is the simulator's
    (``StepResult.reward``: its ``reward_mode`` decides binary or dense).
    """

    def __init__(
        self,
        env: Simulator,
        policy: VLAPolicy,
        instruction: str | None = None,
        overlap: bool = False,
    ) -> None:
        if policy.action_dim != env.action_dim:
            raise ValueError(
                f"the policy emits {policy.action_dim}-D actions but the simulator's control_mode "
                f"{env.config.control_mode!r} takes {env.action_dim}-D ones; use a policy trained in "
                "that control mode, or set rollout.control_mode to the one the policy was trained in"
            )
        self.env = env
        self.policy = policy
        self.instruction = instruction
        self.overlap = overlap

    def groups(self) -> list[tuple[Simulator, np.ndarray]]:
        """Each group's simulator and the batch columns it holds."""
        if isinstance(self.env, EnvGroups):
            return list(zip(self.env.groups, self.env.group_envs, strict=True))
        return [(self.env, np.arange(self.env.num_envs))]

    def act(
        self,
        env: Simulator,
        observation: Observation,
        rows: np.ndarray,
        temperature: float,
        greedy: bool,
    ) -> ActOutput:
        """The policy's output for the listed rows of one group's (``env``'s) observation.

        The one place a rollout calls the policy; it may run on the overlap thread
        (where grad mode is off only if set here: it is thread-local).
        """
        prompts = policy_prompts(observation, env, self.instruction)
        with torch.no_grad():
            return self.policy.act(
                observation.image[rows], [prompts[i] for i in rows], temperature, greedy
            )

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
        t_start = time.perf_counter()
        play = _Playthrough(self, seeds, record_frames, frame_size)

        def timed_act(group: int, observation: Observation, rows: np.ndarray) -> tuple[ActOutput, float]:
            t0 = time.perf_counter()
            out = self.act(play.groups[group][0], observation, rows, temperature, greedy)
            return out, time.perf_counter() - t0

        with ThreadPoolExecutor(1, "policy") if self.overlap else _Inline() as pool:

            def submit(group: int | None) -> Future | None:
                if group is None:
                    return None
                return pool.submit(timed_act, group, play.obs[group], play.active_rows(group))

            group = play.next_group(after=-1)
            pending = submit(group)
            while group is not None:
                out, seconds = pending.result()
                play.policy_s += seconds
                following = play.next_group(after=group)
                pending = submit(following)  # its policy call runs while this group steps
                for ep in play.step(group, out, temperature):
                    if on_episode is not None:
                        on_episode(ep)
                if following is None and play.group_active(group):
                    following, pending = group, submit(group)
                group = following
        return play.rollout(time.perf_counter() - t_start)


class _Inline:
    """A stand-in for the overlap thread pool that runs each call at once, on this thread."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # re-raised by result(), as the thread pool does
            future.set_exception(exc)
        return future


class _Playthrough:
    """The state of one ``collect``: the episode queue, the episodes, the recorded steps.

    Everything here runs on the calling thread; only the policy calls of
    ``RolloutCollector.collect`` may run elsewhere. Group rows are a group's own
    env indices; ``cols[rows]`` are the same envs' columns in the batch.
    """

    def __init__(
        self, collector: RolloutCollector, seeds: Sequence[int], record_frames: int, frame_size: int | None
    ) -> None:
        self.collector = collector
        self.record_frames = record_frames
        self.frame_hw = None if frame_size is None else (frame_size, frame_size)
        self.groups = collector.groups()
        num_envs = sum(len(cols) for _, cols in self.groups)
        self.queue = EpisodeQueue(seeds, num_envs)
        self.buffer = RolloutBuffer(num_envs, collector.policy.action_dim)
        self.episodes: dict[int, Episode] = {}  # the episodes playing or finished, by index
        self.steps = [0] * len(self.groups)  # the buffer row each group fills next
        self.sim_faults = 0
        self.sim_s = self.policy_s = 0.0
        self.obs: list[Observation | None] = [  # each group's latest observation
            self.start(group, np.arange(len(cols))) for group, (_, cols) in enumerate(self.groups)
        ]

    # ------------------------------------------------------------------ schedule
    def active_rows(self, group: int) -> np.ndarray:
        return np.flatnonzero(self.queue.active(self.groups[group][1]))

    def group_active(self, group: int) -> bool:
        return bool(self.queue.active(self.groups[group][1]).any())

    def next_group(self, after: int) -> int | None:
        """The next group (in cyclic order, not ``after`` itself) with an episode playing."""
        count = len(self.groups)
        for step in range(1, count + 1):
            group = (after + step) % count
            if group != after and self.group_active(group):
                return group
        return None

    # ------------------------------------------------------------------ episodes
    def start(self, group: int, rows: np.ndarray | list[int]) -> Observation | None:
        """Start the next queued episodes in ``rows`` of ``group`` (while the queue lasts);
        the group's whole observation, None when nothing started."""
        env, cols = self.groups[group]
        started = self.queue.assign([int(cols[row]) for row in rows])
        if not started:
            return None
        for env_id, index, seed in started:
            frames: list[np.ndarray] | None = [] if index < self.record_frames else None
            self.episodes[index] = Episode(index=index, seed=seed, env_id=env_id, frames=frames)
        t0 = time.perf_counter()
        obs = reset_episodes(env, [env_id - int(cols[0]) for env_id, _, _ in started],
                             [seed for _, _, seed in started])  # fmt: skip
        self.sim_s += time.perf_counter() - t0
        return obs

    def drop(self, env_ids: Sequence[int], cause: str, error: Exception | None = None) -> None:
        """Forget the episodes playing in ``env_ids`` (batch columns) and queue each again
        from its seed, ahead of the episodes not yet started."""
        for env_id, (index, seed, times) in zip(env_ids, self.queue.requeue(env_ids), strict=True):
            if times > MAX_EPISODE_REPLAYS:
                raise SimulatorFaultError(
                    f"the simulator failed {times} times on the episode with start "
                    f"seed {seed} (last: {cause}); this is not a one-off fault: reproduce it "
                    f"with lift.make_env(...).reset(seed={seed}) and fix the simulator or task"
                ) from error
            self.buffer.invalidate(int(env_id), index)
            del self.episodes[index]
            self.sim_faults += 1
            log.warning(
                "simulator fault in env %d (%s); replaying episode %d from seed %d",
                env_id, cause, index, seed,
            )  # fmt: skip

    def rollout(self, total_s: float) -> Rollout:
        return Rollout(
            **self.buffer.finish(),
            episodes=sorted(self.episodes.values(), key=lambda e: e.index),
            seconds_sim=self.sim_s,
            seconds_policy=self.policy_s,
            seconds_total=total_s,
            sim_faults=self.sim_faults,
        )

    # ------------------------------------------------------------------ one group's step
    def step(self, group: int, out: ActOutput, temperature: float) -> list[Episode]:
        """Step ``group`` with the policy's output for its playing rows; the episodes that ended."""
        env, cols = self.groups[group]
        obs, rows = self.obs[group], self.active_rows(group)
        self.film(group, rows)
        actions = np.zeros((len(cols), self.collector.policy.action_dim), dtype=np.float32)
        actions[rows] = out.actions
        t0 = time.perf_counter()
        try:
            res = env.step(actions)
        except Exception as exc:  # a failed batched step leaves no env of the group trustworthy
            self.drop(cols[rows], f"env.step raised {type(exc).__name__}: {exc}", exc)
            self.obs[group] = self.start(group, rows)
            self.sim_s += time.perf_counter() - t0
            return []
        self.sim_s += time.perf_counter() - t0
        faulted = self.drop_faults(res, cols, rows)

        valid = self.queue.active(cols)
        terminated = res.terminated & valid
        truncated = res.truncated & ~res.terminated & valid
        reward = np.asarray(res.reward).astype(np.float32)
        row = self.buffer.row(self.steps[group], obs.image.shape[1:], obs.image.dtype)
        self.steps[group] += 1
        row["images"][cols] = obs.image
        row["instructions"][cols] = policy_prompts(obs, env, self.collector.instruction)
        row["token_ids"][cols[rows]] = out.token_ids.cpu().numpy()
        row["log_probs"][cols[rows]] = out.log_probs.float().cpu().numpy()
        row["values"][cols[rows]] = out.values.float().cpu().numpy()
        row["rewards"][cols] = np.where(valid, reward, 0.0)
        row["terminated"][cols] = terminated
        row["truncated"][cols] = truncated
        row["valid"][cols] = valid
        row["episode_index"][cols] = self.queue.playing[cols]
        cut = np.flatnonzero(truncated)
        if cut.size:  # bootstrap a time-limit cut from the value of where it stopped
            row["final_values"][cols[cut]] = self.final_values(env, res, cut, temperature)

        self.obs[group] = res.observation
        success = np.asarray(res.info["success"], dtype=bool)
        finished = self.tally(cols, valid, reward, success, terminated | truncated)
        restart = [*faulted.tolist(), *(ep.env_id - int(cols[0]) for ep in finished)]
        started = self.start(group, restart)  # replays are queued first
        if started is not None:
            self.obs[group] = started
        return finished

    def film(self, group: int, rows: np.ndarray) -> None:
        """A third-person frame of each playing episode that records frames."""
        env, cols = self.groups[group]
        for row in rows:
            ep = self.episodes[int(self.queue.playing[cols[row]])]
            if ep.frames is not None:
                ep.frames.append(env.render("third_person", env_ids=[row], size=self.frame_hw)[0])

    def drop_faults(self, res: StepResult, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Drop the episodes a step spoiled (non-finite state or reward, or a state the engine
        reset itself); the group rows they played, to restart."""
        blown_up = rows[~finite_rows(res, rows)]
        if blown_up.size:  # a physics blow-up: NaN/inf joint state or reward
            self.drop(cols[blown_up], "non-finite joint state or reward")
        reset_by_sim = np.setdiff1d(rows[unstable_rows(res, rows)], blown_up)
        if reset_by_sim.size:  # the physics engine reset the state itself (MuJoCo's warning)
            self.drop(
                cols[reset_by_sim], "the simulator reset an unstable state (info['sim_unstable'])"
            )
            blown_up = np.union1d(blown_up, reset_by_sim)
        return blown_up

    def final_values(
        self, env: Simulator, res: StepResult, cut: np.ndarray, temperature: float
    ) -> np.ndarray:
        """V(where each truncated episode of ``cut`` stopped)."""
        final = res.final_observation if res.final_observation is not None else res.observation
        t0 = time.perf_counter()
        values = self.collector.act(env, final, cut, temperature, True).values
        self.policy_s += time.perf_counter() - t0
        return values.float().cpu().numpy()

    def tally(
        self, cols: np.ndarray, valid: np.ndarray, reward: np.ndarray, success: np.ndarray,
        done: np.ndarray,
    ) -> list[Episode]:
        """Count one step of each valid row's episode; the episodes that ended (rows freed)."""
        finished = []
        for row in np.flatnonzero(valid):
            ep = self.episodes[int(self.queue.playing[cols[row]])]
            ep.length += 1
            ep.reward_sum += float(reward[row])
            ep.success = ep.success or bool(success[row])
            if done[row]:
                self.queue.finish(int(cols[row]))
                finished.append(ep)
        return finished


def finite_rows(result: StepResult, env_ids: np.ndarray) -> np.ndarray:
    """Per listed env, whether its joint state and reward are finite (False: a blow-up)."""
    obs = result.observation
    return (
        np.isfinite(obs.qpos[env_ids]).all(axis=1)
        & np.isfinite(obs.qvel[env_ids]).all(axis=1)
        & np.isfinite(np.asarray(result.reward, dtype=np.float64)[env_ids])
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


def unstable_rows(result: StepResult, env_ids: np.ndarray) -> np.ndarray:
    """Per listed env, whether the simulator flagged (and reset) an unstable state this step.

    Backends that do not report ``info["sim_unstable"]`` count as stable.
    """
    flags = result.info.get("sim_unstable")
    if flags is None:
        return np.zeros(len(env_ids), dtype=bool)
    return np.asarray(flags, dtype=bool)[env_ids]
