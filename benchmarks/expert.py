"""Scripted-expert success rate on seeded episodes of one task and split.

    python benchmarks/expert.py --env-id PickPlace-CRANE-X7 --split test --episodes 100

Episodes run in batches of ``--num-envs`` fresh starts (episode k of the split's
seed sequence is always the same start), so every episode counts, short or long.

Last line: ``success_rate=... episodes=... mean_length=...``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import lift
from lift.expert import ScriptedExpert


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--env-id", default=lift.ENV_ID, choices=lift.ENV_IDS)
    parser.add_argument("--split", default="train", help="see lift.list_splits(env_id)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=20, help="episodes run side by side")
    parser.add_argument(
        "--control-mode", default="pd_joint_delta_pos", choices=lift.types.CONTROL_MODES
    )
    parser.add_argument("--obs-mode", default="state", choices=lift.types.OBS_MODES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-stream", type=int, default=0)
    parser.add_argument("--max-episode-steps", type=int, default=200)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    env = lift.make_env(
        "mujoco",
        args.env_id,
        num_envs=min(args.num_envs, args.episodes),
        obs_mode=args.obs_mode,
        control_mode=args.control_mode,
        max_episode_steps=args.max_episode_steps,
        split=args.split,
        auto_reset=False,
    )
    expert = ScriptedExpert(env)
    env.reset(seed=args.seed, seed_stream=args.seed_stream)
    successes: list[bool] = []
    lengths: list[int] = []
    start = time.perf_counter()
    steps = 0
    while len(successes) < args.episodes:
        if successes:
            env.reset()  # the next num_envs starts of the same seed sequence
        running = np.ones(env.num_envs, dtype=bool)
        while running.any():
            result = env.step(expert.act())
            steps += int(running.sum())
            for i in np.flatnonzero(result.done & running):
                successes.append(bool(result.terminated[i]))
                lengths.append(int(result.info["elapsed_steps"][i]))
            running &= ~result.done
    elapsed = time.perf_counter() - start
    successes, lengths = successes[: args.episodes], np.array(lengths[: args.episodes])
    ok = lengths[np.array(successes)]
    print(
        f"env_id={args.env_id} split={args.split} control_mode={args.control_mode} "
        f"obs_mode={args.obs_mode} seed={args.seed} stream={args.seed_stream}"
    )
    if ok.size:
        print(
            f"successful episode length: min={ok.min()} median={int(np.median(ok))} max={ok.max()}"
        )
    print(f"env_steps_per_s={steps / elapsed:.0f} wall_s={elapsed:.1f}")
    print(
        f"success_rate={np.mean(successes):.3f} episodes={args.episodes} "
        f"mean_length={lengths.mean():.1f}"
    )


if __name__ == "__main__":
    main()
