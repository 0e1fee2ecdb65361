"""Supervised warm start: scripted demonstrations (Parquet) and behaviour cloning."""

from vla_rl_lib.sft.dagger import collect_dagger, concatenate_demonstrations
from vla_rl_lib.sft.demos import (
    DemoDataset,
    DemoDatasetError,
    collect_demonstrations,
    load_demonstrations,
    read_meta,
)
from vla_rl_lib.sft.trainer import run_sft, set_action_statistics

__all__ = [
    "DemoDataset",
    "DemoDatasetError",
    "collect_dagger",
    "collect_demonstrations",
    "concatenate_demonstrations",
    "load_demonstrations",
    "read_meta",
    "run_sft",
    "set_action_statistics",
]
