"""Env steps per second with 128x128 RGB observations, every installed backend side by side.

Each backend runs in its own fresh process, one after the other (so they do not share
cores or a Genesis initialisation). For each it reports the build time (constructing the
simulator and the first reset) and env steps/s over ``--steps`` batched steps of random
actions after ``--warmup`` steps.

``--cold-genesis`` gives the Genesis process an empty temporary HOME, so its kernel
caches (~/.cache/quadrants, ~/.cache/genesis) start empty: that build time is the
first-build cost on a new machine. Without it the build uses whatever cache exists.

    .venv-sims/bin/python benchmarks/backends.py [--num-envs 4] [--steps 50] [--cold-genesis]

Last line: ``mujoco=... maniskill=... genesis=...`` (env steps/s; ``n/a`` where a
backend is not installed or failed, with the reason printed above).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("mujoco", "maniskill", "genesis")
PACKAGES = {"mujoco": "mujoco", "maniskill": "mani_skill", "genesis": "genesis"}
REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, num_envs: int, steps: int, warmup: int, size: int) -> dict:
    """Run inside the worker process: build, warm up, time ``steps`` batched steps."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import numpy as np

    import lift

    start = time.perf_counter()
    env = lift.make_env(
        name,
        lift.ENV_ID,
        num_envs=num_envs,
        obs_mode="rgb",
        image_size=(size, size),
        max_episode_steps=10_000,
    )
    obs = env.reset(seed=0)
    build_s = time.perf_counter() - start
    assert obs.image.shape == (num_envs, size, size, 3)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, size=(warmup + steps, num_envs, 8))
    for action in actions[:warmup]:
        env.step(action)
    start = time.perf_counter()
    for action in actions[warmup:]:
        env.step(action)
    elapsed = time.perf_counter() - start
    env.close()
    return {"build_s": build_s, "steps_per_s": num_envs * steps / elapsed}


def run_backend(name: str, args: argparse.Namespace) -> dict:
    if importlib.util.find_spec(PACKAGES[name]) is None:
        return {"error": f"package {PACKAGES[name]!r} is not installed (run `make sims`)"}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "sim"), str(REPO_ROOT), env.get("PYTHONPATH")]))
    cold_home = None
    if name == "genesis" and args.cold_genesis:
        cold_home = tempfile.TemporaryDirectory(prefix="genesis-cold-home-")
        env["HOME"] = cold_home.name
        env.pop("XDG_CACHE_HOME", None)
    command = [
        sys.executable, __file__, "--worker", name,
        "--num-envs", str(args.num_envs), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--size", str(args.size),
    ]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    finally:
        if cold_home is not None:
            cold_home.cleanup()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit code {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=128, help="square RGB image side (pixels)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--cold-genesis", action="store_true", help="empty Genesis kernel cache")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per backend")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = measure(args.worker, args.num_envs, args.steps, args.warmup, args.size)
        print("RESULT " + json.dumps(result), flush=True)
        return

    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    print(
        f"num_envs={args.num_envs} steps={args.steps} image={args.size}x{args.size} "
        f"cold_genesis={args.cold_genesis}"
    )
    results = {}
    for name in names:
        result = run_backend(name, args)
        results[name] = result
        if "error" in result:
            print(f"{name}: not measured: {result['error']}", flush=True)
        else:
            print(
                f"{name}: build {result['build_s']:.1f} s, {result['steps_per_s']:.1f} env steps/s",
                flush=True,
            )

    def value(name: str, key: str, fmt: str) -> str:
        result = results.get(name, {})
        return format(result[key], fmt) if key in result else "n/a"

    print(" ".join(f"{n}_build_s={value(n, 'build_s', '.1f')}" for n in BACKENDS))
    print(" ".join(f"{n}={value(n, 'steps_per_s', '.1f')}" for n in BACKENDS))


if __name__ == "__main__":
    main()
