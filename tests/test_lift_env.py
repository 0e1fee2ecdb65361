"""The batched MuJoCo PickPlace-CRANE-X7 env: observations, seeding, resets, termination."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

import lift
from lift import task
from lift.backends.mujoco_env import MujocoPickPlace


def make(**overrides: object) -> MujocoPickPlace:
    return lift.make_env("mujoco", "Lift-CRANE-X7", **overrides)


@pytest.fixture(scope="module")
def rgb_env() -> MujocoPickPlace:
    env = make(num_envs=2, image_size=(64, 64))
    yield env
    env.close()


def blue_pixels(image: np.ndarray) -> int:
    r, g, b = (image[..., c].astype(int) for c in range(3))
    return int(((b > 150) & (r < 80) & (g < 120)).sum())


def test_observation_shapes_and_image(rgb_env: MujocoPickPlace) -> None:
    obs = rgb_env.reset(seed=0)
    assert obs.image.shape == (2, 64, 64, 3) and obs.image.dtype == np.uint8
    assert obs.qpos.shape == (2, 9) and obs.qpos.dtype == np.float32
    assert obs.qvel.shape == (2, 9) and obs.qvel.dtype == np.float32
    assert obs.image.std() > 10  # not blank
    assert blue_pixels(obs.image[0]) > 10  # the cube is in view
    assert rgb_env.action_dim == 8 and rgb_env.instruction == "pick up the blue cube"


def test_render_cameras_and_sizes(rgb_env: MujocoPickPlace) -> None:
    rgb_env.reset(seed=0)
    third = rgb_env.render("third_person", env_ids=[1], size=(48, 80))
    assert third.shape == (1, 48, 80, 3)
    hand = rgb_env.render("hand_camera")
    assert hand.shape == (2, 64, 64, 3) and hand.std() > 5
    with pytest.raises(ValueError, match="third_person"):
        rgb_env.render("nope")


def test_rest_pose_with_noise() -> None:
    env = make(num_envs=16, obs_mode="state")
    obs = env.reset(seed=3)
    offsets = obs.qpos[:, :7] - task.REST_ARM_QPOS
    assert np.abs(offsets).max() < 0.1 and offsets.std() > 0.01
    np.testing.assert_allclose(obs.qpos[:, 7:], 0.0)
    cube = np.array([d.xpos[env.cube_body] for d in env.data])
    assert np.all(np.abs(cube[:, :2] - [0.15, 0.02]) <= 0.01 + 1e-9)


def test_same_seed_identical_observations() -> None:
    a, b = make(num_envs=2, image_size=32), make(num_envs=2, image_size=32)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 2, 8))
    obs_a, obs_b = a.reset(seed=7), b.reset(seed=7)
    np.testing.assert_array_equal(obs_a.image, obs_b.image)
    np.testing.assert_array_equal(obs_a.qpos, obs_b.qpos)
    for action in actions:
        ra, rb = a.step(action), b.step(action)
        np.testing.assert_array_equal(ra.observation.image, rb.observation.image)
        np.testing.assert_array_equal(ra.observation.qvel, rb.observation.qvel)


def test_episodes_and_streams_differ() -> None:
    env = make(num_envs=3, obs_mode="state")
    first = env.reset(seed=0).qpos
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[1], first[2])
    second = env.reset().qpos  # continues the counter: new starts
    assert not np.allclose(first, second)
    evaluation = env.reset(seed=0, seed_stream=1).qpos
    assert not np.allclose(first, evaluation)
    np.testing.assert_array_equal(env.reset(seed=0, seed_stream=0).qpos, first)


def test_partial_reset_takes_next_episode_in_order() -> None:
    env = make(num_envs=2, obs_mode="state")
    env.reset(seed=11)
    env.step(np.full((2, 8), 0.5))
    before = env.step(np.full((2, 8), 0.5)).observation
    after = env.reset(env_ids=[1])
    np.testing.assert_array_equal(after.qpos[0], before.qpos[0])
    assert env.elapsed_steps.tolist() == [2, 0]
    reference = make(num_envs=3, obs_mode="state").reset(seed=11)
    np.testing.assert_array_equal(after.qpos[1], reference.qpos[2])  # episode index 2


def test_seed_state_resumes_the_sequence() -> None:
    env = make(num_envs=2, obs_mode="state")
    env.reset(seed=5, seed_stream=1)
    env.reset(env_ids=[0])
    state = env.get_seed_state()
    expected = env.reset().qpos
    resumed = make(num_envs=2, obs_mode="state")
    resumed.set_seed_state(state)
    np.testing.assert_array_equal(resumed.reset().qpos, expected)
    with pytest.raises(ValueError, match="episode_counter"):
        resumed.set_seed_state({"base_seed": 0, "seed_stream": 0})


def hold_cube_in_open_gripper(env: MujocoPickPlace, env_id: int) -> None:
    """Gravity off, cube centre 0.045 m along the gripper axis (between the open fingers)."""
    env.model.opt.gravity[:] = 0
    d = env.data[env_id]
    axis = d.xmat[env.gripper_body].reshape(3, 3)[:, 2]
    env.set_cube_pose(env_id, d.xpos[env.gripper_body] + 0.045 * axis)


def test_success_detection_terminates() -> None:
    env = make(num_envs=2, obs_mode="state", auto_reset=False)
    env.reset(seed=0)
    open_gripper = np.zeros((2, 8))
    open_gripper[:, 7] = -1
    env.step(open_gripper)  # open the fingers first so the cube fits between them
    hold_cube_in_open_gripper(env, 0)
    result = env.step(np.where(np.arange(8) == 7, -1.0, 0.0)[None].repeat(2, 0))
    assert result.info["success"].tolist() == [True, False]
    assert result.terminated.tolist() == [True, False]
    assert result.truncated.tolist() == [False, False]
    assert result.reward.tolist() == [1.0, 0.0]
    assert result.info["cube_height"][0] >= 0.14
    assert result.info["gripper_to_cube_dist"][0] <= 0.05
    assert result.final_observation is None  # auto_reset off


def test_dense_reward_mode() -> None:
    env = make(num_envs=1, obs_mode="state", reward_mode="dense")
    env.reset(seed=0)
    reward = env.step(np.zeros((1, 8))).reward
    assert 0.0 < reward[0] < 2.0


def test_truncation_and_auto_reset() -> None:
    env = make(num_envs=2, image_size=16, max_episode_steps=3)
    env.reset(seed=0)
    for _ in range(2):
        result = env.step(np.zeros((2, 8)))
        assert not result.done.any() and result.final_observation is None
    result = env.step(np.full((2, 8), 0.3))
    assert result.truncated.all() and not result.terminated.any()
    assert result.info["elapsed_steps"].tolist() == [3, 3]
    final, fresh = result.final_observation, result.observation
    assert final is not None and final.image.shape == fresh.image.shape
    assert not np.allclose(final.qpos, fresh.qpos)
    np.testing.assert_allclose(fresh.qpos[:, 7:], 0.0)  # new episodes start at rest
    assert env.elapsed_steps.tolist() == [0, 0]


def test_bad_actions() -> None:
    env = make(num_envs=2, obs_mode="state")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        env.step(np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        env.step(np.zeros(8))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([[0.0] * 8, [np.nan] + [0.0] * 7]))


def test_out_of_range_actions_are_clipped() -> None:
    a, b = make(obs_mode="state"), make(obs_mode="state")
    a.reset(seed=2)
    b.reset(seed=2)
    big = np.array([[5.0, -3, 2, 0, 0, 0, 0, 9]])
    np.testing.assert_array_equal(
        a.step(big).observation.qpos, b.step(np.clip(big, -1, 1)).observation.qpos
    )


def test_pd_joint_pos_reaches_absolute_targets() -> None:
    env = make(obs_mode="state", control_mode="pd_joint_pos")
    env.reset(seed=0)
    targets = task.REST_ARM_QPOS + np.array([0.2, -0.1, 0.1, 0.2, -0.1, 0.1, -0.2])
    action = task.action_from_joint_targets(
        targets[None], np.array([-1.0]), np.zeros((1, 7)), "pd_joint_pos"
    )
    for _ in range(15):
        obs = env.step(action).observation
    np.testing.assert_allclose(obs.qpos[0, :7], targets, atol=0.02)
    assert obs.qpos[0, 7] == pytest.approx(task.GRIPPER_OPEN, abs=0.03)


def test_control_rate_uses_substeps() -> None:
    env = make(obs_mode="state", control_freq=20)
    assert env.substeps * env.model.opt.timestep == pytest.approx(1 / 20)
    odd = make(obs_mode="state", control_freq=30)
    assert odd.substeps * odd.model.opt.timestep == pytest.approx(1 / 30)
    assert odd.model.opt.timestep <= 0.002


def test_state_mode_skips_rendering() -> None:
    env = make(num_envs=2, obs_mode="state")
    assert env.reset(seed=0).image is None
    assert env.step(np.zeros((2, 8))).observation.image is None
    assert env._renderers == {}


def test_gpu_backend_rejected() -> None:
    with pytest.raises(ValueError, match="CPU"):
        make(backend="gpu")


def test_model_is_mujoco() -> None:
    env = make(obs_mode="state")
    assert isinstance(env.model, mujoco.MjModel) and len(env.data) == 1


def test_missing_gl_names_the_system_package() -> None:
    import ctypes.util
    import os
    import subprocess
    import sys

    if ctypes.util.find_library("OSMesa"):
        pytest.skip("OSMesa is installed here, so MUJOCO_GL=osmesa works")
    code = "import lift; lift.make_env('mujoco', 'Lift-CRANE-X7').reset()"
    env = {**os.environ, "MUJOCO_GL": "osmesa"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "libosmesa6" in done.stderr and "MUJOCO_GL=disable" in done.stderr


@pytest.mark.parametrize("blow_up", ["huge_velocity", "huge_force"])
def test_mujoco_resetting_an_unstable_state_is_reported(blow_up: str) -> None:
    """MuJoCo resets an MjData whose velocity or acceleration goes huge and only counts a
    warning: the state stays finite, so a NaN check cannot see the jump. step() flags it."""
    env = lift.make_env("mujoco", lift.ENV_ID, num_envs=2, obs_mode="state", auto_reset=False)
    env.reset(seed=0)
    calm = env.step(np.zeros((2, task.ACTION_DIM)))
    assert calm.info["sim_unstable"].tolist() == [False, False]
    before = calm.observation.qpos[1].copy()
    if blow_up == "huge_velocity":
        env.data[1].qvel[:] = 1e11
    else:
        env.data[1].qfrc_applied[:] = 1e12
    result = env.step(np.zeros((2, task.ACTION_DIM)))
    assert result.info["sim_unstable"].tolist() == [False, True]
    assert np.isfinite(result.observation.qpos).all()  # invisible to a NaN check...
    assert np.abs(result.observation.qpos[1] - before).max() > 0.1  # ...yet the arm jumped
    after = env.step(np.zeros((2, task.ACTION_DIM)))
    assert after.info["sim_unstable"].tolist() == [False, False]  # counted once, per step
