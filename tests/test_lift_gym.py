"""gymnasium.make("lift/PickPlace-CRANE-X7-v0") passes gymnasium's env checker."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lift


@pytest.mark.parametrize("obs_mode", ["rgb", "state"])
def test_check_env(obs_mode: str) -> None:
    env = gymnasium.make(lift.GYM_ID, obs_mode=obs_mode, image_size=32)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_spaces_step_and_render() -> None:
    env = gymnasium.make(lift.GYM_ID, image_size=(24, 32), render_mode="rgb_array")
    assert env.action_space.shape == (8,)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (24, 32, 3) and obs["qpos"].shape == (9,)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and not terminated and not truncated
    assert set(info) >= {"success", "is_grasped", "cube_height", "gripper_to_cube_dist"}
    assert env.render().ndim == 3
    with pytest.raises(ValueError, match=r"\(8,\)"):
        env.step(np.zeros(7))
    env.close()


def test_seed_stream_option() -> None:
    env = gymnasium.make(lift.GYM_ID, obs_mode="state")
    train, _ = env.reset(seed=0)
    held_out, _ = env.reset(seed=0, options={"seed_stream": 1})
    assert not np.allclose(train["qpos"], held_out["qpos"])
