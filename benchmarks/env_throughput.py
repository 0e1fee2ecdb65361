"""PickPlace-CRANE-X7 (MuJoCo) throughput: env steps/s, physics vs render split, raw ceiling.

    python benchmarks/env_throughput.py          # ~2 min
    python benchmarks/env_throughput.py --quick  # < 1 min
    python benchmarks/env_throughput.py --tasks-only  # Lift vs PickPlace only (~1 min)

For n_envs 1 and 8: without RGB, then with RGB at 64/128/224. The physics share
is timed on the same env in state mode; the render share is the rest. The raw
ceiling is ``mj_step`` on one MjData, single thread, in the same process, counted
in control (env) steps: one env step is 100 ms of simulated time, i.e.
50 physics substeps of 2 ms, so it compares with env steps/s.
Then Lift-CRANE-X7 and PickPlace-CRANE-X7 side by side at 8 envs, 64x64 RGB
(alternating, best of 3 each, so both see the same machine load).
Last line: ``env_steps_per_s_rgb128=... raw_physics_env_steps_per_s=...`` (rgb128 at n_envs=8)
``lift_rgb64_n8=... pickplace_rgb64_n8=... pickplace_vs_lift=...``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import mujoco
import numpy as np

import lift


def env_steps_per_s(
    num_envs: int, obs_mode: str, size: int, steps: int, env_id: str = lift.ENV_ID
) -> tuple[float, float]:
    """Env steps per wall second and per CPU second (all threads, incl. the GL rasterizer)."""
    env = lift.make_env("mujoco", env_id, num_envs=num_envs, obs_mode=obs_mode, image_size=size)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    actions = rng.uniform(-1, 1, (steps + 2, num_envs, 8))
    env.step(actions[0])  # warm-up: renderer creation, first frame
    env.step(actions[1])
    start, cpu_start = time.perf_counter(), time.process_time()
    for action in actions[2:]:
        env.step(action)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    return num_envs * steps / elapsed, num_envs * steps / cpu


def raw_physics_substeps_per_s(seconds: float) -> tuple[float, float]:
    """``mj_step`` substeps per second on one MjData, and the model's substep (timestep) in s."""
    model = mujoco.MjModel.from_xml_path(str(lift.backends.mujoco_env.SCENE_PATH))
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("rest").id)
    mujoco.mj_step(model, data, nstep=100)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        mujoco.mj_step(model, data, nstep=1000)
        steps += 1000
    return steps / (time.perf_counter() - start), model.opt.timestep


def tasks_side_by_side(steps: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` env steps/s of Lift and PickPlace at 8 envs, 64x64 RGB, alternating."""
    best = {env_id: 0.0 for env_id in (lift.LIFT_ENV_ID, lift.PICKPLACE_ENV_ID)}
    for _ in range(repeats):
        for env_id in best:
            best[env_id] = max(best[env_id], env_steps_per_s(8, "rgb", 64, steps, env_id)[0])
    return best[lift.LIFT_ENV_ID], best[lift.PICKPLACE_ENV_ID]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps (under a minute)")
    parser.add_argument(
        "--tasks-only", action="store_true", help="only Lift vs PickPlace at 8 envs, rgb64"
    )
    args = parser.parse_args()
    steps = 15 if args.quick else 60
    if args.tasks_only:
        lift_rate, pickplace_rate = tasks_side_by_side(steps)
        print(
            f"lift_rgb64_n8={lift_rate:.0f} pickplace_rgb64_n8={pickplace_rate:.0f} "
            f"pickplace_vs_lift={pickplace_rate / lift_rate:.3f}"
        )
        return

    import lift.backends.mujoco_env  # noqa: F401  (for SCENE_PATH)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"cpus={os.cpu_count()} load_avg=({load}) MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
        f"steps_per_run={steps}  [wall-clock rates; 'cpu' = per CPU-second, less sensitive to other load]"
    )
    substeps_per_s, timestep = raw_physics_substeps_per_s(1.0 if args.quick else 3.0)
    # The simulator's own rule (MujocoPickPlace._set_control_period) at its 10 Hz control rate.
    substeps = math.ceil(1.0 / lift.SimulatorConfig().control_freq / timestep - 1e-9)
    raw = substeps_per_s / substeps
    print(
        f"raw mj_step: {substeps_per_s:,.0f} physics substeps/s (dt={timestep} s) "
        f"/ {substeps} substeps per env step = {raw:,.0f} env steps/s ceiling"
    )
    rgb128_at_8 = 0.0
    for num_envs in (1, 8):
        state, state_cpu = env_steps_per_s(num_envs, "state", 64, steps)
        print(f"n_envs={num_envs} state:  {state:6.0f} env steps/s (cpu {state_cpu:6.0f})")
        for size in (64, 128, 224):
            rgb, rgb_cpu = env_steps_per_s(num_envs, "rgb", size, steps)
            per_step, physics_ms = 1000 / rgb, 1000 / state
            print(
                f"n_envs={num_envs} rgb{size}: {rgb:6.0f} env steps/s (cpu {rgb_cpu:6.0f})  "
                f"per env step {per_step:.2f} ms = physics {physics_ms:.2f} + render {per_step - physics_ms:.2f}"
            )
            if num_envs == 8 and size == 128:
                rgb128_at_8 = rgb
    lift_rate, pickplace_rate = tasks_side_by_side(steps)
    print(f"n_envs=8 rgb64: Lift {lift_rate:.0f} vs PickPlace {pickplace_rate:.0f} env steps/s")
    print(
        f"env_steps_per_s_rgb128={rgb128_at_8:.0f} raw_physics_env_steps_per_s={raw:.0f} "
        f"lift_rgb64_n8={lift_rate:.0f} pickplace_rgb64_n8={pickplace_rate:.0f} "
        f"pickplace_vs_lift={pickplace_rate / lift_rate:.3f}"
    )


if __name__ == "__main__":
    main()
