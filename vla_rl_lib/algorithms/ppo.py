"""The PPO (and critic-free GRPO) update, in the manner of CleanRL's single-file PPO.

One update: normalize the batch's advantages once, then ``num_epochs`` passes
of shuffled minibatches. Each minibatch is one optimizer step whose gradient
is accumulated over micro-batches (so a 7B model never holds a whole
minibatch's activations), clipped to ``max_grad_norm``. A step whose loss or
gradient is not finite is skipped and counted; an approximate KL above
``target_kl`` ends the update before its step is taken.

The policy is anything with ``evaluate_actions(images, instructions, token_ids,
temperature) -> EvaluateOutput`` (``vla_rl_lib.policy.base.VLAPolicy``); it
runs in whatever train/eval mode the caller left it in.

Data parallel (``shard``): every rank holds the whole batch and draws the same
minibatch order; each takes an equal slice of every minibatch, and the
wrapper (DDP or FSDP, ``vla_rl_lib.training.distributed``) averages the
gradients over ranks, so the step equals the one-process step on the whole
minibatch. Logged statistics and the early-stop decision are averaged over
ranks too, so all ranks take the same branch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

ADVANTAGE_NORM_EPS = 1e-8
HUBER_DELTA = 1.0  # on the value error; with normalized returns errors of ~1 are typical
STAT_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


@dataclass(frozen=True, kw_only=True)
class PPOSettings:
    """What the update reads: the run config's ``ppo`` section, minus the optimizer and GAE.

    No defaults here: the run config owns them. ``from_section(cfg.ppo)`` builds one.
    """

    algorithm: str  # "ppo" (with a critic) or "grpo" (critic-free)
    clip_ratio: float
    clip_ratio_high: float | None  # None: symmetric clip
    value_loss_coef: float
    entropy_coef: float
    num_epochs: int
    minibatch_size: int
    micro_batch_size: int  # gradient accumulation chunk
    max_grad_norm: float
    target_kl: float | None  # None: no early stop
    clip_value_loss: bool
    value_clip_range: float
    value_loss_type: str  # "mse" or "huber"
    normalize_advantages: bool  # PPO only

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("algorithm", self.algorithm, ("ppo", "grpo")),
            ("value_loss_type", self.value_loss_type, ("mse", "huber")),
        ):
            if value not in allowed:
                raise ValueError(f"PPOSettings.{name}={value!r} is unknown; choose one of {allowed}")
        for name in ("num_epochs", "minibatch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOSettings.{name}={getattr(self, name)} must be >= 1")

    @classmethod
    def from_section(cls, section: object) -> PPOSettings:
        """Read these fields by name from ``section`` (the run config's ``cfg.ppo``)."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


@dataclass
class PPOBatch:
    """One update's samples, flattened over (time, env). M = number of samples."""

    images: np.ndarray | torch.Tensor  # (M, H, W, 3) uint8
    instructions: list[str]  # (M,)
    token_ids: torch.Tensor  # (M, D) int64, the sampled action tokens
    old_log_probs: torch.Tensor  # (M,) at rollout time
    old_values: torch.Tensor  # (M,) at rollout time
    advantages: torch.Tensor  # (M,)
    returns: torch.Tensor  # (M,) value targets

    def __post_init__(self) -> None:
        size = len(self.instructions)
        for f in fields(self):
            value = getattr(self, f.name)
            if len(value) != size:
                raise ValueError(
                    f"PPOBatch.{f.name} holds {len(value)} samples but instructions holds {size}; "
                    "every field needs one entry per sample"
                )
        for name in ("old_log_probs", "old_values", "advantages", "returns"):
            if getattr(self, name).ndim != 1:
                raise ValueError(
                    f"PPOBatch.{name} must be 1-D (M,), got {tuple(getattr(self, name).shape)}"
                )

    def __len__(self) -> int:
        return len(self.instructions)


@dataclass(frozen=True)
class DataShard:
    """This process's share of every minibatch in a data-parallel update.

    ``no_sync`` returns a context in which backward does not all-reduce the
    gradients (DDP's ``no_sync``); the update enters it for every micro-batch
    but a minibatch's last, so the gradients travel once per optimizer step.
    """

    rank: int = 0
    world_size: int = 1
    no_sync: Callable[[], AbstractContextManager] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")

    def check_divides(self, size: int, minibatch_size: int) -> None:
        """Every minibatch must split into equal slices, one per rank."""
        for name, value in (("the batch", size), ("ppo.minibatch_size", minibatch_size)):
            if value % self.world_size:
                raise ValueError(indivisible_message(name, value, self.world_size))

    def slice(self, index: torch.Tensor) -> torch.Tensor:
        return index.chunk(self.world_size)[self.rank] if self.world_size > 1 else index

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average over ranks (equal slices: the mean over the whole minibatch)."""
        if self.world_size == 1:
            return values
        packed = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(packed)
        return dict(zip(values, (packed / self.world_size).tolist(), strict=True))

    def all_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        packed = torch.tensor([int(flag)])
        dist.all_reduce(packed, op=dist.ReduceOp.MIN)
        return bool(packed.item())


def indivisible_message(name: str, value: int, world_size: int) -> str:
    """One line naming the nearest world sizes and the nearest sizes that work."""
    divisors = [d for d in range(1, value + 1) if value % d == 0]
    below = max((d for d in divisors if d < world_size), default=1)
    above = min((d for d in divisors if d > world_size), default=None)
    sizes = f"{below}" + (f" or {above}" if above is not None else "")
    lower = value - value % world_size
    multiples = f"{lower} or {lower + world_size}" if lower else f"{world_size}"
    return (
        f"{name} ({value}) does not split evenly over world size {world_size}; "
        f"use {sizes} processes, or make it {multiples}"
    )


def _value_error_loss(error: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return 0.5 * error**2
    if kind == "huber":
        return F.huber_loss(error, torch.zeros_like(error), reduction="none", delta=HUBER_DELTA)
    raise ValueError(f"value_loss_type={kind!r} is unknown; choose 'mse' or 'huber'")


def ppo_loss(
    new_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    settings: PPOSettings,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate PPO loss (a mean over the samples) and its detached statistics.

    loss = policy_loss - entropy_coef * entropy + value_loss_coef * value_loss,
    with the ratio clipped to [1 - clip_ratio, 1 + (clip_ratio_high or clip_ratio)].
    GRPO has no critic: its value loss is 0 and ``new_values`` get no gradient.
    """
    log_ratio = new_log_probs - old_log_probs
    ratio = log_ratio.exp()
    low = 1.0 - settings.clip_ratio
    high = 1.0 + (
        settings.clip_ratio if settings.clip_ratio_high is None else settings.clip_ratio_high
    )
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(low, high)).mean()

    if settings.algorithm == "grpo":
        value_loss = torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
    else:
        unclipped = _value_error_loss(new_values - returns, settings.value_loss_type)
        if settings.clip_value_loss:
            clipped_values = old_values + (new_values - old_values).clamp(
                -settings.value_clip_range, settings.value_clip_range
            )
            clipped = _value_error_loss(clipped_values - returns, settings.value_loss_type)
            value_loss = torch.max(unclipped, clipped).mean()
        else:
            value_loss = unclipped.mean()

    entropy_mean = entropy.mean()
    loss = (
        policy_loss - settings.entropy_coef * entropy_mean + settings.value_loss_coef * value_loss
    )
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy_mean.detach(),
            # k3 estimator of KL(old || new): unbiased, always >= 0 (Schulman, "Approximating KL")
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clip_fraction": ((ratio < low) | (ratio > high)).float().mean(),
        }
    return loss, stats


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target is constant."""
    target_var = target.var(unbiased=False)
    if target_var == 0:
        return math.nan
    return float(1 - (target - predicted).var(unbiased=False) / target_var)


def _take(images: np.ndarray | torch.Tensor, index: torch.Tensor) -> np.ndarray | torch.Tensor:
    return (
        images[index.numpy()] if isinstance(images, np.ndarray) else images[index.to(images.device)]
    )


def _full_float(value: torch.Tensor) -> float:
    """A float from a tensor that may be an FSDP-sharded DTensor (its norm is already global)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)


