"""Held-out evaluation: greedy episodes on fixed seeds, success with a Wilson interval.

Used by the trainer every ``eval_interval`` updates and by
``python -m vla_rl_lib evaluate --checkpoint ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_rl_lib.config import VLARLConfig, apply_overrides
from vla_rl_lib.metrics import wilson_interval
from vla_rl_lib.rollout.collector import Episode, RolloutCollector, evaluation_seeds


@dataclass
class EvalResult:
    update: int
    successes: int
    episodes: int
    success_rate: float
    interval: tuple[float, float]
    per_episode: list[dict[str, Any]]
    recorded: list[Episode]  # episodes with third-person frames

    @property
    def frames(self) -> list[np.ndarray] | None:
        return self.recorded[0].frames if self.recorded else None

    def record(self) -> dict[str, Any]:
        return {
            "eval_success": self.success_rate,
            "eval_success_low": self.interval[0],
            "eval_success_high": self.interval[1],
            "eval_episodes": self.episodes,
        }


def evaluate_policy(
    collector: RolloutCollector,
    seeds: list[int],
    update: int = 0,
    temperature: float = 1.0,
    record_frames: int = 1,
    frame_size: int | None = None,
) -> EvalResult:
    """Greedy episodes on fixed seeds; third-person frames of the first ``record_frames``."""
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
    )


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
) -> EvalResult:
    """Evaluate a checkpoint; with ``render``, write videos of its first episodes.

    ``checkpoint`` is a training checkpoint (``checkpoint_latest``/``checkpoint_best``)
    or a policy directory such as an SFT result; for the latter the simulator settings
    come from ``config``, else its ``config.yaml``, else the default template.

    Videos (mp4 when imageio-ffmpeg is installed, else GIF) go to ``output_dir``,
    by default ``<run>/videos`` beside the checkpoint. Their paths are in
    ``result.videos``.
    """
    from vla_rl_lib.display import save_video
    from vla_rl_lib.rollout.executor import make_rollout_env
    from vla_rl_lib.training.policy_factory import load_any_checkpoint

    checkpoint = Path(checkpoint)
    policy, cfg = load_any_checkpoint(checkpoint, config)
    r = cfg.rollout
    n = num_episodes if num_episodes is not None else cfg.num_eval_episodes
    if n < 1:
        raise ValueError(f"--num-episodes={n} is invalid: need at least 1 episode")
    seeds = evaluation_seeds(cfg.eval_seed if seed is None else seed, n)
    env_settings = {"rollout.num_parallel_envs": min(r.num_parallel_envs, n)}
    if simulator:
        env_settings["rollout.simulator"] = simulator
    if env_id:
        env_settings["rollout.env_id"] = env_id
    env = make_rollout_env(apply_overrides(cfg, env_settings))
    try:
        collector = RolloutCollector(
            env, policy, cfg.language_instruction, r.use_binary_reward, overlap=r.overlap
        )
        result = evaluate_policy(
            collector, seeds, temperature=r.temperature, record_frames=num_videos if render else 0,
            frame_size=256,
        )
    finally:
        env.close()
    result.videos = []
    if render:
        out = Path(output_dir) if output_dir else checkpoint.parent / "videos"
        for ep in result.recorded:
            tag = "success" if ep.success else "failure"
            path = out / f"episode_{ep.index:03d}_seed{ep.seed}_{tag}.mp4"
            result.videos.append(str(save_video(np.stack(ep.frames), path, fps=10)))
    return result
