"""Scripted-expert success rate on seeded PickPlace-CRANE-X7 episodes.

    python benchmarks/expert.py --episodes 100

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
        lift.ENV_ID,
        num_envs=min(args.num_envs, args.episodes),
        obs_mode=args.obs_mode,
        control_mode=args.control_mode,
        max_episode_steps=args.max_episode_steps,
    )
    expert = ScriptedExpert(env)
    env.reset(seed=args.seed, seed_stream=args.seed_stream)
    successes: list[bool] = []
    lengths: list[int] = []
    start = time.perf_counter()
    steps = 0
    while len(successes) < args.episodes:
        result = env.step(expert.act())
        steps += env.num_envs
        for i in np.flatnonzero(result.done):
            successes.append(bool(result.terminated[i]))
            lengths.append(int(result.info["elapsed_steps"][i]))
    elapsed = time.perf_counter() - start
    successes, lengths = successes[: args.episodes], np.array(lengths[: args.episodes])
    ok = lengths[np.array(successes)]
    print(
        f"control_mode={args.control_mode} obs_mode={args.obs_mode} seed={args.seed} stream={args.seed_stream}"
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
