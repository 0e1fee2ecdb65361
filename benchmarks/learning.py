"""The headline: scripted demos -> SFT -> PPO on a 2-core CPU, measured on held-out seeds.

    python benchmarks/learning.py                       # params/default.yaml, about an hour
    python benchmarks/learning.py --experiment-name grpo --set ppo.algorithm=grpo
    python benchmarks/learning.py --sft-checkpoint outputs/headline/<run>/sft --set rollout.temperature=1.6

It runs exactly what ``python -m vla_rl_lib train --config params/default.yaml``
runs (warm start included, unless --sft-checkpoint reuses one) and reads the
held-out evaluations back from ``metrics.jsonl``: the reference is the SFT
policy's own success at update 0 on the same seeds, in the same run. Not part of CI.
Last line: ``baseline_success=... final_success=... minutes=...``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from vla_rl_lib.config import apply_overrides, load_config  # noqa: E402
from vla_rl_lib.metrics import load_metrics  # noqa: E402
from vla_rl_lib.training.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params/default.yaml")
    parser.add_argument("--experiment-name", default="headline")
    parser.add_argument("--sft-checkpoint", help="reuse an SFT checkpoint instead of a warm start")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, dotted key and YAML value (repeatable)",
    )
    args = parser.parse_args()

    overrides = {"experiment_name": args.experiment_name}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.sft_checkpoint:
        overrides["sft_checkpoint"] = args.sft_checkpoint
    cfg = apply_overrides(load_config(args.config), overrides)

    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    minutes = (time.perf_counter() - t0) / 60

    records = load_metrics(trainer.run_dir)
    evals = [r for r in records if "val/success" in r]
    report = "test" if "test/success" in evals[0] else "val"  # a task without splits has val only
    print(f"run: {trainer.run_dir}  stopped by {summary['stopped_by']} after {summary['updates']} updates")
    print(f"held-out seeds: {cfg.eval_seed} .. {cfg.eval_seed + cfg.num_eval_episodes - 1} (greedy) "
          f"on splits {', '.join(trainer.eval_splits)}")
    print(f"update  env_steps  val_success  {report}_success  {report} 95% Wilson interval")
    for r in evals:
        print(f"{r['update']:6d}  {r['env_steps']:9d}  {r['val/success']:11.3f}  "
              f"{r[f'{report}/success']:12.3f}  "
              f"[{r[f'{report}/success_low']:.3f}, {r[f'{report}/success_high']:.3f}]")
    baseline, final = evals[0][f"{report}/success"], evals[-1][f"{report}/success"]
    chosen = max(evals, key=lambda r: r["val/success"])  # checkpoint_best: first val maximum
    print(f"baseline_success={baseline:.3f} final_success={final:.3f} "
          f"best_val_success={chosen['val/success']:.3f} {report}_at_best_val={chosen[f'{report}/success']:.3f} "
          f"gain_points={100 * (final - baseline):.1f} updates={summary['updates']} "
          f"env_steps={summary['env_steps']} minutes={minutes:.1f}")

if __name__ == "__main__":
    main()
