"""benchmarks/failure_phases.py: the per-episode tracking and the phase shares it reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "failure_phases", Path(__file__).resolve().parent.parent / "benchmarks" / "failure_phases.py"
)
fp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fp)


def test_phase_shares_count_episodes_past_each_threshold() -> None:
    far = {"reach": 0.20, "other": 0.05, "grasp": 0.0, "lift": 0.02, "near_target": 0.15, "success": 0.0}
    lifted = {"reach": 0.04, "other": 0.12, "grasp": 1.0, "lift": 0.09, "near_target": 0.08, "success": 0.0}
    placed = {**lifted, "near_target": 0.01, "success": 1.0}
    rates = fp.phase_rates([far, lifted, placed, placed])
    assert rates["reach"] == rates["grasp"] == rates["lift"] == 0.75
    assert rates["near_target"] == rates["success"] == 0.5
    assert rates["wrong_cube"] == 0.25  # the far episode came closer to the other cube
    assert rates["median_reach_m"] == pytest.approx(0.04)


def test_the_expert_passes_every_phase_and_a_policy_episode_is_tracked() -> None:
    from lift import make_env
    from lift.expert import ScriptedExpert

    env = make_env("mujoco", "PickPlace-CRANE-X7", split="val", num_envs=1, image_size=32,
                   max_episode_steps=100, auto_reset=False)
    expert = ScriptedExpert(env)
    track = fp.play(env, lambda _: expert.act(), seed=1_000_000, max_steps=100)
    assert all(fp.phase_rates([track])[p] == 1.0 for p in fp.PHASES), track
    still = fp.play(env, lambda _: np.zeros((1, 8), dtype=np.float32), seed=1_000_000, max_steps=5)
    env.close()
    assert still["grasp"] == 0.0 and still["success"] == 0.0
    assert 0.06 < still["reach"] < 1.0 and still["other"] < 1.0  # both cubes measured, neither reached
