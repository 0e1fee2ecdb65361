"""The scripted expert picks up the cube."""

from __future__ import annotations

import numpy as np
import pytest

import lift
from lift.expert import ScriptedExpert


def run_expert(num_episodes: int, control_mode: str) -> tuple[float, list[int]]:
    env = lift.make_env(
        "mujoco",
        "Lift-CRANE-X7",
        num_envs=num_episodes,
        obs_mode="state",
        control_mode=control_mode,
        max_episode_steps=100,
        auto_reset=False,
    )
    expert = ScriptedExpert(env)
    env.reset(seed=1234)
    finished = np.zeros(num_episodes, dtype=bool)
    success = np.zeros(num_episodes, dtype=bool)
    lengths = np.zeros(num_episodes, dtype=int)
    while not finished.all():
        result = env.step(expert.act())
        newly = result.done & ~finished
        success[newly] = result.terminated[newly]
        lengths[newly] = result.info["elapsed_steps"][newly]
        finished |= result.done
    return float(success.mean()), lengths.tolist()


@pytest.mark.parametrize("control_mode", ["pd_joint_delta_pos", "pd_joint_pos", "pd_ee_delta_pos"])
def test_expert_succeeds_on_20_seeded_episodes(control_mode: str) -> None:
    rate, lengths = run_expert(20, control_mode)
    assert rate >= 0.95, f"success {rate:.2f}, lengths {lengths}"
    assert max(lengths) <= 80


def test_expert_actions_are_in_range() -> None:
    env = lift.make_env("mujoco", "Lift-CRANE-X7", num_envs=2, obs_mode="state")
    expert = ScriptedExpert(env)
    env.reset(seed=0)
    for _ in range(10):
        action = expert.act()
        assert action.shape == (2, 8) and np.abs(action).max() <= 1.0
        env.step(action)


def test_expert_rejects_other_simulators() -> None:
    with pytest.raises(TypeError, match="MuJoCo"):
        ScriptedExpert(object())
