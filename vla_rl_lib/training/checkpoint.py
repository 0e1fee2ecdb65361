"""Training checkpoints: small, atomic, and loadable with ``weights_only=True``.

A checkpoint is a directory::

    config.yaml               the run's full configuration
    policy_state_dict.pt      trainable weights + value head only (never the frozen base)
    optimizer_state_dict.pt   optimizer state
    trainer_state.json        update counter, best eval score, RNG states, base-model path,
                              and the size and SHA-256 of the other three files ("files")

It is written into a sibling temporary directory and renamed into place, so a
crash (even ``kill -9``) leaves either the previous checkpoint or the new one,
never a half-written mix. Replacing an existing checkpoint moves the old one
aside first and deletes it only after the new one is in place;
``recover_checkpoint`` puts it back if the process died in between. Loading
checks each file against the size and SHA-256 recorded when it was saved, so
a file truncated or changed later (a truncated YAML can still parse) is named,
never half-used.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml

from vla_rl_lib.utils import atomic_directory, recover_directory

CONFIG_FILE = "config.yaml"
POLICY_FILE = "policy_state_dict.pt"
OPTIMIZER_FILE = "optimizer_state_dict.pt"
TRAINER_STATE_FILE = "trainer_state.json"
# rollout.collect_ahead: the weights the next update's pending rollout is played with (optional)
BEHAVIOUR_FILE = "behaviour_state_dict.pt"
CHECKPOINT_FILES = (CONFIG_FILE, POLICY_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the file."""


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding NaN or inf."""
    return [
        name
        for name, tensor in state.items()
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all())
    ]


def save_checkpoint(
    path: str | Path,
    *,
    config_yaml: str,
    policy_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    behaviour_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically. Refuses to save non-finite weights. ``behaviour_state``:
    the weights the next rollout is played with, when they are not ``policy_state``
    (``rollout.collect_ahead``)."""
    path = Path(path)
    bad = non_finite_tensors(policy_state)
    if bad:
        raise CheckpointError(
            f"refusing to save checkpoint {path}: non-finite values in {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}"
        )
    try:
        with atomic_directory(path) as tmp:
            (tmp / CONFIG_FILE).write_text(config_yaml)
            torch.save({k: v.detach().cpu() for k, v in policy_state.items()}, tmp / POLICY_FILE)
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
            names = [CONFIG_FILE, POLICY_FILE, OPTIMIZER_FILE]
            if behaviour_state is not None:
                torch.save({k: v.detach().cpu() for k, v in behaviour_state.items()}, tmp / BEHAVIOUR_FILE)
                names.append(BEHAVIOUR_FILE)
            files = {name: file_digest(tmp / name) for name in names}
            (tmp / TRAINER_STATE_FILE).write_text(
                json.dumps({**trainer_state, "files": files}, indent=1, allow_nan=False)
            )
    except OSError as exc:  # disk full, quota, permissions: say so, and that the last one is kept
        raise CheckpointError(
            f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint "
            "is kept: free space (or fix the folder's permissions) and continue with --resume"
        ) from exc
    return path


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as recorded in ``trainer_state.json``."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def recover_checkpoint(path: str | Path) -> Path | None:
    """Return a usable checkpoint directory at ``path``, repairing an interrupted swap.

    Stale temporary directories from a killed writer are removed.
    """
    return recover_directory(path)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load every part of a checkpoint, with an error naming any missing or corrupt file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {path} does not exist; pass a directory written by "
            "`python -m vla_rl_lib train` (e.g. outputs/<experiment>/checkpoint_latest)"
        )
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    try:
        trainer_state = json.loads((path / TRAINER_STATE_FILE).read_text())
        if not isinstance(trainer_state, dict):
            raise ValueError(f"expected a JSON object, got {type(trainer_state).__name__}")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path / TRAINER_STATE_FILE} is corrupt: {exc}") from exc
    recorded = trainer_state.get("files")  # absent in checkpoints from before it was kept
    recorded = recorded if isinstance(recorded, dict) else {}
    if BEHAVIOUR_FILE in recorded and not (path / BEHAVIOUR_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {BEHAVIOUR_FILE}")
    for name in (CONFIG_FILE, POLICY_FILE, OPTIMIZER_FILE, BEHAVIOUR_FILE):
        if name in recorded and file_digest(path / name) != recorded[name]:
            raise CheckpointError(
                f"checkpoint file {path / name} is damaged: its size or SHA-256 differs from the "
                f"one recorded in {TRAINER_STATE_FILE} when it was saved (truncated or changed "
                "since); resume from another checkpoint"
            )
    try:
        config_yaml = (path / CONFIG_FILE).read_text()
        if not isinstance(yaml.safe_load(config_yaml), dict):
            raise ValueError("it does not hold a mapping of config keys")
    except (UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint file {path / CONFIG_FILE} is corrupt ({' '.join(str(exc).split())}); "
            "resume from another checkpoint"
        ) from exc
    out: dict[str, Any] = {"config_yaml": config_yaml, "trainer_state": trainer_state}
    parts = [("policy_state", POLICY_FILE), ("optimizer_state", OPTIMIZER_FILE)]
    if BEHAVIOUR_FILE in recorded:
        parts.append(("behaviour_state", BEHAVIOUR_FILE))
    for key, name in parts:
        try:
            out[key] = torch.load(path / name, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for truncated/corrupt pickles
            raise CheckpointError(
                f"checkpoint file {path / name} is corrupt or truncated ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); resume from another checkpoint"
            ) from exc
    bad = non_finite_tensors(out["policy_state"])
    if bad:
        raise CheckpointError(f"checkpoint file {path / POLICY_FILE} holds non-finite weights: {bad[:5]}")
    return out


def is_finite_number(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
