"""Policy step latency and PPO update throughput of the tiny VLA on this machine.

    .venv/bin/python benchmarks/policy_throughput.py --quick
    taskset -c 1 .venv/bin/python benchmarks/policy_throughput.py --quick   # less noise

Latency: one ``act`` call (a batched policy step) at batch 1, 8 and 32. Parallel
decoding is timed with LoRA and with full fine-tuning (``_full``: what the fast
and default templates train), each on a pair of policies with the same weights:
the lean plain-torch forward (``lean_forward=True``, the default) and
transformers' forward (the reference: today's path before the lean one), their
calls interleaved so that both see the same machine load. The benchmark first
checks that both sample the same actions with the same log-probs.
Autoregressive decoding runs through transformers only. Training: ``evaluate``
+ backward of a PPO-style loss over a batch split into micro-batches, with LoRA
(lean and reference, alternating windows) and with full fine-tuning. Load
averages are printed at the start and end: wall times taken under load are not
idle-machine figures; the CPU time of each call (``_cpu_ms``) is less disturbed.
Last line: ``policy_step_ms_b8=... policy_step_ms_b8_reference=...
ppo_samples_per_s=...`` (parallel decoding, LoRA unless named ``_full``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings

import numpy as np
import torch

from vla_rl_lib.policy.hf_policy import HFVLAPolicy, build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig

INSTRUCTION = "pick up the red cube and lift it"


def act_median_ms(
    policies: dict[str, HFVLAPolicy], batch: int, size: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (wall ms, CPU ms) of one ``act`` call per policy, the policies' calls interleaved.

    CPU time (this thread's) is the figure to read on a loaded machine: wall time there
    mostly measures waiting for a core.
    """
    pictures, instructions = images(batch, size), [INSTRUCTION] * batch
    for policy in policies.values():
        policy.act(pictures, instructions)  # warm-up (fills the prompt cache)
    wall: dict[str, list[float]] = {name: [] for name in policies}
    cpu: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(repeats):
        for name, policy in policies.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            policy.act(pictures, instructions)
            cpu[name].append((time.thread_time() - start_cpu) * 1e3)
            wall[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in policies
    }


