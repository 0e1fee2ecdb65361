"""Do MuJoCo (step + render) and the tiny VLA's forward pass release the GIL?

    python benchmarks/gil_release.py [--seconds 3]

Runs the simulator loop alone, the policy loop alone, then both at once in two
threads of this process, with torch at one intra-op thread. If both released
the GIL completely, on two idle cores the pair would run each loop at its solo
rate (overlap 1.0); if neither did, the pair would share one core (overlap
0.5). The reference is the same loops run alone in the same process.
Last line: ``sim_rate_ratio=... policy_rate_ratio=... overlap=...``, where each
ratio is the loop's rate beside the other over its rate alone and ``overlap``
is their mean.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lift import make_env  # noqa: E402
from vla_rl_lib.policy.hf_policy import build_policy  # noqa: E402

INSTRUCTION = "pick up the blue cube"


def rate(loop, seconds: float, stop: threading.Event | None = None) -> float:
    """Iterations per second of ``loop`` over ``seconds`` (or until ``stop`` is set)."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and not (stop is not None and stop.is_set()):
        loop()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--envs", type=int, default=2, help="envs stepped per simulator call")
    parser.add_argument("--batch", type=int, default=2, help="images per policy call")
    args = parser.parse_args()
    torch.set_num_threads(1)

    env = make_env("mujoco", "PickPlace-CRANE-X7", num_envs=args.envs, image_size=64, auto_reset=True)
    policy = build_policy(lora=None, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, 64, 64, 3), dtype=np.uint8)
    actions = np.zeros((args.envs, 8), dtype=np.float32)

    def sim_loop() -> None:
        env.step(actions)

    def policy_loop() -> None:
        with torch.inference_mode():
            policy.act(images, [INSTRUCTION] * args.batch)

    # Rendering is bound to the thread that created the GL context: the simulator stays here.
    env.reset(seed=0)
    sim_loop(), policy_loop()  # warm-up
    sim_alone = rate(sim_loop, args.seconds)
    policy_alone = rate(policy_loop, args.seconds)
    cpu0 = time.process_time()
    both: dict[str, float] = {}
    stop = threading.Event()
    worker = threading.Thread(target=lambda: both.update(policy=rate(policy_loop, args.seconds * 2, stop)))
    worker.start()
    both["sim"] = rate(sim_loop, args.seconds)
    stop.set()
    worker.join()
    cpu_per_wall = (time.process_time() - cpu0) / args.seconds
    env.close()
    sim_ratio, policy_ratio = both["sim"] / sim_alone, both["policy"] / policy_alone
    print(f"simulator ({args.envs} envs, step+render): alone {sim_alone:.1f}/s, beside policy {both['sim']:.1f}/s")
    print(f"policy (batch {args.batch}): alone {policy_alone:.1f}/s, beside simulator {both['policy']:.1f}/s")
    print(f"process CPU seconds per wall second while both ran: {cpu_per_wall:.2f} (load {os.getloadavg()[0]:.2f})")
    print(f"sim_rate_ratio={sim_ratio:.3f} policy_rate_ratio={policy_ratio:.3f} "
          f"overlap={(sim_ratio + policy_ratio) / 2:.3f} cpu_per_wall={cpu_per_wall:.2f}")


if __name__ == "__main__":
    main()
