"""Policy step latency and PPO update throughput of the tiny VLA on this machine.

    .venv/bin/python benchmarks/policy_throughput.py --quick

Latency: one ``act`` call (a batched policy step) at batch 1, 8 and 32 in both
decodings. Training: ``evaluate`` + backward of a PPO-style loss over a batch
split into micro-batches, with LoRA and with full fine-tuning (parallel
decoding). Last line: ``policy_step_ms_b8=... ppo_samples_per_s=...``
(parallel decoding, LoRA).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import warnings

import numpy as np
import torch

from vla_rl_lib.policy.hf_policy import build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig

INSTRUCTION = "pick up the red cube and lift it"


def act_median_ms(policy, batch: int, size: int, repeats: int) -> float:
    pictures, instructions = images(batch, size), [INSTRUCTION] * batch
    policy.act(pictures, instructions)  # warm-up (fills the prompt cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.act(pictures, instructions)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def images(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def ppo_samples_per_s(policy, batch: int, micro_batch: int, size: int, seconds: float) -> float:
    pictures = images(batch, size)
    instructions = [INSTRUCTION] * batch
    old = policy.act(pictures, instructions)
    advantages = torch.randn(batch)
    optimizer = torch.optim.AdamW(policy.optimizer_param_groups(1e-4, 1e-3))
    samples, start = 0, time.perf_counter()
    while samples == 0 or time.perf_counter() - start < seconds:
        optimizer.zero_grad()
        for lo in range(0, batch, micro_batch):
            part = slice(lo, lo + micro_batch)
            out = policy.evaluate_actions(pictures[part], instructions[part], old.token_ids[part])
            ratio = (out.log_probs - old.log_probs[part]).exp()
            loss = -(ratio * advantages[part]).mean() + 0.5 * out.values.pow(2).mean()
            (loss * (out.log_probs.shape[0] / batch)).backward()
        optimizer.step()
        samples += batch
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under a minute)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--image-size", type=int, default=TinyVLAConfig.image_size)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 30
    train_seconds = 3.0 if args.quick else 15.0
    config = TinyVLAConfig(image_size=args.image_size)
    print(f"torch threads={torch.get_num_threads()} config={config.to_dict()}")

    results: dict[str, float] = {}
    for decoding in ("parallel", "autoregressive"):
        policy = build_policy(config, LoRAConfig(enabled=True, rank=32), seed=0, decoding=decoding)
        if decoding == "parallel":
            total = sum(p.numel() for p in policy._hf_model().parameters())
            lora = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
            print(
                f"params: model={total} (LoRA {lora}), value head={sum(p.numel() for p in policy.value_head.parameters())}"
            )
        for batch in (1, 8, 32):
            ms = act_median_ms(policy, batch, args.image_size, repeats)
            results[f"step_ms_{decoding}_b{batch}"] = ms
            print(f"act {decoding:>14} batch {batch:>2}: {ms:7.2f} ms")

    for name, lora in (("lora", LoRAConfig(enabled=True, rank=32)), ("full", None)):
        policy = build_policy(config, lora, seed=0, decoding="parallel")
        rate = ppo_samples_per_s(
            policy, batch=32, micro_batch=8, size=args.image_size, seconds=train_seconds
        )
        results[f"ppo_samples_per_s_{name}"] = rate
        print(f"PPO update ({name}, batch 32, micro-batch 8): {rate:7.1f} samples/s")

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_rss_mb:.0f} MB")
    print(
        f"policy_step_ms_b8={results['step_ms_parallel_b8']:.2f} "
        f"policy_step_ms_b8_autoregressive={results['step_ms_autoregressive_b8']:.2f} "
        f"ppo_samples_per_s={results['ppo_samples_per_s_lora']:.1f} "
        f"ppo_samples_per_s_full={results['ppo_samples_per_s_full']:.1f} "
        f"peak_rss_mb={peak_rss_mb:.0f}"
    )


if __name__ == "__main__":
    main()
