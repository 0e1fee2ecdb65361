"""Pilot for the SFT budget: greedy ``val`` success of behaviour cloning against epochs.

    python benchmarks/sft_budget.py --num-demos 100 --epochs 10 20 40 --episodes 50

Collects ``--num-demos`` scripted demonstrations on ``train`` (the config's demo seed),
behaviour-clones a fresh tiny VLA on them, and evaluates the greedy policy on the
``val`` split (the same held-out seeds as training runs use) after each epoch count in
``--epochs`` (each saved under ``--out-dir``). Training continues from one count to the next; the optimizer's moments
restart at each count (a pilot, close to but not exactly one SFT run of that length); with
``sft.lr_schedule=cosine`` give one count, since the schedule anneals over one run.
Tunes on ``val`` only. Last line: ``num_demos=... epochs=... val_success=...`` per count.

``--heldout-demos N`` also collects N demonstrations from other seeds (``sft.demo_seed +
HELDOUT_SEED_OFFSET``) and reports the mean SFT loss on them (no gradient, no augmentation)
after each count, beside the training loss: a falling training loss over a rising held-out
loss is memorization. On PickPlace it also reports the held-out loss with each instruction's cube colour
replaced by one the instruction does not name (``heldout_loss_recoloured``) and
``language_gap`` = recoloured - true: near 0 means the policy ignores the instruction. Every count's figures are also written to ``<out-dir>/sft_budget.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from lift.pickplace import recolour_named_cube  # noqa: E402
from lift.task import PICKPLACE_ENV_ID  # noqa: E402
from vla_rl_lib.config import apply_overrides, load_config  # noqa: E402
from vla_rl_lib.policy.loading import load_base_policy  # noqa: E402
from vla_rl_lib.rollout.collector import evaluation_seeds  # noqa: E402
from vla_rl_lib.sft.demos import load_demonstrations  # noqa: E402
from vla_rl_lib.sft.trainer import heldout_loss, run_sft  # noqa: E402
from vla_rl_lib.training.evaluate import SplitCollectors, evaluate_splits  # noqa: E402
from vla_rl_lib.training.policy_factory import (  # noqa: E402
    build_sft_policy,
    demonstrations_for,
    policy_settings,
    sft_unnorm_key,
)
from vla_rl_lib.training.trainer import configure_cpu_threads  # noqa: E402
from vla_rl_lib.utils import write_json_atomic  # noqa: E402

HELDOUT_SEED_OFFSET = 10_000_000  # held-out demos' first seed above sft.demo_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params/default.yaml")
    parser.add_argument("--num-demos", type=int, default=100)
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--episodes", type=int, default=50, help="val episodes per evaluation")
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/sft_budget"),
                        help="SFT checkpoints go to <out-dir>/demos<N>_epochs<E> (train --sft-checkpoint)")
    parser.add_argument("--init", type=Path, help="continue from this SFT checkpoint (same demos)")
    parser.add_argument("--init-epochs", type=int, default=0, help="epochs --init was trained for")
    parser.add_argument("--heldout-demos", type=int, default=0,
                        help="demos from other seeds to report the SFT loss on after each count; 0 = none")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, dotted key and YAML value (repeatable)",
    )
    args = parser.parse_args()
    if sorted(args.epochs) != args.epochs or args.epochs[0] <= args.init_epochs:
        parser.error(f"--epochs {args.epochs}: give increasing counts above --init-epochs, e.g. 10 20 40")
    overrides = {"rollout.env_id": "PickPlace-CRANE-X7", "rollout.max_steps": 100,
                 "sft.num_demos": args.num_demos}
    overrides.update({k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)})
    cfg = apply_overrides(load_config(args.config), overrides)
    if cfg.sft.lr_schedule == "cosine" and len(args.epochs) > 1:
        parser.error(f"--epochs {args.epochs} with sft.lr_schedule=cosine: a cosine schedule anneals "
                     "over one run; give a single count (one process per count)")
    configure_cpu_threads(torch.device("cpu"))
    s, r = cfg.sft, cfg.rollout
    t0 = time.perf_counter()
    dataset_dir = demonstrations_for(cfg, progress=False)
    dataset = load_demonstrations(dataset_dir)
    print(f"demos: {s.num_demos} episodes, {len(dataset)} steps, {time.perf_counter() - t0:.0f} s",
          flush=True)
    unnorm_key = sft_unnorm_key(cfg)
    policy = (load_base_policy(policy_settings(cfg), "sft", str(args.init)) if args.init
              else build_sft_policy(cfg, dataset.statistics, unnorm_key))
    heldout = recoloured = None
    if args.heldout_demos > 0:
        heldout_cfg = apply_overrides(cfg, {"sft.num_demos": args.heldout_demos,
                                            "sft.demo_seed": s.demo_seed + HELDOUT_SEED_OFFSET})
        heldout = load_demonstrations(demonstrations_for(heldout_cfg, progress=False))
        print(f"held-out demos: {args.heldout_demos} episodes, {len(heldout)} steps", flush=True)
        if cfg.rollout.env_id == PICKPLACE_ENV_ID:
            recoloured = [recolour_named_cube(text) for text in heldout.instructions]
    collectors = SplitCollectors(cfg, policy, num_envs=r.num_parallel_envs)
    seeds = evaluation_seeds(cfg.eval_seed, args.episodes)
    done, results = args.init_epochs, []
    for epochs in args.epochs:
        t1 = time.perf_counter()
        out = run_sft(policy, dataset, unnorm_key=unnorm_key, epochs=epochs - done,
                      batch_size=s.batch_size, learning_rate=s.learning_rate, seed=cfg.seed + done,
                      out_dir=args.out_dir / f"demos{s.num_demos}_epochs{epochs}",
                      augment_shift=s.augment_shift, lr_schedule=s.lr_schedule, progress=False)
        sft_s = time.perf_counter() - t1
        done = epochs
        row = {"epochs": epochs, "loss": out["history"][-1]["loss"], "sft_s": sft_s,
               "s_per_epoch": sft_s / len(out["history"])}
        heldout_text = ""
        if heldout is not None:
            row["heldout_loss"] = heldout_loss(policy, heldout, s.batch_size)
            heldout_text = f" heldout_loss={row['heldout_loss']:.3f}"
            if recoloured is not None:
                row["heldout_loss_recoloured"] = heldout_loss(
                    policy, heldout, s.batch_size, recoloured
                )
                row["language_gap"] = row["heldout_loss_recoloured"] - row["heldout_loss"]
                heldout_text += f" language_gap={row['language_gap']:.3f}"
        t2 = time.perf_counter()
        val = evaluate_splits(collectors, ["val"], seeds, temperature=r.temperature,
                              record_frames=0)["val"]
        row.update(val_success=val.success_rate, val_successes=val.successes,
                   val_episodes=val.episodes, eval_s=time.perf_counter() - t2)
        results.append(row)
        write_json_atomic(args.out_dir / "sft_budget.json",
                          {"argv": sys.argv, "overrides": overrides, "results": results})
        print(f"epochs={epochs} loss={row['loss']:.3f}{heldout_text} sft_s={sft_s:.0f} "
              f"val_success={val.success_rate:.3f} [{val.interval[0]:.2f}, {val.interval[1]:.2f}] "
              f"({val.episodes} episodes) eval_s={row['eval_s']:.0f}",
              flush=True)
    collectors.close()
    print(" ".join(f"num_demos={s.num_demos} epochs={row['epochs']} val_success={row['val_success']:.3f}"
                   for row in results))


if __name__ == "__main__":
    main()
