"""Where greedy episodes fail: reach, grasp, lift, carry, release, against the scripted expert.

    python benchmarks/failure_phases.py --checkpoint outputs/<exp>/sft --episodes 30
    python benchmarks/failure_phases.py --checkpoint outputs/<exp>/sft --demos outputs/demos/<dataset>

Plays ``--episodes`` greedy episodes of ``--split`` (the same held-out seeds a training run
evaluates on, from ``--eval-seed``) with the checkpoint's policy, and the same starts with the
scripted expert as the reference. For every episode it tracks the named cube: the closest the
gripper came to it (and to the other cube: reaching the wrong one is a language failure),
whether it was ever grasped, its highest point, and its closest horizontal approach to the
named plate. A phase counts as reached when it passes the threshold below; each row is the
share of episodes that got that far.

With ``--demos`` it also compares the greedy action with the demonstrated one on 256 frames
of that dataset (teacher-forced, no simulation): an error per action dimension as large as
the actions themselves means behaviour cloning has not fit even its training frames.

Last line: ``policy_reach=... policy_grasp=... policy_lift=... policy_near_target=...
policy_success=... policy_wrong_cube=... expert_success=... episodes=...``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lift import make_env, task  # noqa: E402
from lift.expert import ScriptedExpert  # noqa: E402
from lift.task import PICKPLACE_ENV_ID  # noqa: E402
from lift.types import CONTROL_MODES  # noqa: E402
from vla_rl_lib.policy.hf_policy import HFVLAPolicy  # noqa: E402
from vla_rl_lib.rollout.collector import evaluation_seeds  # noqa: E402

REACH_M = 0.06  # gripper base to cube centre; the expert's closest is about 4 cm
LIFT_M = 0.04  # cube centre height above the table
NEAR_TARGET_M = 0.05  # the named cube's centre within a plate radius of the named plate
PHASES = ("reach", "grasp", "lift", "near_target", "success")


def play(env, act: Callable[[object], np.ndarray], seed: int, max_steps: int) -> dict[str, float]:
    """One episode from ``seed``; the named cube's closest approaches and best heights."""
    obs = env.reset(seed=seed)
    track = {"reach": 9.0, "other": 9.0, "grasp": 0.0, "lift": 0.0, "near_target": 9.0, "success": 0.0}
    for _ in range(max_steps):
        result = env.step(act(obs))
        obs = result.observation
        s = env.task_state()
        track["reach"] = min(track["reach"], float(s["gripper_to_cube_dist"][0]))
        track["grasp"] = max(track["grasp"], float(s["is_grasped"][0]))
        track["lift"] = max(track["lift"], float(s["cube_height"][0]))
        if "cube_to_target_dist" in s:
            track["near_target"] = min(track["near_target"], float(s["cube_to_target_dist"][0]))
            other = 1 - int(s["named_cube"][0])
            gap = np.linalg.norm(s["cube_pos"][0, other] - s["gripper_pos"][0])
            track["other"] = min(track["other"], float(gap))
        track["success"] = max(track["success"], float(s["success"][0]))
        if result.terminated[0] or result.truncated[0]:
            break
    return track


def phase_rates(tracks: list[dict[str, float]]) -> dict[str, float]:
    """Share of episodes past each phase's threshold; wrong_cube: closer to the other cube."""
    def share(test: Callable[[dict[str, float]], bool]) -> float:
        return float(np.mean([test(t) for t in tracks]))

    return {
        "reach": share(lambda t: t["reach"] <= REACH_M),
        "grasp": share(lambda t: t["grasp"] > 0),
        "lift": share(lambda t: t["lift"] >= LIFT_M),
        "near_target": share(lambda t: t["near_target"] <= NEAR_TARGET_M),
        "success": share(lambda t: t["success"] > 0),
        "wrong_cube": share(lambda t: t["other"] < t["reach"]),
        "median_reach_m": float(np.median([t["reach"] for t in tracks])),
    }


def demo_fit(policy: HFVLAPolicy, demos: str, frames: int = 256) -> None:
    """Greedy against demonstrated actions on ``frames`` random frames of the dataset."""
    from vla_rl_lib.sft.demos import load_demonstrations

    data = load_demonstrations(demos)
    rows = np.sort(np.random.default_rng(0).choice(len(data), min(frames, len(data)), replace=False))
    predicted = np.concatenate([
        policy.act(np.stack([data.images[i] for i in batch]), [data.instructions[i] for i in batch],
                   greedy=True).actions
        for batch in np.array_split(rows, max(1, len(rows) // 32))
    ])  # fmt: skip
    wanted = data.actions[rows]
    print("demo frames: mean |greedy - demonstrated| per action dim",
          [round(float(x), 3) for x in np.abs(predicted - wanted).mean(0)])
    print("demo frames: mean |demonstrated| per action dim      ",
          [round(float(x), 3) for x in np.abs(wanted).mean(0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a tiny-VLA SFT or RL policy folder")
    parser.add_argument("--env-id", default=PICKPLACE_ENV_ID)
    parser.add_argument("--split", default="val", help="lift.list_splits(env_id); tune on val only")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--eval-seed", type=int, default=1_000_000, help="the run's eval_seed")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--camera", default="third_person")
    parser.add_argument("--control-mode", choices=CONTROL_MODES,
                        help="default: the one the checkpoint's action width implies (4: pd_ee_delta_pos, "
                        "8: pd_joint_delta_pos)")  # fmt: skip
    parser.add_argument("--demos", help="a demonstration folder: also check the fit on its frames")
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = HFVLAPolicy.from_checkpoint(args.checkpoint).eval()
    size = policy.model.config.vision_config.image_size  # the tiny VLA's render size
    ee = policy.action_dim == task.EE_ACTION_DIM
    control_mode = args.control_mode or (task.EE_CONTROL_MODE if ee else "pd_joint_delta_pos")
    if task.action_dim(control_mode) != policy.action_dim:
        parser.error(f"--control-mode {control_mode} takes {task.action_dim(control_mode)}-D actions but "
                     f"{args.checkpoint} emits {policy.action_dim}-D ones; leave --control-mode out")
    env = make_env("mujoco", args.env_id, split=args.split, num_envs=1, image_size=size,
                   camera=args.camera, max_episode_steps=args.max_steps, auto_reset=False,
                   control_mode=control_mode)
    seeds = [int(s) for s in evaluation_seeds(args.eval_seed, args.episodes)]
    expert = ScriptedExpert(env)
    with torch.no_grad():
        greedy = [play(env, lambda o: policy.act(o.image, list(o.instructions), greedy=True).actions,
                       s, args.max_steps) for s in seeds]
        scripted = [play(env, lambda _: expert.act(), s, args.max_steps) for s in seeds]
    env.close()
    ours, ref = phase_rates(greedy), phase_rates(scripted)
    print(f"{'phase':<12} {'policy':>7} {'expert':>7}   ({args.episodes} {args.split} episodes)")
    for name in (*PHASES, "wrong_cube", "median_reach_m"):
        print(f"{name:<12} {ours[name]:>7.3f} {ref[name]:>7.3f}")
    if args.demos:
        with torch.no_grad():
            demo_fit(policy, args.demos)
    print(" ".join(f"policy_{k}={ours[k]:.3f}" for k in (*PHASES, "wrong_cube"))
          + f" expert_success={ref['success']:.3f} episodes={args.episodes}")


if __name__ == "__main__":
    main()
