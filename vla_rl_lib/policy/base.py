"""The one interface every policy satisfies (tiny local VLA and OpenVLA alike).

Nothing above this module knows which model it has: rollouts call ``act``,
PPO calls ``evaluate_actions``, SFT calls ``sft_loss``, checkpoints go through
``trainable_state_dict`` / ``load_trainable_state_dict``.

Shapes: B = batch, D = action dimensions (8 for CRANE-X7: 7 joint deltas and
the gripper). Images are uint8 (B, H, W, 3). A step's log-probability is the
sum of its D action-token log-probabilities, each taken over the 256
action-bin logits only (the rest of the vocabulary masked), after dividing
the logits by ``temperature``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class ActOutput:
    actions: np.ndarray  # (B, D) float32, in the environment's action space
    token_ids: torch.Tensor  # (B, D) int64, vocabulary ids of the action bins
    log_probs: torch.Tensor  # (B,) float32, no grad
    values: torch.Tensor  # (B,) float32, no grad


@dataclass
class EvaluateOutput:
    log_probs: torch.Tensor  # (B,) with grad
    entropy: torch.Tensor  # (B,) with grad; sum over the D dims
    values: torch.Tensor  # (B,) with grad


class VLAPolicy(nn.Module, abc.ABC):
    """A VLA with a value head. Subclasses: TinyVLA-backed and OpenVLA-backed."""

    action_dim: int

    @abc.abstractmethod
    def act(
        self,
        images: np.ndarray,
        instructions: list[str],
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> ActOutput:
        """Sample (or take the argmax of) one action per image, without grad."""

    @abc.abstractmethod
    def evaluate_actions(
        self,
        images: np.ndarray | torch.Tensor,
        instructions: list[str],
        token_ids: torch.Tensor,
        temperature: float = 1.0,
    ) -> EvaluateOutput:
        """Teacher-forced log-probs/entropy/values of given tokens, with grad."""

    @abc.abstractmethod
    def sft_loss(
        self, images: np.ndarray | torch.Tensor, instructions: list[str], token_ids: torch.Tensor
    ) -> torch.Tensor:
        """Mean action-token cross-entropy (behaviour cloning), with grad."""

    @abc.abstractmethod
    def actions_to_tokens(self, actions: np.ndarray) -> torch.Tensor:
        """Environment actions (B, D) -> action token ids (B, D) (normalize + bin)."""

    @abc.abstractmethod
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA or full weights, value head); never a frozen base."""

    @abc.abstractmethod
    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``trainable_state_dict``; raises on missing/unexpected keys."""

    @abc.abstractmethod
    def optimizer_param_groups(self, learning_rate: float, value_learning_rate: float) -> list[dict[str, Any]]:
        """Param groups for torch.optim: policy weights and value head apart."""

    @abc.abstractmethod
    def save_pretrained(self, path: str) -> None:
        """A directory ``from_checkpoint`` can load (adapter or merged weights, tokenizer, stats)."""