def ppo_update(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: PPOBatch,
    settings: PPOSettings,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    shard: DataShard | None = None,
) -> dict[str, float | int | bool]:
    """Run one PPO/GRPO update on ``batch``; return the logged statistics.

    Statistics are means over the optimizer steps taken (``grad_norm`` is the
    norm before clipping). ``explained_variance`` compares the rollout values
    with the returns (nan for GRPO, which has no critic). With ``shard``,
    every rank passes the same batch and generator state (see the module notes).

    The ratio and its clip are centred on ``batch.old_log_probs``, the log-probs
    the behaviour policy recorded while it played the episodes, never on
    log-probs recomputed here; the value clip on ``batch.old_values`` and the
    advantages are from that policy too. So a batch played by older weights than
    ``policy``'s (``rollout.collect_ahead``: one update older) is still
    optimized against the policy that collected it, as asynchronous PPO does.
    """
    size = len(batch)
    if size == 0:
        raise ValueError("PPOBatch is empty: collect at least one step before updating")
    shard = shard or DataShard()
    advantages = _normalized_advantages(batch.advantages, settings)
    minibatch_size = min(settings.minibatch_size, size)
    shard.check_divides(size, minibatch_size)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    totals = dict.fromkeys((*STAT_KEYS, "grad_norm"), 0.0)
    steps = skipped = epochs_completed = 0
    early_stopped = False
    for _epoch in range(settings.num_epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, minibatch_size):
            index = shard.slice(order[start : start + minibatch_size])
            optimizer.zero_grad(set_to_none=True)
            minibatch_stats, loss_is_finite = _accumulate_gradients(
                policy, batch, advantages, index, settings, temperature, shard
            )
            minibatch_stats = shard.mean(minibatch_stats)
            loss_is_finite = shard.all_true(loss_is_finite)
            # Past target_kl the policy has moved far enough from the one that collected the data.
            if settings.target_kl is not None and minibatch_stats["approx_kl"] > settings.target_kl:
                early_stopped = True
                optimizer.zero_grad(set_to_none=True)
                break
            grad_norm = _full_float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
            if not (loss_is_finite and math.isfinite(grad_norm)):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            steps += 1
            for key, value in minibatch_stats.items():
                totals[key] += value
            totals["grad_norm"] += grad_norm
        if early_stopped:
            break
        epochs_completed += 1
    optimizer.zero_grad(set_to_none=True)

    result: dict[str, float | int | bool] = {
        key: value / steps if steps else math.nan for key, value in totals.items()
    }
    result["explained_variance"] = (
        math.nan
        if settings.algorithm == "grpo"
        else explained_variance(
            batch.old_values.detach().float().cpu(), batch.returns.detach().float().cpu()
        )
    )
    result["num_minibatch_steps"] = steps
    result["skipped_steps"] = skipped
    result["early_stopped"] = early_stopped
    result["epochs_completed"] = epochs_completed
    return result


