"""The data-parallel learner: the PPO update on several processes with ``torch.distributed``.

Launched by ``torchrun`` (one process per GPU; see docs/scaling.md for why not
Ray Train). Rank 0 collects the rollouts (in-process, or through the Ray
rollout workers) and broadcasts the batch; every rank then runs the real
``ppo_update`` on its slice of each minibatch (``DataShard``), and the wrapper
averages the gradients:

* ``ddp``  — ``DistributedDataParallel``: every rank holds the whole model; for
  models that fit on one device (the tiny VLA, OpenVLA-7B with LoRA on 80 GB).
* ``fsdp`` — FSDP2 ``fully_shard``: weights, gradients and optimizer state are
  sharded over the ranks, one unit per transformer block (the model's own
  ``_no_split_modules``); for OpenVLA-7B with full fine-tuning.

Checkpoints keep the single-process format (``trainable_state_dict`` and the
optimizer's index-keyed state), so a run saved on N ranks resumes on one and
the other way round.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vla_rl_lib.algorithms.ppo import DataShard, PPOBatch, indivisible_message
from vla_rl_lib.training.errors import TrainingError

STRATEGIES = ("ddp", "fsdp")


def resolve_device(device: str, local_rank: int = 0) -> str:
    """The device name; under torchrun, process ``local_rank`` takes GPU ``local_rank``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was requested but no CUDA GPU is visible; use device: cpu")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank else device


class DistributedError(ValueError):
    """A distributed launch cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` launch (read from its environment)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Launch:
        env = dict(os.environ) if env is None else env
        try:
            return cls(
                rank=int(env.get("RANK", 0)),
                local_rank=int(env.get("LOCAL_RANK", 0)),
                world_size=int(env.get("WORLD_SIZE", 1)),
            )
        except ValueError as exc:
            raise DistributedError(
                f"RANK/LOCAL_RANK/WORLD_SIZE must be integers ({exc}); launch with torchrun"
            ) from exc


def check_world_size(world_size: int, minibatch_size: int) -> None:
    """Before anything loads: every minibatch must split evenly over the ranks."""
    if minibatch_size % world_size:
        raise DistributedError(indivisible_message("ppo.minibatch_size", minibatch_size, world_size))


def check_launch(world_size: int, minibatch_size: int, strategy: str, executor: str) -> None:
    """Everything a distributed launch needs from the config, checked before anything loads."""
    check_world_size(world_size, minibatch_size)
    if strategy == "fsdp" and executor == "ray":
        raise DistributedError(
            "distributed_strategy 'fsdp' runs the rollouts on every rank in lockstep and cannot "
            "feed Ray workers yet; use rollout.executor: local, or distributed_strategy: ddp"
        )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(launch: Launch, device: torch.device, timeout_s: float = 1800) -> None:
    """Join the ``torchrun`` group (env:// rendezvous); a no-op for one process."""
    if launch.world_size == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))


@contextlib.contextmanager
def main_rank_first(launch: Launch) -> Iterator[None]:
    """Rank 0 runs the block first (it may write files: a warm start, a base model)."""
    if launch.world_size > 1 and not launch.is_main:
        dist.barrier()
    yield
    if launch.world_size > 1 and launch.is_main:
        dist.barrier()


