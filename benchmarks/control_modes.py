"""Wall time per batched env step in each control mode, with the scripted expert acting.

    python benchmarks/control_modes.py --num-envs 8 --image-size 64 --steps 300

Only ``env.step`` is timed (the median step) (rendering included with ``--obs-mode rgb``); the expert's
own time is not. ``pd_ee_delta_pos`` adds the environment's IK to every step.
Last line: ``<mode>_ms_per_step=...`` for each mode.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import lift
from lift.expert import ScriptedExpert


def step_seconds(mode: str, args: argparse.Namespace) -> float:
    """Median wall seconds of one ``env.step`` over ``args.steps`` steps of expert play (the
    median, not the mean: on a shared machine other processes' bursts land in the tail)."""
    env = lift.make_env(
        "mujoco", args.env_id, num_envs=args.num_envs, control_mode=mode, obs_mode=args.obs_mode,
        image_size=args.image_size, max_episode_steps=args.max_episode_steps, seed=args.seed,
    )  # fmt: skip
    expert = ScriptedExpert(env)
    env.reset(seed=args.seed)
    seconds = []
    for _ in range(args.steps):
        actions = expert.act()
        t0 = time.perf_counter()
        env.step(actions)
        seconds.append(time.perf_counter() - t0)
    env.close()
    return float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default=lift.PICKPLACE_ENV_ID, choices=lift.ENV_IDS)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--obs-mode", default="rgb", choices=lift.types.OBS_MODES)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per mode")
    parser.add_argument("--max-episode-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=list(lift.types.CONTROL_MODES),
                        choices=lift.types.CONTROL_MODES)  # fmt: skip
    args = parser.parse_args()
    results = {mode: step_seconds(mode, args) for mode in args.modes}
    print(f"num_envs={args.num_envs} obs_mode={args.obs_mode} image_size={args.image_size} steps={args.steps}")
    print(" ".join(f"{mode}_ms_per_step={seconds * 1e3:.2f}" for mode, seconds in results.items()))


if __name__ == "__main__":
    main()
