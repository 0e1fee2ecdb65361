"""Actions <-> vocabulary ids, and the dataset statistics that normalize them.

This follows OpenVLA (``prismatic/vla/action_tokenizer.py``) exactly, so a
checkpoint trained here and one downloaded from OpenVLA read their action
tokens the same way:

- 256 uniform bin edges over [-1, 1]: ``bins = np.linspace(-1, 1, 256)``;
  decoding uses the 255 midpoints ``bin_centers``.
- ``token_id = vocab_end - np.digitize(clip(a, -1, 1), bins)``, so -1 maps to
  ``vocab_end - 1`` and +1 to ``vocab_end - 256``: the action ids are the last
  256 ids of the base vocabulary, ``[vocab_end - 256, vocab_end)``.
- ``action = bin_centers[clip(vocab_end - token_id - 1, 0, 254)]``.

Environment actions are first normalized with the dataset's 1st/99th
percentiles (``q01``/``q99``), OpenVLA's ``BOUNDS_Q99``:
``2 * (a - q01) / (q99 - q01 + 1e-8) - 1`` on the dimensions whose ``mask``
is True; masked-out dimensions (typically the gripper, already in [-1, 1]
or [0, 1]) pass through untouched. The statistics live in OpenVLA's
``dataset_statistics.json`` layout: ``{unnorm_key: {"action": {"q01": [...],
"q99": [...], "mask": [...], "mean": ..., "std": ..., "min": ..., "max": ...}}}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vla_rl_lib.utils import write_json_atomic

N_ACTION_BINS = 256
DATASET_STATISTICS_FILE = "dataset_statistics.json"
# OpenVLA's BOUNDS_Q99 normalization adds this to the denominator so that a
# constant dimension (q99 == q01) does not divide by zero.
NORMALIZATION_EPSILON = 1e-8


class ActionTokenizer:
    """OpenVLA's 256-bin action discretization, for any number of action dimensions."""

    def __init__(self, vocab_end: int, n_bins: int = N_ACTION_BINS) -> None:
        if vocab_end < n_bins:
            raise ValueError(
                f"vocab_end={vocab_end} is smaller than the {n_bins} action bins it must hold; "
                "pass the size of the base vocabulary (OpenVLA: 32000)."
            )
        self.vocab_end = int(vocab_end)
        self.n_bins = int(n_bins)
        self.bins = np.linspace(-1.0, 1.0, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def action_token_begin(self) -> int:
        """First action id; the action ids are ``[action_token_begin, vocab_end)``."""
        return self.vocab_end - self.n_bins

    def encode(self, normalized_actions: np.ndarray) -> np.ndarray:
        """Normalized actions in [-1, 1] (any shape) -> int64 token ids of the same shape.

        Values outside [-1, 1] are clipped (as OpenVLA does); NaN is an error.
        """
        actions = np.asarray(normalized_actions, dtype=np.float64)
        if np.isnan(actions).any():
            bad = np.argwhere(np.isnan(actions))[:5].tolist()
            raise ValueError(
                f"cannot tokenize NaN actions (first NaN at indices {bad}); "
                "check the policy/environment output or the normalization statistics."
            )
        clipped = np.clip(actions, -1.0, 1.0)
        return (self.vocab_end - np.digitize(clipped, self.bins)).astype(np.int64)

    def decode(self, token_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Token ids -> normalized actions (bin centres), float32, same shape."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.detach().cpu().numpy()
        ids = np.asarray(token_ids, dtype=np.int64)
        outside = (ids < self.action_token_begin) | (ids >= self.vocab_end)
        if outside.any():
            raise ValueError(
                f"token ids {np.unique(ids[outside])[:5].tolist()} are not action ids; "
                f"action ids are [{self.action_token_begin}, {self.vocab_end})."
            )
        index = np.clip(self.vocab_end - ids - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[index].astype(np.float32)

    def ids_to_bins(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids -> positions 0..255 in the action-logit slice."""
        return token_ids - self.action_token_begin

    def bins_to_ids(self, bins: torch.Tensor) -> torch.Tensor:
        """Positions 0..255 in the action-logit slice -> vocabulary ids."""
        return bins + self.action_token_begin


@dataclass
class ActionStatistics:
    """Per-dimension normalization statistics of one dataset (OpenVLA's ``BOUNDS_Q99``)."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray  # bool; False dims are not normalized
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.q01 = np.asarray(self.q01, dtype=np.float64)
        self.q99 = np.asarray(self.q99, dtype=np.float64)
        self.mask = np.asarray(self.mask, dtype=bool)
        for name in ("mean", "std", "min", "max"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.float64))
        shapes = {
            name: getattr(self, name).shape
            for name in ("q01", "q99", "mask", "mean", "std", "min", "max")
            if getattr(self, name) is not None
        }
        if len(set(shapes.values())) != 1 or self.q01.ndim != 1:
            raise ValueError(
                f"action statistics must be 1-D and of one length, got shapes {shapes}"
            )
        inverted = self.mask & (self.q99 < self.q01)
        if inverted.any():
            raise ValueError(
                f"q99 < q01 in action dims {np.flatnonzero(inverted).tolist()}; the statistics are corrupt."
            )

    @property
    def action_dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_actions(cls, actions: np.ndarray, mask: np.ndarray | None = None) -> ActionStatistics:
        """Statistics of a (N, D) array of demonstration actions; ``mask`` defaults to all True."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(
                f"expected a non-empty (N, D) array of actions, got shape {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise ValueError("demonstration actions contain NaN or inf; clean the dataset first")
        dim = actions.shape[1]
        return cls(
            q01=np.quantile(actions, 0.01, axis=0),
            q99=np.quantile(actions, 0.99, axis=0),
            mask=np.ones(dim, dtype=bool) if mask is None else mask,
            mean=actions.mean(axis=0),
            std=actions.std(axis=0),
            min=actions.min(axis=0),
            max=actions.max(axis=0),
        )

    def _check_dim(self, actions: np.ndarray) -> None:
        if actions.shape[-1] != self.action_dim:
            raise ValueError(
                f"actions have {actions.shape[-1]} dims but the statistics describe {self.action_dim}"
            )

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Environment actions -> roughly [-1, 1] on masked dims (not clipped; the tokenizer clips)."""
        actions = np.asarray(actions, dtype=np.float64)
        self._check_dim(actions)
        scaled = 2.0 * (actions - self.q01) / (self.q99 - self.q01 + NORMALIZATION_EPSILON) - 1.0
        return np.where(self.mask, scaled, actions)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """Exact inverse of ``normalize``.

        OpenVLA's ``predict_action`` leaves the 1e-8 out of this direction; the two
        differ by less than 1e-8 of the q01..q99 range.
        """
        normalized = np.asarray(normalized, dtype=np.float64)
        self._check_dim(normalized)
        actions = (
            0.5 * (normalized + 1.0) * (self.q99 - self.q01 + NORMALIZATION_EPSILON) + self.q01
        )
        return np.where(self.mask, actions, normalized)

    def to_json_dict(self) -> dict[str, list]:
        out: dict[str, list] = {"q01": self.q01.tolist(), "q99": self.q99.tolist()}
        for name in ("mean", "std", "min", "max"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.tolist()
        out["mask"] = self.mask.tolist()
        return out


def _statistics_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / DATASET_STATISTICS_FILE if path.is_dir() else path


def read_dataset_statistics(path: str | os.PathLike) -> dict[str, dict]:
    """The whole ``dataset_statistics.json`` (a file, or a directory holding one)."""
    file = _statistics_path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"no {DATASET_STATISTICS_FILE} at {file}; SFT writes one next to its checkpoint."
        )
    with open(file) as f:
        return json.load(f)


def load_action_statistics(
    path: str | os.PathLike, unnorm_key: str | None = None
) -> ActionStatistics:
    """Read one dataset's action statistics; ``unnorm_key`` may be omitted when there is one dataset."""
    file = _statistics_path(path)
    everything = read_dataset_statistics(file)
    keys = sorted(everything)
    if unnorm_key is None:
        if len(keys) != 1:
            raise KeyError(
                f"{file} holds statistics for {len(keys)} datasets {keys}; pass unnorm_key= one of them."
            )
        unnorm_key = keys[0]
    if unnorm_key not in everything:
        raise KeyError(f"unnorm_key {unnorm_key!r} is not in {file}; the keys there are {keys}.")
    entry = everything[unnorm_key]
    action = entry.get("action") if isinstance(entry, dict) else None
    if not isinstance(action, dict) or not {"q01", "q99"} <= set(action):
        raise KeyError(
            f"{file}[{unnorm_key!r}] has no 'action' entry with 'q01' and 'q99'; "
            "expected OpenVLA's layout {key: {'action': {'q01': [...], 'q99': [...], 'mask': [...]}}}."
        )
    mask = action.get("mask", [True] * len(action["q01"]))
    return ActionStatistics(
        q01=action["q01"],
        q99=action["q99"],
        mask=mask,
        mean=action.get("mean"),
        std=action.get("std"),
        min=action.get("min"),
        max=action.get("max"),
    )


def write_dataset_statistics(
    path: str | os.PathLike,
    unnorm_key: str,
    statistics: ActionStatistics,
    num_transitions: int | None = None,
    num_trajectories: int | None = None,
) -> Path:
    """Write (or add one key to) ``dataset_statistics.json`` in OpenVLA's layout; returns the file."""
    file = _statistics_path(path)
    everything = read_dataset_statistics(file) if file.is_file() else {}
    entry: dict = {"action": statistics.to_json_dict()}
    if num_transitions is not None:
        entry["num_transitions"] = int(num_transitions)
    if num_trajectories is not None:
        entry["num_trajectories"] = int(num_trajectories)
    everything[unnorm_key] = entry
    write_json_atomic(file, everything)
    return file
