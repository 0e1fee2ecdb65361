"""Held-out evaluation: greedy episodes on fixed seeds, success with a Wilson interval.

Used by the trainer every ``eval_interval`` updates and by
``python -m vla_rl_lib evaluate --checkpoint ...``.

Evaluation runs per split of the task (``lift.list_splits``): the same seeds on
each split give independent starts, because a split mixes its own stream into
every episode's generator. ``val`` chooses ``checkpoint_best``; ``test`` and the
OOD splits are reported only. A split's figures are logged as ``<split>/success``,
``<split>/success_low``, ``<split>/success_high`` (95% Wilson) and ``<split>/episodes``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_rl_lib.config import VLARLConfig, apply_overrides
from vla_rl_lib.metrics import wilson_interval
from vla_rl_lib.rollout.collector import Episode, RolloutCollector, evaluation_seeds

SELECTION_SPLIT = "val"  # checkpoint_best and any early-stopping choice look at this split only


def available_splits(env_id: str) -> list[str]:
    """The splits of ``env_id`` (``lift.list_splits``); a task without named splits has ``train``."""
    from lift.splits import SPLITS, list_splits

    return list_splits(env_id) if env_id in SPLITS else ["train"]


def resolve_splits(env_id: str, names: str | Sequence[str]) -> list[str]:
    """Split names from ``"all"``, a comma list or a list; an unknown name raises a one-line
    ValueError listing the available ones."""
    available = available_splits(env_id)
    if isinstance(names, str):
        names = available if names.strip() == "all" else [n.strip() for n in names.split(",")]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(
            f"unknown split(s) {unknown or names!r} for {env_id}; available splits: "
            f"{', '.join(available)} (or all)"
        )
    return list(dict.fromkeys(names))


def reported_only_splits(env_id: str, evaluated: Sequence[str]) -> list[str]:
    """The splits a run evaluates once, at its end: every non-train split not in ``evaluated``
    (the OOD splits by default)."""
    return [s for s in available_splits(env_id) if s != "train" and s not in evaluated]


@dataclass
class EvalResult:
    update: int
    successes: int
    episodes: int
    success_rate: float
    interval: tuple[float, float]
    per_episode: list[dict[str, Any]]
    recorded: list[Episode]  # episodes with third-person frames
    split: str = "train"
    videos: list[str] = field(default_factory=list)  # written by evaluate_checkpoint(render=True)

    @property
    def frames(self) -> list[np.ndarray] | None:
        return self.recorded[0].frames if self.recorded else None

    def record(self) -> dict[str, Any]:
        """This split's metric keys (``val/success``, ``val/success_low``, ...)."""
        return {
            f"{self.split}/success": self.success_rate,
            f"{self.split}/success_low": self.interval[0],
            f"{self.split}/success_high": self.interval[1],
            f"{self.split}/episodes": self.episodes,
        }

    def row(self) -> dict[str, Any]:
        low, high = self.interval
        return {"split": self.split, "episodes": self.episodes, "successes": self.successes,
                "success_rate": self.success_rate, "wilson95_low": low, "wilson95_high": high}  # fmt: skip


@dataclass
class SplitResults:
    """One evaluation of a policy on several splits (the same seeds on each), keyed by split."""

    update: int
    by_split: dict[str, EvalResult]
    videos: list[str] = field(default_factory=list)

    def __getitem__(self, split: str) -> EvalResult:
        return self.by_split[split]

    @property
    def frames(self) -> list[np.ndarray] | None:
        """Third-person frames of the first filmed episode (the first split that has one)."""
        return next((r.frames for r in self.by_split.values() if r.frames), None)

    def record(self) -> dict[str, Any]:
        return {k: v for result in self.by_split.values() for k, v in result.record().items()}

    def rows(self) -> list[dict[str, Any]]:
        """The per-split table: episodes, successes, success rate and its 95% Wilson interval."""
        return [result.row() for result in self.by_split.values()]


class SplitCollectors:
    """One collector per split of a run's task, each on its own simulator built at first use
    (episodes of a split can only be played by an env made for it); ``close`` closes them."""

    def __init__(self, config: VLARLConfig, policy: Any, num_envs: int | None = None) -> None:
        from vla_rl_lib.rollout.executor import make_collector, make_rollout_env

        if num_envs is not None:
            config = apply_overrides(config, {"rollout.num_parallel_envs": num_envs})
        self.config, self.policy, self._make_env = config, policy, make_rollout_env
        self._make_collector = make_collector
        self._collectors: dict[str, RolloutCollector] = {}

    def __call__(self, split: str) -> RolloutCollector:
        if split not in self._collectors:
            cfg = self.config
            env = self._make_env(cfg, split)
            self._collectors[split] = self._make_collector(cfg, env, self.policy)
        return self._collectors[split]

    def close(self) -> None:
        for collector in self._collectors.values():
            collector.env.close()
        self._collectors.clear()


def evaluate_policy(
    collector: RolloutCollector,
    seeds: list[int],
    update: int = 0,
    temperature: float = 1.0,
    record_frames: int = 1,
    frame_size: int | None = None,
    split: str = "train",
) -> EvalResult:
    """Greedy episodes on fixed seeds of the split ``collector``'s env plays (named by ``split``
    in the metric keys); third-person frames of the first ``record_frames``."""
    rollout = collector.collect(
        seeds, temperature=temperature, greedy=True, record_frames=record_frames,
        frame_size=frame_size,
    )
    episodes = rollout.episodes
    successes = sum(ep.success for ep in episodes)
    per_episode = [
        {"episode": ep.index, "seed": ep.seed, "success": ep.success, "length": ep.length,
         "return": round(ep.reward_sum, 4)}
        for ep in episodes
    ]
    return EvalResult(
        update=update,
        successes=successes,
        episodes=len(episodes),
        success_rate=successes / len(episodes),
        interval=wilson_interval(successes, len(episodes)),
        per_episode=per_episode,
        recorded=[ep for ep in episodes if ep.frames],
        split=split,
    )


