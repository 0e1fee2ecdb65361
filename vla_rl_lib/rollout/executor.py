"""Where episodes are played: on the learner's own simulator, or on Ray workers.

Both executors split the start seeds of one ``collect`` into the same
contiguous shards (one per ``rollout.num_workers``) and sample each shard from
torch seeded by ``(one draw from the driver's torch RNG, shard index)``. The
trainer seeds that RNG from ``(seed, update)`` before it collects, so every
shard's action samples are a pure function of the update and the shard, and
the local and Ray executors play the same episodes: same seeds, lengths,
successes, token ids and log-probs. Their results merge side by side along
the environment axis into one ``Rollout`` with the collector's layout, so
``rollout_to_batch`` takes it unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np
import torch

from lift import make_env
from vla_rl_lib.rollout.collector import Episode, Rollout, RolloutCollector
from vla_rl_lib.rollout.env_groups import EnvGroups, group_sizes

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from lift import Simulator
    from vla_rl_lib.config import VLARLConfig
    from vla_rl_lib.policy.base import VLAPolicy


class CollectOptions(TypedDict, total=False):
    """The keyword arguments of ``RolloutCollector.collect`` (its defaults apply), which an
    executor hands on to the collector of each shard."""

    temperature: float
    greedy: bool
    record_frames: int  # of the whole collect: each shard films its share
    frame_size: int | None
    on_episode: Callable[[Episode], None] | None


class RolloutExecutor(Protocol):
    """What the trainer and ``evaluate_policy`` need from whatever plays the episodes."""

    metrics: dict[str, float]  # figures of the last collect, logged with the update

    def collect(self, seeds: Sequence[int], **options: Unpack[CollectOptions]) -> Rollout: ...

    def close(self) -> None: ...


def make_rollout_env(config: VLARLConfig, split: str = "train") -> Simulator:
    """The batched simulator of a run, built from its rollout settings, playing ``split``
    (``lift.list_splits(env_id)``).

    On the CPU backend it holds ``rollout.env_groups`` simulators (``EnvGroups``),
    so that the collector can step one group while the policy acts for another;
    a GPU backend steps its whole batch in one call and stays one simulator.
    """
    r = config.rollout
    groups = group_sizes(r.num_parallel_envs, r.env_groups if r.backend == "cpu" else 1)
    envs = [
        make_env(
            r.simulator,
            r.env_id,
            split=split,
            num_envs=size,
            backend=r.backend,
            camera=r.camera,
            image_size=r.image_size,
            control_mode=r.control_mode,
            max_episode_steps=r.max_steps,
            reward_mode="binary" if r.use_binary_reward else "dense",
            auto_reset=False,
            seed=config.seed,
        )
        for size in groups
    ]
    return envs[0] if len(envs) == 1 else EnvGroups(envs)


def make_collector(config: VLARLConfig, env: Simulator, policy: VLAPolicy) -> RolloutCollector:
    """The collector of a run: its instruction and overlap settings (the reward mode is
    the simulator's: ``make_rollout_env``)."""
    r = config.rollout
    return RolloutCollector(env, policy, config.language_instruction, overlap=r.overlap)


def shard_seeds(seeds: Sequence[int], num_shards: int) -> list[tuple[int, list[int]]]:
    """Contiguous, near-equal slices of ``seeds`` as ``(offset, seeds)``; empty slices dropped.

    Contiguous slices keep a GRPO group (repeated start seeds) on one worker
    whenever the group size divides the shard size.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    bounds = np.linspace(0, len(seeds), num_shards + 1).round().astype(int)
    return [
        (int(lo), [int(s) for s in seeds[lo:hi]])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        if hi > lo
    ]


def shard_sampling_seeds(num_shards: int) -> list[int]:
    """One torch seed per shard, from a single draw of the driver's (trainer-seeded) torch RNG."""
    base = int(torch.randint(0, 2**62, (1,)).item())
    return [
        int(np.random.default_rng([base, shard, 0x5A4D]).integers(0, 2**63 - 1))
        for shard in range(num_shards)
    ]


def play_shard(
    collector: RolloutCollector,
    seeds: Sequence[int],
    sampling_seed: int,
    **options: Unpack[CollectOptions],
) -> Rollout:
    """One shard's episodes with torch (CPU and CUDA) seeded for this shard alone."""
    torch.manual_seed(sampling_seed)
    return collector.collect(seeds, **options)


def play_shards(
    collector: RolloutCollector,
    shards: Sequence[tuple[int, Sequence[int]]],
    sampling: Sequence[int],
    **options: Unpack[CollectOptions],
) -> Rollout:
    """``shards`` (``shard_seeds``) played one after another on one collector, each with its
    sampling seed (``shard_sampling_seeds``), merged into one rollout."""
    columns = collector.env.num_envs
    played = []
    # Shards reseed torch; the driver's stream after collect must not depend on the executor.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        for shard, ((offset, seeds), sampling_seed) in enumerate(zip(shards, sampling, strict=True)):
            mine = shard_options(options, offset, shard * columns)
            played.append((offset, play_shard(collector, seeds, sampling_seed, **mine)))
    return merge_shards(played)


def shard_options(options: CollectOptions, offset: int, column: int) -> CollectOptions:
    """``options`` for the shard whose episodes start at index ``offset`` and column
    ``column`` of the merged rollout: its share of the filmed episodes, and
    ``on_episode`` called with each episode as it sits in the merged rollout."""
    mine = CollectOptions(**options)
    if "record_frames" in options:
        mine["record_frames"] = shard_record_frames(options["record_frames"], offset)
    on_episode = options.get("on_episode")
    if on_episode is not None:
        mine["on_episode"] = lambda ep: on_episode(relabel(ep, offset, column))
    return mine


def shard_record_frames(record_frames: int, offset: int) -> int:
    """Frames are recorded for the first ``record_frames`` episodes of the whole collect."""
    return max(0, record_frames - offset)


def relabel(episode: Episode, offset: int, column: int) -> Episode:
    """A shard's episode as it sits in the merged rollout: global index, merged env column."""
    return dataclasses.replace(
        episode, index=episode.index + offset, env_id=episode.env_id + column
    )


def merge_shards(
    shards: Sequence[tuple[int, Rollout]], seconds_total: float | None = None
) -> Rollout:
    """Shard rollouts side by side along the env axis, padded in time with invalid steps.

    ``shards`` are ``(offset, rollout)`` in shard order. Simulator and policy
    seconds add up over shards (worker-seconds when the shards ran in
    parallel); ``seconds_total`` defaults to their sum (shards played one after
    another) and should be the wall-clock when they ran in parallel.
    """
    if not shards:
        raise ValueError("merge_shards needs at least one shard; was collect given no seeds?")
    horizon = max(r.valid.shape[0] for _, r in shards)

    def padded(array: np.ndarray, fill: float | bool | int) -> np.ndarray:
        pad = np.full((horizon - array.shape[0], *array.shape[1:]), fill, dtype=array.dtype)
        return np.concatenate([array, pad])

    def side_by_side(name: str, fill: float | bool | int) -> np.ndarray:
        return np.concatenate([padded(getattr(r, name), fill) for _, r in shards], axis=1)

    episode_index = np.concatenate(
        [padded(np.where(r.valid, r.episode_index + offset, -1), -1) for offset, r in shards],
        axis=1,
    )
    episodes: list[Episode] = []
    column = 0
    for offset, rollout in shards:
        episodes.extend(relabel(ep, offset, column) for ep in rollout.episodes)
        column += rollout.valid.shape[1]
    episodes.sort(key=lambda e: e.index)
    return Rollout(
        images=side_by_side("images", 0),
        instructions=side_by_side("instructions", ""),
        token_ids=side_by_side("token_ids", 0),
        log_probs=side_by_side("log_probs", 0.0),
        values=side_by_side("values", 0.0),
        rewards=side_by_side("rewards", 0.0),
        terminated=side_by_side("terminated", False),
        truncated=side_by_side("truncated", False),
        next_values=side_by_side("next_values", 0.0),
        valid=side_by_side("valid", False),
        episode_index=episode_index,
        episodes=episodes,
        seconds_sim=sum(r.seconds_sim for _, r in shards),
        seconds_policy=sum(r.seconds_policy for _, r in shards),
        seconds_total=(
            sum(r.seconds_total for _, r in shards) if seconds_total is None else seconds_total
        ),
        sim_faults=sum(r.sim_faults for _, r in shards),
    )


class LocalExecutor:
    """Plays the shards one after another on the learner's own simulator and policy."""

    def __init__(self, collector: RolloutCollector, num_shards: int = 1) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards={num_shards} must be >= 1 (rollout.num_workers)")
        self.collector = collector
        self.num_shards = num_shards
        self.metrics: dict[str, float] = {}

    @property
    def env(self) -> Simulator:
        return self.collector.env

    @property
    def policy(self) -> VLAPolicy:
        return self.collector.policy

    def collect(self, seeds: Sequence[int], **options: Unpack[CollectOptions]) -> Rollout:
        shards = shard_seeds(seeds, self.num_shards)
        return play_shards(self.collector, shards, shard_sampling_seeds(len(shards)), **options)

    def close(self) -> None:
        """Nothing to release: the trainer owns the simulator and the policy."""
