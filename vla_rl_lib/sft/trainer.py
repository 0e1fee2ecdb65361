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
from collections.abc import Callable, Sequence
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
SFT_STATE_FILE = "sft_state.pt"  # written after every epoch when run_sft is given a state_file
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
    state_file: str | os.PathLike | None = None,
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

    ``state_file``: after every epoch the training state (trainable weights and buffers, AdamW,
    the schedule, every RNG) is written there atomically; a call that finds the file continues
    after its last epoch and ends where an uninterrupted call would have, bit for bit on the
    same machine. A file from other settings is refused. It is deleted once the policy is saved.

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
    settings = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                "max_grad_norm": max_grad_norm, "augment_shift": augment_shift,
                "lr_schedule": lr_schedule, "seed": seed, "num_transitions": len(dataset),
                "num_episodes": dataset.num_episodes}  # fmt: skip
    state = _TrainingState(Path(state_file), settings) if state_file is not None else None
    resumed = state.restore(loop) if state is not None else None
    history: list[dict[str, Any]] = resumed["history"] if resumed else []
    resumed_after = len(history)
    bar = tqdm(total=epochs * loop.batches, initial=len(history) * loop.batches, desc="SFT",
               unit="batch", disable=not progress)  # fmt: skip
    started = time.perf_counter()
    history += loop.train_epochs(
        epochs, seed, bar, on_epoch, done=history,
        on_state=None if state is None else state.save,
    )  # fmt: skip
    policy.save_pretrained(str(out_dir))
    summary = {
        "checkpoint": str(out_dir),
        "epoch_losses": [r["loss"] for r in history],
        "history": history,
        # a resumed run adds the seconds of the calls before it
        "seconds": time.perf_counter() - started + (resumed["seconds"] if resumed else 0.0),
        "resumed_after_epoch": resumed_after,
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
    if state is not None:
        state.path.unlink(missing_ok=True)
    return summary


class _TrainingState:
    """``run_sft``'s resume file: written after each epoch (temporary file, then renamed, so a
    kill leaves the previous epoch's), read back by the next call with the same settings."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self.started = time.perf_counter()
        self.seconds_before = 0.0

    def restore(self, loop: _SFTEpochs) -> dict[str, Any] | None:
        """Load the file into ``loop`` (None when there is none): the finished epochs' records
        and the seconds they took."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)  # never runs pickled code
            recorded = saved["settings"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ValueError(
                f"the SFT resume file {self.path} cannot be read ({type(exc).__name__}: {exc}); "
                "delete it to train from the start"
            ) from exc
        changed = sorted(k for k in self.settings if recorded.get(k) != self.settings[k])
        if changed:
            diffs = ", ".join(f"{k} {recorded.get(k)!r} -> {self.settings[k]!r}" for k in changed)
            raise ValueError(
                f"the SFT resume file {self.path} was written with other settings ({diffs}); "
                "use the settings it was started with, or delete it to train from the start"
            )
        loop.load_state_dict(saved["loop"])
        self.seconds_before = float(saved["seconds"])
        return {"history": list(saved["history"]), "seconds": self.seconds_before}

    def save(self, loop: _SFTEpochs, history: list[dict[str, Any]]) -> None:
        payload = {"settings": self.settings, "history": history, "loop": loop.state_dict(),
                   "seconds": self.seconds_before + time.perf_counter() - self.started}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)


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
        self.torch_rng: tuple[torch.Tensor, torch.Tensor | None] | None = None  # set by a resume
        self._cuda: list[int] = []

    def _weights(self) -> dict[str, torch.Tensor]:
        """What training changes: the trainable parameters and every buffer (LoRA: the adapters
        only, so a 7B base is not copied each epoch)."""
        params = {n: p for n, p in self.policy.named_parameters() if p.requires_grad}
        return {**params, **{f"buffer:{n}": b for n, b in self.policy.named_buffers()}}

    def state_dict(self) -> dict[str, Any]:
        cuda_rng = torch.cuda.get_rng_state(self._cuda[0]) if self._cuda else None
        return {
            "weights": {n: t.detach().cpu().clone() for n, t in self._weights().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "augment_rng": self.augment_rng.bit_generator.state,
            "torch_rng": (torch.get_rng_state(), cuda_rng),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s epoch: weights, AdamW, schedule and RNGs."""
        weights = self._weights()
        if set(weights) != set(state["weights"]):
            raise ValueError(
                "the SFT resume file holds the weights of another model (the trainable "
                "parameters differ); delete it to train from the start"
            )
        with torch.no_grad():
            for name, tensor in weights.items():
                tensor.copy_(state["weights"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if (self.scheduler is None) != (state["scheduler"] is None):
            raise ValueError("the SFT resume file was written with another lr_schedule")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.augment_rng.bit_generator.state = state["augment_rng"]
        self.torch_rng = state["torch_rng"]

    def anneal(self, total_steps: int) -> None:
        """Cosine-anneal the learning rate to 0 over ``total_steps`` optimizer steps."""
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)

    def train_epochs(
        self,
        epochs: int,
        seed: int,
        bar: tqdm,
        on_epoch: Callable[[dict[str, Any]], None] | None,
        done: Sequence[dict[str, Any]] = (),
        on_state: Callable[[_SFTEpochs, list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """The records of epochs ``len(done) + 1 .. epochs``; dropout draws from ``seed`` on a
        forked torch RNG (or from the restored state after ``load_state_dict``), and the policy
        ends in eval mode (the progress bar closed) however training ends. ``on_state`` gets the
        loop and every record so far after each epoch, before ``on_epoch``."""
        device = next(self.policy.parameters()).device
        cuda = [device.index or 0] if device.type == "cuda" else []
        self._cuda = cuda
        history: list[dict[str, Any]] = []
        try:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                if self.torch_rng is not None:
                    torch.set_rng_state(self.torch_rng[0])
                    if cuda:
                        torch.cuda.set_rng_state(self.torch_rng[1], cuda[0])
                self.policy.train()
                for epoch in range(len(done) + 1, epochs + 1):
                    record = self.train_epoch(epoch, bar)
                    history.append(record)
                    if on_state is not None:
                        on_state(self, [*done, *history])
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
