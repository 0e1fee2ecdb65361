"""Soak test: many updates of the tiny training configuration; does memory keep growing?

Runs ``--updates`` PPO updates (evaluations and checkpoints included) of the
test suite's tiny configuration (``tests/conftest.py``), reads the process's
resident set size after ``--warmup`` updates and at the end, and reports the
growth in between. The goal is <= 5 %: allocator warm-up is over by then, so
steady growth means something accumulates per update (metrics, frames, graphs).

    .venv/bin/python benchmarks/soak.py                 # 200 updates
    .venv/bin/python benchmarks/soak.py --updates 60

Last line: ``rss_growth_pct=... updates=... rss_warm_mib=... rss_end_mib=... seconds=...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sim"), str(ROOT)]  # lift (lift-sim) and vla_rl_lib from this checkout
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOAL_PCT = 5.0


def rss_mib() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status; this benchmark needs Linux")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="updates before the first reading")
    parser.add_argument("--eval-interval", type=int, default=20)
    parser.add_argument("--save-interval", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.warmup < args.updates:
        parser.error(f"--warmup={args.warmup} must be in [1, --updates={args.updates})")

    from tests.conftest import TINY_OVERRIDES
    from vla_rl_lib.config import apply_overrides, load_template
    from vla_rl_lib.training.trainer import Trainer

    readings: dict[int, float] = {}

    def on_update(record: dict) -> None:
        if record["update"] in (args.warmup, args.updates):
            readings[record["update"]] = rss_mib()
        if record["update"] % 20 == 0:
            print(f"update {record['update']}: rss {rss_mib():.1f} MiB", flush=True)

    with tempfile.TemporaryDirectory(prefix="soak-") as out:
        cfg = apply_overrides(
            load_template("fast"),
            {**TINY_OVERRIDES, "output_dir": out, "experiment_name": "soak",
             "num_updates": args.updates, "eval_interval": args.eval_interval,
             "save_interval": args.save_interval},
        )
        t0 = time.perf_counter()
        trainer = Trainer(cfg, progress=False, on_update=on_update)
        try:
            trainer.train()
        finally:
            trainer.close()
        seconds = time.perf_counter() - t0

    warm, end = readings[args.warmup], readings[args.updates]
    growth = 100 * (end - warm) / warm
    print(f"goal: growth <= {GOAL_PCT}% ({'met' if growth <= GOAL_PCT else 'NOT met'})")
    print(
        f"rss_growth_pct={growth:.2f} updates={args.updates} rss_warm_mib={warm:.1f} "
        f"rss_end_mib={end:.1f} seconds={seconds:.0f}"
    )


if __name__ == "__main__":
    main()
