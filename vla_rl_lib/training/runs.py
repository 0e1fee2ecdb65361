"""Run folders: every training run writes into a folder of its own, so runs never collide.

Layout under ``<output_dir>/<experiment_name>/``::

    20261130-114502/                    one run, named by its local start time
    20261130-114502-2/                  a second run started in the same second: the latest
    checkpoint_best -> 20261130-114502-2/checkpoint_best       the seed's documented paths,
    checkpoint_latest -> 20261130-114502-2/checkpoint_latest   for the latest run
    sft/                                written by ``python -m vla_rl_lib sft`` and 01_setup;
                                        ``train`` starts from it when it exists

There is deliberately no ``latest -> <run>`` folder link: TensorBoard follows links, so
``tensorboard --logdir outputs/<experiment>`` would show the latest run twice. The
checkpoint links hold no event files. Links are a convenience: every lookup here works
from the folder names alone (on a file system without symbolic links they are skipped).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from vla_rl_lib.training import checkpoint as ckpt

RUN_NAME = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")
CHECKPOINT_LINKS = ("checkpoint_best", "checkpoint_latest")
SHARED_SFT_DIRNAME = "sft"


def _order(path: Path) -> tuple[str, int]:
    match = RUN_NAME.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 1)


def run_folders(experiment_dir: str | os.PathLike[str]) -> list[Path]:
    """The run folders of an experiment, oldest first."""
    root = Path(experiment_dir)
    if not root.is_dir():
        return []
    runs = [
        p for p in root.iterdir() if RUN_NAME.match(p.name) and p.is_dir() and not p.is_symlink()
    ]
    return sorted(runs, key=_order)


def create_run_dir(
    experiment_dir: str | os.PathLike[str], clock: Callable[[], float] = time.time
) -> Path:
    """Make a new, empty run folder named by the start time; link the seed's paths to it.

    Two runs started in the same second get ``-2``, ``-3``, ...: ``mkdir`` without
    ``exist_ok`` decides, so concurrent processes never share a folder.
    """
    root = Path(experiment_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    suffix = 1
    while True:
        run_dir = root / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            suffix += 1
    link_checkpoints(root, run_dir)
    return run_dir


def _symlink(target: str, link: Path) -> None:
    """Create or atomically replace the symbolic link ``link -> target``."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def link_checkpoints(experiment_dir: Path, run_dir: Path) -> None:
    """Point the seed's checkpoint paths at ``run_dir``'s (never over a real folder)."""
    for name in CHECKPOINT_LINKS:
        link = experiment_dir / name
        if link.exists() and not link.is_symlink():
            continue  # an experiment folder from before run folders: leave its checkpoint be
        try:
            _symlink(f"{run_dir.name}/{name}", link)
        except OSError:
            return  # no symbolic links here (some Windows/FAT setups): lookups go by name


def latest_run(experiment_dir: str | os.PathLike[str]) -> Path | None:
    """The run started last (the newest run folder), or None."""
    runs = run_folders(experiment_dir)
    return runs[-1] if runs else None


def newest_resumable(experiment_dir: str | os.PathLike[str]) -> Path | None:
    """``checkpoint_latest`` of the newest run that has one (a crash mid-swap is repaired).

    An experiment folder from before run folders existed (``checkpoint_latest`` directly
    inside it) counts as one run.
    """
    root = Path(experiment_dir)
    for run_dir in reversed(run_folders(root)):
        found = ckpt.recover_checkpoint(run_dir / "checkpoint_latest")
        if found is not None:
            return found
    flat = root / "checkpoint_latest"
    if flat.is_dir() and not flat.is_symlink():
        return flat
    return None


def checkpoint_update(path: Path) -> int | None:
    """The update a checkpoint was taken at, or None when its trainer_state.json is unreadable."""
    try:
        return int(json.loads((path / ckpt.TRAINER_STATE_FILE).read_text())["update"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shared_sft_dir(experiment_dir: str | os.PathLike[str]) -> Path | None:
    """The experiment's SFT result (``sft`` command, 01_setup), when one was written."""
    path = Path(experiment_dir) / SHARED_SFT_DIRNAME
    return path if (path / "policy_config.json").is_file() else None


# What shapes an SFT result: a shared one is reused only when all of these match.
SFT_RECIPE_KEYS = (
    "seed", "pretrained_checkpoint", "language_instruction", "sft", "model", "lora",
    "rollout.simulator", "rollout.env_id", "rollout.camera", "rollout.image_size",
    "rollout.control_mode", "rollout.max_steps",
)


def sft_recipe_difference(sft_dir: Path, config: object) -> str | None:
    """The first setting in which ``config`` differs from the one ``sft_dir`` was trained
    with (its ``config.yaml``), as ``"key: saved -> now"``; None when they agree."""
    from vla_rl_lib.config import config_to_dict, load_config

    saved_file = Path(sft_dir) / ckpt.CONFIG_FILE
    if not saved_file.is_file():
        return f"it has no {ckpt.CONFIG_FILE} recording its settings"
    saved, now = config_to_dict(load_config(saved_file)), config_to_dict(config)
    for key in SFT_RECIPE_KEYS:
        a, b = saved, now
        for part in key.split("."):
            a, b = a.get(part), b.get(part)
        if a != b:
            return f"{key} was {a!r} there, {b!r} now"
    return None
