"""Shared fixtures: a tiny training configuration that runs in seconds on a CPU."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_OVERRIDES = {
    "num_updates": 2,
    "eval_interval": 1,
    "save_interval": 1,
    "num_eval_episodes": 2,
    "rollout": {
        "num_parallel_envs": 2,
        "num_rollouts_per_update": 2,
        "max_steps": 6,
        "image_size": 32,
    },
    "model": {"image_size": 32, "num_layers": 1, "hidden_size": 32, "intermediate_size": 64,
              "vision_hidden_size": 32, "vision_intermediate_size": 64, "vision_layers": 1},
    "ppo": {"minibatch_size": 6, "micro_batch_size": 3, "num_epochs": 2, "group_size": 2},
    "sft": {"num_demos": 0},
}


@pytest.fixture
def tiny_config(tmp_path):
    from vla_rl_lib.config import apply_overrides, load_template

    return apply_overrides(
        load_template("fast"),
        {**TINY_OVERRIDES, "output_dir": str(tmp_path / "outputs"), "experiment_name": "tiny"},
    )