def _normalized_advantages(advantages: torch.Tensor, settings: PPOSettings) -> torch.Tensor:
    advantages = advantages.detach().float()
    # GRPO's advantages are already normalized within each group, and a group whose returns are
    # all equal has advantage exactly 0. Centering them again on the batch mean would hand such a
    # group (e.g. four failures) a non-zero advantage and reinforce its actions, so GRPO skips it.
    if settings.normalize_advantages and len(advantages) > 1 and settings.algorithm != "grpo":
        advantages = (advantages - advantages.mean()) / (advantages.std() + ADVANTAGE_NORM_EPS)
    return advantages


def _accumulate_gradients(
    policy: torch.nn.Module,
    batch: PPOBatch,
    advantages: torch.Tensor,
    index: torch.Tensor,
    settings: PPOSettings,
    temperature: float,
    shard: DataShard,
) -> tuple[dict[str, float], bool]:
    """Backward over one minibatch (this rank's ``index``) in micro-batches.

    Returns the minibatch's mean statistics and whether every micro-batch's loss was finite.
    """
    minibatch_stats = dict.fromkeys(STAT_KEYS, 0.0)
    loss_is_finite = True
    micros = index.split(settings.micro_batch_size)
    for position, micro in enumerate(micros):
        defer_sync = shard.no_sync is not None and position < len(micros) - 1
        with shard.no_sync() if defer_sync else contextlib.nullcontext():
            out = policy.evaluate_actions(
                _take(batch.images, micro),
                [batch.instructions[i] for i in micro.tolist()],
                batch.token_ids[micro],
                temperature,
            )
            device = out.log_probs.device
            loss, stats = ppo_loss(
                out.log_probs,
                batch.old_log_probs[micro].to(device),
                advantages[micro].to(device),
                out.entropy,
                out.values,
                batch.old_values[micro].to(device),
                batch.returns[micro].to(device),
                settings,
            )
            weight = len(micro) / len(index)  # the accumulated gradient is the minibatch mean's
            (loss * weight).backward()
            loss_is_finite &= bool(torch.isfinite(loss))
            for key, value in stats.items():
                minibatch_stats[key] += weight * float(value)
    return minibatch_stats, loss_is_finite
