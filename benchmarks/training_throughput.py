"""Env steps per minute of training: today's settings against the candidate defaults, in one run.

    python benchmarks/training_throughput.py [--updates 4] [--template default]

Trains the template twice for the same number of updates (after one warm-up
update that is not counted), each run from the same seed and the tiny VLA's
random initialization (no SFT warm start: it changes the weights, not the cost):

- ``sync``: today's settings: 4 envs in one batch, no overlap, the update on one
  torch thread (what the trainer did before per-phase threads);
- ``new``: the candidate defaults (``CANDIDATE``: 8 envs in one batch), which the
  templates do not use yet (a default changes only after measuring);
- ``ahead``: 8 envs with ``rollout.collect_ahead`` (``AHEAD``): the next rollout
  plays in a worker process while the update runs, so a training update costs
  the rollout's wait (zero when it was ready in time) plus the update.

``--variant NAME=KEY:VALUE,...`` adds runs (e.g. ``groups=rollout.env_groups:2,
rollout.overlap:true``). For each run it prints each phase's seconds per
update (simulator and policy inside the rollout; with overlap they overlap),
the process CPU seconds of each phase (the worker's included), and env steps
per minute of training (the wall-clock the learner waited for the rollout, plus
the update; without collect-ahead it waits for the whole rollout). The ceiling is the ``sync`` run's total CPU
seconds divided by the cores: the fastest this machine could go doing the
same work. The load average is printed with each run: on a busy machine the
wall-clock figures are not comparable to an idle one's.

Last line: ``sync_steps_per_min=... new_steps_per_min=... speedup=...
ceiling_speedup=... policy_step_ms_b8=... cpu_speedup=... ahead_steps_per_min=...
ahead_speedup=... ahead_overlap=... max_load=...`` (``cpu_speedup``: the sync run's
CPU seconds per env step over the new run's, a figure the load moves far less than
the wall-clock ``speedup``; ``ahead_overlap``: the share of the ahead run's rollout
wall-clock that ran beside the update).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from vla_rl_lib.config import apply_overrides, load_template  # noqa: E402
from vla_rl_lib.metrics import load_metrics  # noqa: E402
from vla_rl_lib.policy.hf_policy import build_policy  # noqa: E402
from vla_rl_lib.training.cpu_threads import available_cores  # noqa: E402
from vla_rl_lib.training.policy_factory import tiny_vla_config  # noqa: E402
from vla_rl_lib.training.trainer import Trainer  # noqa: E402

TODAY = {  # the trainer's settings before overlap and per-phase threads
    "rollout": {"num_parallel_envs": 4, "env_groups": 1, "overlap": False},
    "ppo": {"update_threads": 1},
}
CANDIDATE = {"rollout": {"num_parallel_envs": 8}}  # measured 1.20x; not yet the templates' value
AHEAD = {"rollout": {"num_parallel_envs": 8, "collect_ahead": True}}
PHASES = ("rollout_s", "sim_s", "policy_s", "update_s", "rollout_cpu_s", "update_cpu_s")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name=key:value,key:value`` -> (name, dotted overrides); values parsed as YAML."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(
            f"--variant {text!r} is not NAME=KEY:VALUE[,KEY:VALUE]; e.g. groups=rollout.env_groups:2"
        )
    overrides = {}
    for item in spec.split(","):
        key, colon, value = item.partition(":")
        if not colon:
            raise argparse.ArgumentTypeError(f"--variant item {item!r} is not KEY:VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def train(template: str, name: str, overrides: dict[str, Any], updates: int, out: Path) -> dict[str, float]:
    """Train ``updates`` + 1 updates (+ 1 more with collect-ahead); per-update means of the
    counted ones, and the load."""
    cfg = apply_overrides(
        load_template(template),
        {
            "num_updates": updates + 1, "eval_interval": 0, "save_interval": 0,
            "num_eval_episodes": 0, "max_minutes": None, "output_dir": str(out),
            "experiment_name": name, "sft": {"num_demos": 0},  # RL from the random init
        },
    )  # fmt: skip
    cfg = apply_overrides(cfg, overrides)
    # With collect-ahead a run's last update has no next rollout playing beside it: one more
    # update, not counted, so that every counted one is the steady state.
    tail = 1 if cfg.rollout.collect_ahead else 0
    cfg = apply_overrides(cfg, {"num_updates": updates + 1 + tail})
    load_before = os.getloadavg()[0]
    trainer = Trainer(cfg, progress=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    every = [r for r in load_metrics(trainer.run_dir) if "perf/update_s" in r]
    records = every[1 : len(every) - tail]  # the first update warms up (allocations, renderer, caches)
    steps = [r["env_steps"] - before["env_steps"] for before, r in zip(every, records, strict=False)]
    result = {phase: float(np.mean([r[f"perf/{phase}"] for r in records])) for phase in PHASES}
    result["env_steps"] = float(np.mean(steps))
    # What the learner waited for the rollout: all of it, unless it was played ahead.
    result["wait_s"] = float(np.mean([r.get("perf/rollout_wait_s", r["perf/rollout_s"]) for r in records]))
    result["overlap"] = float(np.mean([r.get("perf/rollout_overlap", 0.0) for r in records]))
    train_s = result["wait_s"] + result["update_s"]
    result["steps_per_min"] = 60 * result["env_steps"] / train_s
    result["cpu_s"] = result["rollout_cpu_s"] + result["update_cpu_s"]
    result["load"] = (load_before + os.getloadavg()[0]) / 2
    r = cfg.rollout
    ahead = (
        f" ahead: waited {result['wait_s']:.2f}s, {result['overlap']:.0%} beside the update"
        if r.collect_ahead else ""
    )  # fmt: skip
    print(
        f"{name:>6}: envs={r.num_parallel_envs} groups={r.env_groups} overlap={r.overlap} "
        f"collect_ahead={r.collect_ahead} update_threads={cfg.ppo.update_threads or available_cores()} | "
        f"per update: rollout {result['rollout_s']:.2f}s (sim {result['sim_s']:.2f}s, policy "
        f"{result['policy_s']:.2f}s){ahead} update {result['update_s']:.2f}s | CPU: rollout {result['rollout_cpu_s']:.2f}s "
        f"update {result['update_cpu_s']:.2f}s | {result['env_steps']:.0f} env steps, "
        f"{result['steps_per_min']:.0f} steps/min | load {result['load']:.2f}",
        flush=True,
    )
    return result


def policy_step_ms(template: str, batch: int = 8, repeats: int = 30) -> float:
    """Median ``act`` wall-clock of the template's policy at ``batch`` images, one thread."""
    cfg = load_template(template)
    policy = build_policy(tiny_vla_config(cfg), lora=None, seed=0, decoding=cfg.model.decoding)
    size = cfg.rollout.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    instructions = [cfg.language_instruction] * batch
    policy.act(images, instructions)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.act(images, instructions)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="default")
    parser.add_argument("--updates", type=int, default=4, help="counted updates per run")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    args = parser.parse_args()
    if args.updates < 2:
        parser.error(f"--updates={args.updates} is too few to average; use 2 or more")
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = Path("outputs") / "benchmarks" / f"training_throughput_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    cores = available_cores()
    print(f"template={args.template} updates={args.updates} (+1 warm-up) cores={cores}", flush=True)
    runs = {
        "sync": train(args.template, "sync", TODAY, args.updates, out),
        "new": train(args.template, "new", CANDIDATE, args.updates, out),
        "ahead": train(args.template, "ahead", AHEAD, args.updates, out),
    }
    for name, overrides in args.variant:
        runs[name] = train(args.template, name, overrides, args.updates, out)
    torch.set_num_threads(1)
    step_ms = policy_step_ms(args.template)

    sync, new, ahead = runs["sync"], runs["new"], runs["ahead"]
    # The ceiling: the sync run's CPU seconds per env step spread over every core.
    sync_s_per_step = (sync["rollout_s"] + sync["update_s"]) / sync["env_steps"]
    ceiling_s_per_step = sync["cpu_s"] / cores / sync["env_steps"]
    ceiling_speedup = sync_s_per_step / ceiling_s_per_step
    speedup = new["steps_per_min"] / sync["steps_per_min"]
    ahead_speedup = ahead["steps_per_min"] / sync["steps_per_min"]
    # CPU seconds per env step move far less with the machine's load than wall-clock does.
    cpu_speedup = (sync["cpu_s"] / sync["env_steps"]) / (new["cpu_s"] / new["env_steps"])
    load = max(run["load"] for run in runs.values())
    print(
        f"ceiling: {sync['cpu_s']:.2f} CPU s per update / {cores} cores = "
        f"{60 / ceiling_s_per_step:.0f} steps/min; new reaches {speedup / ceiling_speedup:.0%} of it, "
        f"ahead {ahead_speedup / ceiling_speedup:.0%}"
    )
    print(f"policy step (batch 8, one thread): {step_ms:.2f} ms")
    print(
        f"sync_steps_per_min={sync['steps_per_min']:.0f} new_steps_per_min={new['steps_per_min']:.0f} "
        f"speedup={speedup:.2f} ceiling_speedup={ceiling_speedup:.2f} policy_step_ms_b8={step_ms:.2f} "
        f"cpu_speedup={cpu_speedup:.2f} ahead_steps_per_min={ahead['steps_per_min']:.0f} "
        f"ahead_speedup={ahead_speedup:.2f} ahead_overlap={ahead['overlap']:.2f} max_load={load:.2f}"
    )


if __name__ == "__main__":
    main()
