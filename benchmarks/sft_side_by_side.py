"""SFT throughput of two processes side by side on the same cores, at torch's default thread
count (the reference) and at ``--threads`` per process: what ``learning.py``'s two-process table
pays for oversubscribing the cores.

    python benchmarks/sft_side_by_side.py --batches 60 --threads 1

Each process builds the table's SFT policy (``learning.RECIPE``), loads seed 0's cached demos
(``outputs/learning/demos``, collected if missing) and times ``--batches`` optimizer steps at
batch 32 after 5 warm-up steps. Last line: ``default_threads=... samples_per_s_default=...
samples_per_s_threads=... speedup=...`` (samples/s summed over the two processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def worker(threads: int, batches: int, output_dir: Path) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from benchmarks import learning
    from vla_rl_lib.sft.demos import load_demonstrations
    from vla_rl_lib.sft.trainer import _SFTEpochs, set_action_statistics, sft_batches
    from vla_rl_lib.training.policy_factory import (
        build_sft_policy,
        demonstrations_for,
        sft_unnorm_key,
    )

    cfg, _ = learning.build_config("sft", 0, {}, output_dir)
    dataset = load_demonstrations(demonstrations_for(cfg, False))
    key = sft_unnorm_key(cfg)
    policy = build_sft_policy(cfg, dataset.statistics, key)
    set_action_statistics(policy, dataset.statistics, key)
    tokens = policy.actions_to_tokens(dataset.actions)
    loop = _SFTEpochs(policy, dataset, tokens, cfg.sft.batch_size, cfg.sft.learning_rate, 1.0, 0, 0)
    order = sft_batches(len(dataset), cfg.sft.batch_size, torch.Generator().manual_seed(0))
    policy.train()
    for batch in order[:5]:
        loop._step(batch, 1)
    t0 = time.perf_counter()
    samples = 0
    for batch in order[5:5 + batches]:
        loop._step(batch, 1)
        samples += len(batch)
    return {"threads": torch.get_num_threads(), "samples_per_s": samples / (time.perf_counter() - t0)}


def side_by_side(threads: int, batches: int, output_dir: Path) -> tuple[int, float]:
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--batches", str(batches),
           "--output-dir", str(output_dir)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed")
    return outs[0]["threads"], sum(o["samples_per_s"] for o in outs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process to compare")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "learning",
                        help="learning.py's output folder (its demo cache is reused)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.threads, args.batches, args.output_dir.absolute())), flush=True)
        return 0
    default_threads, reference = side_by_side(0, args.batches, args.output_dir.absolute())
    print(f"two processes, torch default ({default_threads} threads each): {reference:.1f} samples/s")
    _, tuned = side_by_side(args.threads, args.batches, args.output_dir.absolute())
    print(f"two processes, {args.threads} thread(s) each: {tuned:.1f} samples/s")
    print(f"default_threads={default_threads} samples_per_s_default={reference:.1f} "
          f"samples_per_s_threads={tuned:.1f} threads={args.threads} speedup={tuned / reference:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
