"""The scripted expert under DART execution noise: success rate and how far the gripper strays.

    python benchmarks/demo_noise.py --sigmas 0.1 0.2 0.3 --control-mode pd_ee_delta_pos

Plays ``--episodes`` PickPlace starts (episode k: ``env.reset(seed=seed + k)``, as demo
collection does) once clean and once per noise std (``ExecutionNoise``, the noise of
``sft.demo_action_noise``), with no rendering. Stray: for each noisy step, the distance
from the gripper to the nearest point of the same episode's clean path; per episode its
maximum, reported as median and 90th percentile over episodes. The expert cancels a
step's noise on the next step (its action heads for its own waypoint), so the stray
stays near ``sigma * EE_MAX_DELTA``; ``--follow-target`` lets it accumulate. Failed episodes are the
demos the collector drops (it keeps playing new seeds until it has ``num_demos``).

One line per sigma: ``sigma=... success=k/n ... fail_out_of_steps=...``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import lift
from lift.expert import ScriptedExpert
from vla_rl_lib.rollout.collector import reset_episodes
from vla_rl_lib.sft.demos import Attempt, ExecutionNoise


def play(args: argparse.Namespace, sigma: float) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
    """Gripper paths (T, 3) and success by episode seed."""
    env = lift.make_env(
        "mujoco", args.env_id, num_envs=args.num_envs, obs_mode="state",
        control_mode=args.control_mode, max_episode_steps=args.max_episode_steps, auto_reset=False,
    )  # fmt: skip
    expert = ScriptedExpert(env, follow_target=args.follow_target)
    paths: dict[int, np.ndarray] = {}
    success: dict[int, bool] = {}
    for first in range(args.seed, args.seed + args.episodes, args.num_envs):
        seeds = list(range(first, min(first + args.num_envs, args.seed + args.episodes)))
        reset_episodes(env, range(len(seeds)), seeds)
        drive = ExecutionNoise(sigma, args.noise_correlation) if sigma > 0 else None
        running = {i: Attempt(index=s - args.seed, seed=s) for i, s in enumerate(seeds)}
        path: dict[int, list[np.ndarray]] = {i: [] for i in running}
        while running:
            actions = np.asarray(expert.act(), dtype=np.float32)
            for i, attempt in running.items():
                attempt.actions.append(actions[i])
            result = env.step(actions if drive is None else drive(None, actions, running))
            for i in list(running):
                path[i].append(env.data[i].xpos[env.gripper_body].copy())
                if result.done[i]:
                    success[seeds[i]] = bool(result.info["success"][i])
                    paths[seeds[i]] = np.array(path[i])
                    del running[i]
    env.close()
    return paths, success


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--noise-correlation", type=float, default=0.9)
    parser.add_argument("--env-id", default="PickPlace-CRANE-X7", choices=lift.ENV_IDS)
    parser.add_argument(
        "--control-mode", default="pd_ee_delta_pos", choices=lift.types.CONTROL_MODES
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument(
        "--seed", type=int, default=12345, help="first episode seed (sft.demo_seed)"
    )
    parser.add_argument("--max-episode-steps", type=int, default=100)
    parser.add_argument(
        "--follow-target",
        action="store_true",
        help="ScriptedExpert(follow_target=True): step on from where the arm is (DAgger's labels)",
    )
    args = parser.parse_args()
    clean, clean_success = play(args, 0.0)
    print(f"sigma=0 success={sum(clean_success.values())}/{args.episodes} "
          f"median_length={np.median([len(p) for p in clean.values()]):.0f}")  # fmt: skip
    for sigma in args.sigmas:
        start = time.perf_counter()
        noisy, success = play(args, sigma)
        stray = [
            np.linalg.norm(p[:, None] - clean[s][None], axis=-1).min(axis=1).max()
            for s, p in noisy.items()
        ]
        kept = [len(p) for s, p in noisy.items() if success[s]]
        out_of_steps = sum(
            len(p) >= args.max_episode_steps for s, p in noisy.items() if not success[s]
        )
        print(
            f"sigma={sigma} rho={args.noise_correlation} success={len(kept)}/{args.episodes} "
            f"stray_cm_median={100 * np.median(stray):.1f} stray_cm_p90={100 * np.percentile(stray, 90):.1f} "
            f"median_length={np.median(kept) if kept else float('nan'):.0f} "
            f"fail_out_of_steps={out_of_steps} wall_s={time.perf_counter() - start:.0f}"
        )


if __name__ == "__main__":
    main()
