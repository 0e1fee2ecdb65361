"""Behaviour cloning of a VLA on demonstrations: the supervised warm start before RL.

The loss is the policy's own ``sft_loss``: cross-entropy of the action tokens
over the 256 action bins, with actions tokenized exactly as RL tokenizes them
(``policy.actions_to_tokens``: q01/q99 normalization from the dataset
statistics, then OpenVLA's binning). Whether LoRA or every weight trains is
decided when the policy is built; this module trains what
``optimizer_param_groups`` returns. The value head is left alone (it gets no
gradient from this loss) and is learned by RL.
"""

from __future__ import annotations

import math
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vla_rl_lib.config import LRSchedule
from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.base import VLAPolicy
from vla_rl_lib.sft.demos import STATISTICS_KEY, DemoDataset
from vla_rl_lib.utils import write_json_atomic

SFT_METRICS_FILE = "sft_metrics.json"
LR_SCHEDULES: tuple[str, ...] = typing.get_args(LRSchedule)


def set_action_statistics(
    policy: VLAPolicy, statistics: ActionStatistics, unnorm_key: str = STATISTICS_KEY
) -> None:
    """Make ``policy`` normalize actions with ``statistics`` (and save them under ``unnorm_key``)."""
    if statistics.action_dim != policy.action_dim:
        raise ValueError(
            f"the statistics describe {statistics.action_dim} action dims but the policy acts in "
            f"{policy.action_dim}; collect demonstrations for this robot or build a matching policy"
        )
    if not hasattr(policy, "statistics"):
        raise TypeError(
            f"{type(policy).__name__} has no 'statistics' attribute to normalize actions with; "
            "SFT needs a policy that tokenizes actions with dataset statistics (HFVLAPolicy)"
        )
    policy.statistics = statistics
    policy.unnorm_key = unnorm_key


def sft_batches(num_samples: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """One epoch of shuffled index batches; the last one may be smaller."""
    order = torch.randperm(num_samples, generator=generator).numpy()
    return [order[start : start + batch_size] for start in range(0, num_samples, batch_size)]


def random_shift(images: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ's random shift of a batch of (N, H, W, C) images: each is padded by ``shift`` pixels
    (edges replicated) and cropped back to (H, W) at an offset drawn from ``rng``, so its content
    moves by at most ``shift`` pixels on each axis. ``shift=0`` returns ``images`` and draws nothing."""
    if shift == 0:
        return images
    count, height, width = images.shape[:3]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    top, left = rng.integers(0, 2 * shift + 1, size=(2, count, 1))
    rows = (top + np.arange(height))[:, :, None]
    cols = (left + np.arange(width))[:, None, :]
    return padded[np.arange(count)[:, None, None], rows, cols]


def augment_rng(seed: int) -> np.random.Generator:
    """The random-shift stream of an SFT run, apart from its shuffling and dropout."""
    return np.random.default_rng([seed, 0xA06])


def heldout_loss(
    policy: VLAPolicy,
    dataset: DemoDataset,
    batch_size: int,
    instructions: list[str] | None = None,
) -> float:
    """Mean SFT loss per sample on ``dataset`` (no gradient, eval mode, no augmentation), its
    actions tokenized with the statistics the policy already holds (those it was trained with).
    Beside the training loss it tells over- from under-fitting. ``instructions`` replaces the
    dataset's (one per step; e.g. counterfactual ones, to measure how much the policy listens).
    The policy is left in eval mode."""
    if instructions is None:
        instructions = dataset.instructions
    elif len(instructions) != len(dataset):
        raise ValueError(f"got {len(instructions)} instructions for {len(dataset)} steps")
    token_ids = policy.actions_to_tokens(dataset.actions)
    policy.eval()
    loss_sum = 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = slice(start, start + batch_size)
            loss = policy.sft_loss(
                dataset.images[rows], instructions[rows], token_ids[rows]
            )
            loss_sum += loss.item() * len(instructions[rows])
    return loss_sum / len(dataset)


def run_sft(
    policy: VLAPolicy,
    dataset: DemoDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    out_dir: str | os.PathLike,
    statistics: ActionStatistics | None = None,
    unnorm_key: str = STATISTICS_KEY,
    max_grad_norm: float = 1.0,
    augment_shift: int = 0,
    lr_schedule: str = "constant",
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Behaviour-clone ``policy`` on ``dataset`` and save it to ``out_dir``.

    ``statistics`` (default: the dataset's own) become the policy's action
    normalization before the actions are tokenized, and are saved with the
    checkpoint as ``dataset_statistics.json`` under ``unnorm_key``. Shuffling and any dropout draw
    from ``seed`` (the global torch RNG is left as it was). AdamW, gradients
    clipped to ``max_grad_norm``. ``augment_shift`` > 0 shifts each
    training image at random by up to that many pixels (``random_shift``, drawn from ``seed``).
    ``lr_schedule``: ``constant`` keeps ``learning_rate``; ``cosine`` anneals it to 0 over the
    ``epochs`` of this call (``torch.optim.lr_scheduler.CosineAnnealingLR``, a step per batch).
    ``on_epoch`` receives each epoch's record
    (``epoch``, ``loss``, ``grad_norm``, ``seconds``, ``samples_per_s``).

    ``out_dir`` is written by ``policy.save_pretrained`` (so ``train
    --sft-checkpoint out_dir`` loads it through ``from_checkpoint``) plus
    ``sft_metrics.json`` with the per-epoch records. Returns that summary.
    The policy is left in eval mode.
    """
    check_sft_inputs(policy, dataset, epochs, batch_size, learning_rate, augment_shift, lr_schedule)
    out_dir = Path(out_dir)
    statistics = dataset.statistics if statistics is None else statistics
    set_action_statistics(policy, statistics, unnorm_key)
    token_ids = policy.actions_to_tokens(dataset.actions)
    loop = _SFTEpochs(
        policy, dataset, token_ids, batch_size, learning_rate, max_grad_norm, augment_shift, seed
    )
    if lr_schedule == "cosine":
        loop.anneal(epochs * loop.batches)
    bar = tqdm(total=epochs * loop.batches, desc="SFT", unit="batch", disable=not progress)
    started = time.perf_counter()
    history = loop.train_epochs(epochs, seed, bar, on_epoch)
    policy.save_pretrained(str(out_dir))
    summary = {
        "checkpoint": str(out_dir),
        "epoch_losses": [r["loss"] for r in history],
        "history": history,
        "seconds": time.perf_counter() - started,
        "dataset": str(dataset.path),
        "num_episodes": dataset.num_episodes,
        "num_transitions": len(dataset),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_grad_norm": max_grad_norm,
        "augment_shift": augment_shift,
        "lr_schedule": lr_schedule,
        "seed": seed,
        "unnorm_key": unnorm_key,
    }
    write_json_atomic(out_dir / SFT_METRICS_FILE, summary)
    return summary


def check_sft_inputs(
    policy: VLAPolicy,
    dataset: DemoDataset,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    augment_shift: int = 0,
    lr_schedule: str = "constant",
) -> None:
    """Refuse settings or data that ``run_sft`` cannot train on, naming the fix."""
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"lr_schedule={lr_schedule!r} is unknown: use one of {', '.join(LR_SCHEDULES)}"
        )
    if epochs < 1:
        raise ValueError(f"epochs={epochs} is invalid: train for at least 1 epoch")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: use at least 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate} is invalid: it must be > 0")
    side = min(dataset.images.shape[1:3])
    if not 0 <= 2 * augment_shift < side:
        raise ValueError(
            f"augment_shift={augment_shift} is invalid: use 0 (off) up to {(side - 1) // 2}, "
            f"below half of the {side}-pixel images"
        )
    if len(dataset) == 0:
        raise ValueError(
            f"the dataset at {dataset.path} holds no steps; collect demonstrations first"
        )
    if dataset.actions.shape[1] != policy.action_dim:
        raise ValueError(
            f"the dataset's actions have {dataset.actions.shape[1]} dims but the policy acts in "
            f"{policy.action_dim}"
        )