def evaluate_splits(
    collector_for: Callable[[str], RolloutCollector],
    splits: Sequence[str],
    seeds: list[int],
    update: int = 0,
    temperature: float = 1.0,
    record_frames: int | Mapping[str, int] = 1,
    frame_size: int | None = None,
    episodes: Mapping[str, int] | None = None,
) -> SplitResults:
    """``evaluate_policy`` on each split with the same seeds; ``collector_for(split)`` plays it
    (a ``SplitCollectors``). ``record_frames``: episodes filmed per split, or a mapping
    split -> count (splits left out are not filmed). ``episodes``: split -> how many of
    ``seeds`` (their first ones) that split plays; splits left out play them all."""
    results = {}
    for split in splits:
        filmed = record_frames.get(split, 0) if isinstance(record_frames, Mapping) else record_frames
        mine = seeds[: episodes[split]] if episodes and split in episodes else seeds
        results[split] = evaluate_policy(
            collector_for(split), mine, update, temperature, filmed, frame_size, split=split
        )
    return SplitResults(update, results)


def evaluate_checkpoint(
    checkpoint: str | Path,
    num_episodes: int | None = None,
    simulator: str | None = None,
    env_id: str | None = None,
    seed: int | None = None,
    render: bool = False,
    output_dir: str | Path | None = None,
    num_videos: int = 2,
    config: VLARLConfig | None = None,
    split: str = "train",
    splits: str | Sequence[str] | None = None,
    split_episodes: Mapping[str, int] | None = None,
) -> EvalResult | SplitResults:
    """Evaluate a checkpoint on ``split`` of its task (the held-out seeds of ``train`` by
    default), or, with ``splits`` (``"all"``, a comma list or a list), on each of those splits
    with the same seeds: a ``SplitResults`` whose ``rows()`` is the per-split table. With
    ``render``, write videos of the first episodes (of each split).

    ``split_episodes`` (with ``splits``): episodes for some splits instead of
    ``num_episodes``, e.g. ``{"test": 200}`` beside ``num_episodes=100``; every split plays
    the first seeds of the same held-out stream.

    ``checkpoint`` is a training checkpoint (``checkpoint_latest``/``checkpoint_best``)
    or a policy directory such as an SFT result; for the latter the simulator settings
    come from ``config``, else its ``config.yaml``, else the default template.

    Videos (mp4 when imageio-ffmpeg is installed, else GIF) go to ``output_dir``,
    by default ``<run>/videos`` beside the checkpoint. Their paths are in
    ``result.videos``.
    """
    from vla_rl_lib.display import save_video
    from vla_rl_lib.training.policy_factory import load_any_checkpoint

    checkpoint = Path(os.path.realpath(checkpoint))  # outputs/<experiment>/checkpoint_best -> its run
    if num_episodes is not None and num_episodes < 1:  # before the (slow) model load
        raise ValueError(f"num_episodes={num_episodes} is invalid: need at least 1 episode")
    split_episodes = dict(split_episodes or {})
    bad = {k: v for k, v in split_episodes.items() if not (isinstance(v, int) and v >= 1)}
    if bad:
        raise ValueError(f"split_episodes {bad} is invalid: each split needs at least 1 episode")
    if split_episodes and splits is None:
        raise ValueError(f"split_episodes {split_episodes} needs splits (e.g. splits='all')")
    if splits is not None and env_id:  # the checkpoint's own env is only known after the load
        splits = resolve_splits(env_id, splits)
    policy, cfg = load_any_checkpoint(checkpoint, config)
    r = cfg.rollout
    n = num_episodes if num_episodes is not None else cfg.num_eval_episodes
    if n < 1:
        raise ValueError(
            f"num_eval_episodes={n} in the checkpoint's config: pass num_episodes >= 1"
        )
    env_settings = {}
    if simulator:
        env_settings["rollout.simulator"] = simulator
    if env_id:
        env_settings["rollout.env_id"] = env_id
    cfg = apply_overrides(cfg, env_settings) if env_settings else cfg
    names = [split] if splits is None else resolve_splits(cfg.rollout.env_id, splits)
    stray = sorted(set(split_episodes) - set(names))
    if stray:
        raise ValueError(f"split_episodes names {stray}, which is not evaluated here ({', '.join(names)})")
    counts = {name: split_episodes.get(name, n) for name in names}
    seeds = evaluation_seeds(cfg.eval_seed if seed is None else seed, max(counts.values()))
    collectors = SplitCollectors(cfg, policy, num_envs=min(r.num_parallel_envs, max(counts.values())))
    try:
        result = evaluate_splits(
            collectors, names, seeds, temperature=r.temperature,
            record_frames=num_videos if render else 0, frame_size=r.media_size, episodes=counts,
        )  # fmt: skip
    finally:
        collectors.close()
    if render:
        out = Path(output_dir) if output_dir else checkpoint.parent / "videos"
        for name, one in result.by_split.items():
            for ep in one.recorded:
                tag = "success" if ep.success else "failure"
                stem = f"episode_{ep.index:03d}_seed{ep.seed}_{tag}"
                path = out / (f"{stem}.mp4" if splits is None else f"{name}_{stem}.mp4")
                one.videos.append(str(save_video(np.stack(ep.frames), path, fps=10)))
            result.videos += one.videos
    return result[split] if splits is None else result
