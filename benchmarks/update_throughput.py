"""PPO update throughput of the tiny local VLA: samples per second through ``ppo_update``.

For each template (fast, default) it builds the template's tiny model
(random weights, full fine-tuning or LoRA as the template says), fills one
update's batch with ``act`` on random 64x64 images, and times a full
``ppo_update`` (all epochs, minibatches, micro-batches, clipping). It also
checks the first minibatch's ratio is 1 (rollout and recomputed log-probs
agree). Last line: ``fast_samples_per_s=... default_samples_per_s=...``.

    .venv/bin/python benchmarks/update_throughput.py [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import lift
from vla_rl_lib.algorithms.ppo import PPOBatch, PPOSettings, ppo_update
from vla_rl_lib.config import VLARLConfig, load_template
from vla_rl_lib.policy.hf_policy import HFVLAPolicy
from vla_rl_lib.policy.loading import fresh_tiny_policy
from vla_rl_lib.training.policy_factory import policy_settings


def build_policy(cfg: VLARLConfig) -> HFVLAPolicy:
    return fresh_tiny_policy(policy_settings(cfg))


def full_batch(policy: HFVLAPolicy, cfg: VLARLConfig, rng: np.random.Generator) -> PPOBatch:
    """As many samples as the template's largest batch, collected ``num_parallel_envs`` at a time."""
    size, chunk, side = cfg.max_batch_steps(), cfg.rollout.num_parallel_envs, cfg.rollout.image_size
    images = rng.integers(0, 256, size=(size, side, side, 3), dtype=np.uint8)
    instructions = [cfg.language_instruction or lift.INSTRUCTION] * size
    outputs = [
        policy.act(images[i : i + chunk], instructions[i : i + chunk], cfg.rollout.temperature)
        for i in range(0, size, chunk)
    ]
    values = torch.cat([o.values for o in outputs])
    return PPOBatch(
        images=images,
        instructions=instructions,
        token_ids=torch.cat([o.token_ids for o in outputs]),
        old_log_probs=torch.cat([o.log_probs for o in outputs]),
        old_values=values,
        advantages=torch.as_tensor(rng.normal(size=size), dtype=torch.float32),
        returns=values + torch.as_tensor(rng.normal(size=size), dtype=torch.float32),
    )


def measure(name: str, repeats: int) -> float:
    cfg = load_template(name)
    policy = build_policy(cfg)
    rng = np.random.default_rng(cfg.seed)
    batch = full_batch(policy, cfg, rng)
    with torch.no_grad():
        recomputed = policy.evaluate_actions(batch.images[:8], batch.instructions[:8], batch.token_ids[:8])
    drift = (recomputed.log_probs - batch.old_log_probs[:8]).abs().max().item()
    n_params = sum(p.numel() for p in policy.parameters() if p.requires_grad)

    best = float("inf")
    for repeat in range(repeats):
        optimizer = torch.optim.AdamW(
            policy.optimizer_param_groups(cfg.ppo.learning_rate, cfg.ppo.value_learning_rate)
        )
        generator = torch.Generator().manual_seed(repeat)
        start = time.perf_counter()
        stats = ppo_update(policy, optimizer, batch, PPOSettings.from_section(cfg.ppo), cfg.rollout.temperature, generator)
        elapsed = time.perf_counter() - start
        samples = len(batch) * stats["epochs_completed"]
        best = min(best, elapsed / max(samples, 1))
    print(
        f"{name}: {n_params / 1e6:.2f}M trainable params, batch {len(batch)}, "
        f"{cfg.ppo.num_epochs} epoch(s), minibatch {cfg.ppo.minibatch_size}, "
        f"micro-batch {cfg.ppo.micro_batch_size}: {1 / best:.0f} samples/s "
        f"(update {best * len(batch) * cfg.ppo.num_epochs:.2f} s; "
        f"max |rollout - recomputed log-prob| {drift:.1e}; skipped {stats['skipped_steps']})"
    )
    return 1 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # one thread: the trainer runs torch on one thread next to the renderer (see policy_factory)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    rates = {name: measure(name, args.repeats) for name in ("fast", "default")}
    print(" ".join(f"{name}_samples_per_s={rate:.0f}" for name, rate in rates.items()))


if __name__ == "__main__":
    main()