class _SFTEpochs:
    """Passes over the demonstrations: shuffled batches (drawn from ``seed``), images shifted by
    up to ``augment_shift`` pixels, AdamW steps, gradients clipped to ``max_grad_norm``."""

    def __init__(
        self,
        policy: VLAPolicy,
        dataset: DemoDataset,
        token_ids: torch.Tensor,
        batch_size: int,
        learning_rate: float,
        max_grad_norm: float,
        augment_shift: int,
        seed: int,
    ) -> None:
        self.policy = policy
        self.dataset = dataset
        self.token_ids = token_ids
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_grad_norm = max_grad_norm
        self.augment_shift = augment_shift
        self.optimizer = torch.optim.AdamW(
            policy.optimizer_param_groups(learning_rate, learning_rate)
        )
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.generator = torch.Generator().manual_seed(seed)
        self.augment_rng = augment_rng(seed)
        self.batches = math.ceil(len(dataset) / batch_size)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def anneal(self, total_steps: int) -> None:
        """Cosine-anneal the learning rate to 0 over ``total_steps`` optimizer steps."""
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)

    def train_epochs(
        self,
        epochs: int,
        seed: int,
        bar: tqdm,
        on_epoch: Callable[[dict[str, Any]], None] | None,
    ) -> list[dict[str, Any]]:
        """Every epoch's record; dropout draws from ``seed`` on a forked torch RNG, and the policy
        ends in eval mode (the progress bar closed) however training ends."""
        device = next(self.policy.parameters()).device
        cuda = [device.index or 0] if device.type == "cuda" else []
        history: list[dict[str, Any]] = []
        try:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                self.policy.train()
                for epoch in range(1, epochs + 1):
                    record = self.train_epoch(epoch, bar)
                    history.append(record)
                    if on_epoch is not None:
                        on_epoch(record)
        finally:
            bar.close()
            self.policy.eval()
        return history

    def train_epoch(self, epoch: int, bar: tqdm) -> dict[str, Any]:
        """Train one epoch; its record: mean loss per sample, mean gradient norm per batch."""
        epoch_start = time.perf_counter()
        loss_sum = grad_norm_sum = 0.0
        for batch in sft_batches(len(self.dataset), self.batch_size, self.generator):
            loss, grad_norm = self._step(batch, epoch)
            loss_sum += loss * len(batch)
            grad_norm_sum += grad_norm
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=False)
        seconds = time.perf_counter() - epoch_start
        return {
            "epoch": epoch,
            "loss": loss_sum / len(self.dataset),
            "grad_norm": grad_norm_sum / self.batches,
            "seconds": seconds,
            "samples_per_s": len(self.dataset) / seconds,
        }

    def _step(self, batch: np.ndarray, epoch: int) -> tuple[float, float]:
        """One optimizer step on ``batch``; returns its loss and its (pre-clip) gradient norm."""
        dataset = self.dataset
        loss = self.policy.sft_loss(
            random_shift(dataset.images[batch], self.augment_shift, self.augment_rng),
            [dataset.instructions[i] for i in batch],
            self.token_ids[torch.from_numpy(batch).to(self.token_ids.device)],
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"SFT loss became {loss.item()} at epoch {epoch}; lower "
                f"learning_rate (now {self.learning_rate}) or check the dataset's actions"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.item(), float(grad_norm)
