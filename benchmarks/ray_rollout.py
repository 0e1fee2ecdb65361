"""Rollout throughput: the local executor against Ray workers, in one run on this machine.

    python benchmarks/ray_rollout.py [--config params/fast.yaml] [--workers 2] [--episodes 8]

Both play the same number of episodes per collect with the same tiny policy.
The local executor runs one batched simulator of ``rollout.num_parallel_envs``
envs in this process; each Ray worker (1 CPU) owns one of those. Env steps are
counted over valid steps only; the seconds are the driver's wall-clock for the
whole collect, including, for Ray, the weight broadcast and the merge.
Last line: ``local_steps_per_s=... ray_steps_per_s=...`` plus the per-worker
figures that docs/ray.md builds its scaling estimate from.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ray  # noqa: E402
import torch  # noqa: E402

from vla_rl_lib.config import apply_overrides, load_config  # noqa: E402
from vla_rl_lib.rollout.collector import RolloutCollector, training_episode_seeds  # noqa: E402
from vla_rl_lib.rollout.executor import LocalExecutor, make_rollout_env  # noqa: E402
from vla_rl_lib.rollout.ray_executor import RayExecutor  # noqa: E402
from vla_rl_lib.training.policy_factory import build_training_policy  # noqa: E402


def steps_per_s(executor, episodes: int, repeats: int) -> tuple[float, int]:
    """Env steps per wall-clock second over ``repeats`` collects, after one warm-up collect."""
    torch.manual_seed(0)
    executor.collect(training_episode_seeds(0, 0, episodes))
    steps, seconds = 0, 0.0
    for update in range(1, repeats + 1):
        torch.manual_seed(update)
        t0 = time.perf_counter()
        rollout = executor.collect(training_episode_seeds(0, update, episodes))
        seconds += time.perf_counter() - t0
        steps += rollout.env_steps
    return steps / seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params/fast.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=8, help="episodes per collect")
    parser.add_argument("--repeats", type=int, default=2, help="timed collects per executor")
    parser.add_argument("--lora-rank", type=int, default=0, help="0: train all weights")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as the trainer runs on CPU
    # The tiny model at its random init: throughput does not depend on what it has learnt.
    overrides = {
        "device": "cpu",
        "experiment_name": "ray_rollout_benchmark",
        "sft": {"num_demos": 0},
    }
    if args.lora_rank:
        overrides["lora"] = {"enabled": True, "rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}
    with tempfile.TemporaryDirectory() as out:
        cfg = apply_overrides(load_config(args.config), {**overrides, "output_dir": out})
        run_dir = Path(out) / cfg.experiment_name
        policy, base = build_training_policy(cfg, run_dir, progress=False)
        r = cfg.rollout

        env = make_rollout_env(cfg)
        local = LocalExecutor(RolloutCollector(env, policy, cfg.language_instruction))
        local_sps, local_steps = steps_per_s(local, args.episodes, args.repeats)
        env.close()

        ray_cfg = apply_overrides(
            cfg, {"rollout": {"executor": "ray", "num_workers": args.workers, "worker_num_cpus": 1}}
        )
        t0 = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=args.workers,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        executor = RayExecutor(ray_cfg, policy, base, run_dir)
        startup_s = time.perf_counter() - t0
        try:
            ray_sps, ray_steps = steps_per_s(executor, args.episodes, args.repeats)
            m = executor.metrics
        finally:
            executor.close()
            ray.shutdown()

    print(
        f"config={args.config} envs_per_process={r.num_parallel_envs} image={r.image_size}px "
        f"episodes={args.episodes}x{args.repeats} cores={os.cpu_count()}"
    )
    print(f"local: {local_steps} steps at {local_sps:.1f} steps/s")
    print(
        f"ray:   {ray_steps} steps at {ray_sps:.1f} steps/s with {args.workers} workers "
        f"(startup {startup_s:.1f} s, per worker {m['perf/worker_env_steps_per_s']:.1f} steps/s, "
        f"overhead {m['perf/executor_overhead_s'] * 1e3:.0f} ms/collect, "
        f"broadcast {m['rollout/weight_broadcast_bytes'] / 1e6:.2f} MB "
        f"in {m['perf/weight_broadcast_s'] * 1e3:.1f} ms)"
    )
    print(
        f"local_steps_per_s={local_sps:.1f} ray_steps_per_s={ray_sps:.1f} "
        f"workers={args.workers} worker_steps_per_s={m['perf/worker_env_steps_per_s']:.1f} "
        f"overhead_s={m['perf/executor_overhead_s']:.3f} "
        f"broadcast_bytes={m['rollout/weight_broadcast_bytes']} startup_s={startup_s:.1f}"
    )


if __name__ == "__main__":
    main()
