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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.base import VLAPolicy
from vla_rl_lib.sft.demos import STATISTICS_KEY, DemoDataset
from vla_rl_lib.utils import write_json_atomic

SFT_METRICS_FILE = "sft_metrics.json"


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
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Behaviour-clone ``policy`` on ``dataset`` and save it to ``out_dir``.

    ``statistics`` (default: the dataset's own) become the policy's action
    normalization before the actions are tokenized, and are saved with the
    checkpoint as ``dataset_statistics.json`` under ``unnorm_key``. Shuffling and any dropout draw
    from ``seed`` (the global torch RNG is left as it was). AdamW, gradients
    clipped to ``max_grad_norm``. ``on_epoch`` receives each epoch's record
    (``epoch``, ``loss``, ``grad_norm``, ``seconds``, ``samples_per_s``).

    ``out_dir`` is written by ``policy.save_pretrained`` (so ``train
    --sft-checkpoint out_dir`` loads it through ``from_checkpoint``) plus
    ``sft_metrics.json`` with the per-epoch records. Returns that summary.
    The policy is left in eval mode.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} is invalid: train for at least 1 epoch")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: use at least 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate} is invalid: it must be > 0")
    if len(dataset) == 0:
        raise ValueError(
            f"the dataset at {dataset.path} holds no steps; collect demonstrations first"
        )
    if dataset.actions.shape[1] != policy.action_dim:
        raise ValueError(
            f"the dataset's actions have {dataset.actions.shape[1]} dims but the policy acts in "
            f"{policy.action_dim}"
        )
    out_dir = Path(out_dir)
    statistics = dataset.statistics if statistics is None else statistics
    set_action_statistics(policy, statistics, unnorm_key)
    token_ids = policy.actions_to_tokens(dataset.actions)

    optimizer = torch.optim.AdamW(policy.optimizer_param_groups(learning_rate, learning_rate))
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(seed)
    batches_per_epoch = math.ceil(len(dataset) / batch_size)
    history: list[dict[str, Any]] = []
    bar = tqdm(total=epochs * batches_per_epoch, desc="SFT", unit="batch", disable=not progress)
    started = time.perf_counter()
    device = next(policy.parameters()).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            policy.train()
            for epoch in range(1, epochs + 1):
                epoch_start = time.perf_counter()
                loss_sum = grad_norm_sum = 0.0
                for batch in sft_batches(len(dataset), batch_size, generator):
                    loss = policy.sft_loss(
                        dataset.images[batch],
                        [dataset.instructions[i] for i in batch],
                        token_ids[torch.from_numpy(batch).to(token_ids.device)],
                    )
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"SFT loss became {loss.item()} at epoch {epoch}; lower "
                            f"learning_rate (now {learning_rate}) or check the dataset's actions"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                    optimizer.step()
                    loss_sum += loss.item() * len(batch)
                    grad_norm_sum += float(grad_norm)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
                seconds = time.perf_counter() - epoch_start
                record = {
                    "epoch": epoch,
                    "loss": loss_sum / len(dataset),
                    "grad_norm": grad_norm_sum / batches_per_epoch,
                    "seconds": seconds,
                    "samples_per_s": len(dataset) / seconds,
                }
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
    finally:
        bar.close()
        policy.eval()

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
        "seed": seed,
        "unnorm_key": unnorm_key,
    }
    write_json_atomic(out_dir / SFT_METRICS_FILE, summary)
    return summary
