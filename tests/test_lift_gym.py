"""gymnasium.make("lift/Lift-CRANE-X7-v0") and "lift/PickPlace-CRANE-X7-v0" pass gymnasium's env checker."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lift


@pytest.mark.parametrize("obs_mode", ["rgb", "state"])
@pytest.mark.parametrize("gym_id", [lift.GYM_ID, lift.PICKPLACE_GYM_ID])
def test_check_env(gym_id: str, obs_mode: str) -> None:
    env = gymnasium.make(gym_id, obs_mode=obs_mode, image_size=32, split="test")
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_pickplace_state_and_instruction_in_info() -> None:
    env = gymnasium.make(lift.PICKPLACE_GYM_ID, obs_mode="state", split="ood_instruction")
    obs, info = env.reset(seed=3)
    assert obs["state"].shape == env.observation_space["state"].shape == (31,)
    assert info["instruction"].startswith(("place the", "set the", "transfer the"))
    _, _, _, _, step_info = env.step(np.zeros(8, dtype=np.float32))
    assert step_info["instruction"] == info["instruction"]
    assert step_info["cube_pos"].shape == (2, 3) and step_info["plate_pos"].shape == (2, 3)
    assert {"named_cube", "named_plate", "gripper_pos"} <= set(step_info)
    env.close()


def test_spaces_step_and_render() -> None:
    env = gymnasium.make(lift.GYM_ID, image_size=(24, 32), render_mode="rgb_array")
    assert env.action_space.shape == (8,)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (24, 32, 3) and obs["qpos"].shape == (9,)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and not terminated and not truncated
    assert set(info) >= {"success", "is_grasped", "cube_height", "gripper_to_cube_dist"}
    assert info["instruction"] == lift.INSTRUCTION
    assert env.render().ndim == 3
    with pytest.raises(ValueError, match=r"\(8,\)"):
        env.step(np.zeros(7))
    env.close()


def test_seed_stream_option() -> None:
    env = gymnasium.make(lift.GYM_ID, obs_mode="state")
    train, _ = env.reset(seed=0)
    held_out, _ = env.reset(seed=0, options={"seed_stream": 1})
    assert not np.allclose(train["qpos"], held_out["qpos"])