def broadcast_object(value: Any, launch: Launch) -> Any:
    """Rank 0's ``value`` on every rank (pickled; the rollout batch is small next to the model)."""
    if launch.world_size == 1:
        return value
    box = [value if launch.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def destroy_process_group(launch: Launch) -> None:
    if launch.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def trim_batch(batch: PPOBatch, world_size: int) -> tuple[PPOBatch, int]:
    """Drop the last ``len % world_size`` samples so every rank's slice is equal; (batch, dropped).

    Episodes end at different steps, so a batch's length is not fixed; at most
    ``world_size - 1`` samples (of the last episode's tail) are left out of the update.
    """
    keep = len(batch) - len(batch) % world_size
    if keep == len(batch):
        return batch, 0
    if keep == 0:
        raise DistributedError(
            f"the batch holds {len(batch)} samples, fewer than the {world_size} ranks; "
            "collect more (rollout.num_rollouts_per_update) or launch fewer processes"
        )
    return PPOBatch(
        batch.images[:keep], batch.instructions[:keep], batch.token_ids[:keep],
        batch.old_log_probs[:keep], batch.old_values[:keep], batch.advantages[:keep],
        batch.returns[:keep],
    ), len(batch) - keep


class NoMetrics:
    """The metrics writer of a rank that does not write (rank 0 writes the run's logs)."""

    def log(self, record: dict[str, Any]) -> None:
        """Nothing: the record is rank 0's to write."""

    def close(self) -> None:
        pass


class _Evaluate(nn.Module):
    """Routes DDP's forward to the policy's ``evaluate_actions`` (DDP hooks only run through forward)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, images: Any, instructions: list[str], token_ids: torch.Tensor,
                temperature: float = 1.0) -> Any:
        return self.policy.evaluate_actions(images, instructions, token_ids, temperature)


class DDPPolicy(DistributedDataParallel):
    """DDP around a policy; ``evaluate_actions`` goes through DDP's forward so gradients are averaged."""

    def evaluate_actions(self, images: Any, instructions: list[str], token_ids: torch.Tensor,
                 temperature: float = 1.0) -> Any:
        return self(images, instructions, token_ids, temperature)


def shard_units(policy: nn.Module) -> list[nn.Module]:
    """The transformer blocks FSDP shards one by one (each HF model's ``_no_split_modules``)."""
    names: set[str] = set()
    for module in policy.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [m for m in policy.modules() if type(m).__name__ in names]


@dataclass
class DataParallelLearner:
    """A policy wrapped for data-parallel updates, and the shard ``ppo_update`` takes."""

    policy: nn.Module  # the module the optimizer and checkpoints see (DDP: unwrapped)
    trainer_view: Any  # what ppo_update calls ``evaluate_actions`` on
    shard: DataShard
    strategy: str

    def full_trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights in the one-process format, on every rank."""
        if self.strategy == "fsdp":
            return _gathered(self.policy.trainable_state_dict())
        return self.policy.trainable_state_dict()

    def release(self) -> None:
        """Free the DDP wrapper (and its reducer) now, while the process group is still registered.

        Call it before :func:`destroy_process_group`. Freed later, the reducer drops the
        group's last reference while holding the GIL; gloo's destructor then joins its
        worker threads, and one that still needs the GIL to free a finished broadcast's
        tensors never returns: the rank hangs at exit (seen under load, about 1 run in 15).
        Released first, the group's last reference is the registry's, whose destructor
        runs without the GIL. The learner cannot update afterwards.
        """
        if self.trainer_view is not self.policy:
            self.trainer_view = None
            self.shard = DataShard(self.shard.rank, self.shard.world_size)  # drops ddp.no_sync
            gc.collect()  # DDP's module graph holds reference cycles


def _gathered(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
            for k, v in state.items()}


def wrap_policy(policy: nn.Module, launch: Launch, strategy: str = "ddp",
                device: torch.device | None = None) -> DataParallelLearner:
    """Wrap ``policy`` (already on its device, identical weights on every rank) for the update."""
    if strategy not in STRATEGIES:
        raise DistributedError(f"distributed strategy {strategy!r} is unknown; choose one of {STRATEGIES}")
    if launch.world_size == 1:
        return DataParallelLearner(policy, policy, DataShard(), strategy)
    if strategy == "ddp":
        device = device or torch.device("cpu")
        ddp = DDPPolicy(
            _Evaluate(policy),
            device_ids=[device.index or 0] if device.type == "cuda" else None,
            # GRPO gives the value head no gradient; DDP must not wait for it.
            find_unused_parameters=True,
        )
        return DataParallelLearner(
            policy, ddp, DataShard(launch.rank, launch.world_size, ddp.no_sync), strategy
        )
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for unit in shard_units(policy):
        fully_shard(unit)
    fully_shard(policy)
    for method in ("evaluate_actions", "act"):  # both run the model outside forward()
        register_fsdp_forward_method(policy, method)

    @contextlib.contextmanager
    def no_sync() -> Iterator[None]:
        policy.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            policy.set_requires_gradient_sync(True)

    return DataParallelLearner(policy, policy, DataShard(launch.rank, launch.world_size, no_sync), strategy)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state in the one-process format (FSDP's sharded moments gathered)."""
    state = optimizer.state_dict()
    state["state"] = {
        index: {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in s.items()}
        for index, s in state["state"].items()
    }
    return state


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a one-process optimizer state; under FSDP each moment is sharded like its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not isinstance(param, DTensor):
                continue
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == param.shape:
                    moments[key] = distribute_tensor(
                        value.to(param.device), param.device_mesh, param.placements
                    )
