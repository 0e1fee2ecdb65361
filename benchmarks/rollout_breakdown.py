"""Where rollout time goes: simulator, policy, and everything else (the collector's own work).

    python benchmarks/rollout_breakdown.py [--episodes 16] [--config params/fast.yaml]

The reference is the rollout's own wall-clock in the same run: each share is a
ratio of it. Target: everything else under 10%.
Last line: ``sim_share=... policy_share=... other_share=... env_steps_per_s=...``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lift import make_env  # noqa: E402
from vla_rl_lib.config import load_config  # noqa: E402
from vla_rl_lib.policy.hf_policy import build_policy  # noqa: E402
from vla_rl_lib.rollout.collector import RolloutCollector, training_episode_seeds  # noqa: E402
from vla_rl_lib.training.policy_factory import tiny_vla_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params/fast.yaml")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    r = cfg.rollout
    policy = build_policy(tiny_vla_config(cfg), lora=None, seed=cfg.seed, decoding=cfg.model.decoding)
    env = make_env(
        r.simulator, r.env_id, num_envs=r.num_parallel_envs, image_size=r.image_size,
        camera=r.camera, control_mode=r.control_mode, max_episode_steps=r.max_steps,
        auto_reset=False,
    )
    collector = RolloutCollector(env, policy, cfg.language_instruction)
    collector.collect(training_episode_seeds(cfg.seed, 0, r.num_parallel_envs))  # warm-up
    sim = pol = total = 0.0
    steps = 0
    for k in range(args.repeats):
        t0 = time.perf_counter()
        rollout = collector.collect(training_episode_seeds(cfg.seed, k + 1, args.episodes))
        total += time.perf_counter() - t0
        sim += rollout.seconds_sim
        pol += rollout.seconds_policy
        steps += rollout.env_steps
    env.close()
    other = total - sim - pol
    print(f"config={args.config} envs={r.num_parallel_envs} image={r.image_size}px "
          f"episodes={args.episodes * args.repeats} steps={steps} seconds={total:.2f}")
    print(f"simulator {sim:.2f}s  policy {pol:.2f}s  other {other:.2f}s")
    print(f"sim_share={sim / total:.3f} policy_share={pol / total:.3f} "
          f"other_share={other / total:.3f} env_steps_per_s={steps / total:.1f}")


if __name__ == "__main__":
    main()