def images(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def check_same_samples(lean: HFVLAPolicy, reference: HFVLAPolicy, size: int) -> None:
    """Both forwards must sample the same actions with the same log-probs, to the bit."""
    pictures, instructions = images(8, size), [INSTRUCTION] * 8
    outputs = []
    for policy in (lean, reference):
        torch.manual_seed(0)
        outputs.append(policy.act(pictures, instructions))
    same = torch.equal(outputs[0].token_ids, outputs[1].token_ids) and torch.equal(
        outputs[0].log_probs, outputs[1].log_probs
    )
    if not same:
        raise SystemExit("lean and reference forwards sampled different actions or log-probs")
    print("lean forward == reference forward (actions and log-probs, batch 8): True")


def ppo_samples_per_s(
    policy: HFVLAPolicy, batch: int, micro_batch: int, size: int, seconds: float
) -> tuple[int, float]:
    """(samples, seconds) of PPO-style updates for at least ``seconds``."""
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
    return samples, time.perf_counter() - start


def interleaved_ppo_rate(
    policies: dict[str, HFVLAPolicy], size: int, seconds: float, rounds: int = 3
) -> dict[str, float]:
    """PPO samples/s per policy, measured in alternating windows so both see the same load."""
    totals = {name: [0, 0.0] for name in policies}
    for _ in range(rounds):
        for name, policy in policies.items():
            samples, elapsed = ppo_samples_per_s(
                policy, batch=32, micro_batch=8, size=size, seconds=seconds / rounds
            )
            totals[name][0] += samples
            totals[name][1] += elapsed
    return {name: samples / elapsed for name, (samples, elapsed) in totals.items()}


def load_averages() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--image-size", type=int, default=TinyVLAConfig.image_size)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 15 if args.quick else 60
    train_seconds = 3.0 if args.quick else 15.0
    config = TinyVLAConfig(image_size=args.image_size)
    load_at_start = load_averages()
    print(f"torch threads={torch.get_num_threads()} config={config.to_dict()}")
    print(f"load average (1/5/15 min) at start: {load_at_start}")

    results: dict[str, float] = {}
    parallel = {
        "lean": build_policy(config, LoRAConfig(enabled=True, rank=32), seed=0),
        "reference": build_policy(config, LoRAConfig(enabled=True, rank=32), seed=0, lean_forward=False),
    }
    # Full fine-tuning (no LoRA layers) is what params/fast.yaml and default.yaml train.
    parallel_full = {
        "full_lean": build_policy(config, None, seed=0),
        "full_reference": build_policy(config, None, seed=0, lean_forward=False),
    }
    lean_policy = parallel["lean"]
    if lean_policy._lean_forward() is None:
        raise SystemExit("the lean forward does not apply to this tiny VLA; nothing to compare")
    total = sum(p.numel() for p in lean_policy._hf_model().parameters())
    lora = sum(p.numel() for n, p in lean_policy.named_parameters() if "lora_" in n)
    head = sum(p.numel() for p in lean_policy.value_head.parameters())
    print(f"params: model={total} (LoRA {lora}), value head={head}")
    check_same_samples(parallel["lean"], parallel["reference"], args.image_size)
    check_same_samples(parallel_full["full_lean"], parallel_full["full_reference"], args.image_size)
    autoregressive = build_policy(config, LoRAConfig(enabled=True, rank=32), seed=0, decoding="autoregressive")
    for batch in (1, 8, 32):
        timed = act_median_ms(parallel | parallel_full, batch, args.image_size, repeats)
        for name, (ms, cpu_ms) in timed.items():
            results[f"step_ms_parallel_{name}_b{batch}"] = ms
            results[f"step_cpu_ms_parallel_{name}_b{batch}"] = cpu_ms
            print(
                f"act parallel ({name:>14}) batch {batch:>2}: {ms:7.2f} ms ({cpu_ms:6.2f} ms CPU)"
            )
        ms, cpu_ms = act_median_ms({"ar": autoregressive}, batch, args.image_size, repeats)["ar"]
        results[f"step_ms_autoregressive_b{batch}"] = ms
        print(
            f"act autoregressive (LoRA)      batch {batch:>2}: {ms:7.2f} ms ({cpu_ms:6.2f} ms CPU)"
        )

    rates = interleaved_ppo_rate(parallel, args.image_size, 2 * train_seconds)
    for name, rate in rates.items():
        results[f"ppo_samples_per_s_lora_{name}"] = rate
        print(f"PPO update (LoRA, {name}, batch 32, micro-batch 8): {rate:7.1f} samples/s")
    full = build_policy(config, None, seed=0)
    samples, elapsed = ppo_samples_per_s(
        full, batch=32, micro_batch=8, size=args.image_size, seconds=train_seconds
    )
    results["ppo_samples_per_s_full"] = samples / elapsed
    print(f"PPO update (full, lean, batch 32, micro-batch 8): {samples / elapsed:7.1f} samples/s")

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_at_end = load_averages()
    print(f"peak RSS {peak_rss_mb:.0f} MB; load average at end: {load_at_end}")
    print(
        f"policy_step_ms_b8={results['step_ms_parallel_lean_b8']:.2f} "
        f"policy_step_ms_b8_reference={results['step_ms_parallel_reference_b8']:.2f} "
        f"policy_step_ms_b1={results['step_ms_parallel_lean_b1']:.2f} "
        f"policy_step_ms_b1_reference={results['step_ms_parallel_reference_b1']:.2f} "
        f"policy_step_cpu_ms_b8={results['step_cpu_ms_parallel_lean_b8']:.2f} "
        f"policy_step_cpu_ms_b8_reference={results['step_cpu_ms_parallel_reference_b8']:.2f} "
        f"policy_step_ms_b8_full={results['step_ms_parallel_full_lean_b8']:.2f} "
        f"policy_step_ms_b8_full_reference={results['step_ms_parallel_full_reference_b8']:.2f} "
        f"policy_step_cpu_ms_b8_full={results['step_cpu_ms_parallel_full_lean_b8']:.2f} "
        f"policy_step_cpu_ms_b8_full_reference={results['step_cpu_ms_parallel_full_reference_b8']:.2f} "
        f"policy_step_ms_b8_autoregressive={results['step_ms_autoregressive_b8']:.2f} "
        f"ppo_samples_per_s={results['ppo_samples_per_s_lora_lean']:.1f} "
        f"ppo_samples_per_s_reference={results['ppo_samples_per_s_lora_reference']:.1f} "
        f"ppo_samples_per_s_full={results['ppo_samples_per_s_full']:.1f} "
        f"peak_rss_mb={peak_rss_mb:.0f} load_start={load_at_start} load_end={load_at_end}"
    )


if __name__ == "__main__":
    main()
