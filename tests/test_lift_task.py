"""Engine-independent task rules: action mapping, rewards, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from lift import task


def test_gripper_minus_one_opens_plus_one_closes() -> None:
    assert task.gripper_target(-1.0) == pytest.approx(task.GRIPPER_OPEN)
    assert task.gripper_target(1.0) == pytest.approx(task.GRIPPER_CLOSED)
    assert task.GRIPPER_OPEN > task.GRIPPER_CLOSED  # larger finger angle = wider
    commands = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(task.gripper_command(task.gripper_target(commands)), commands)


@pytest.mark.parametrize("mode", ["pd_joint_delta_pos", "pd_joint_pos"])
def test_action_round_trip(mode: str) -> None:
    rng = np.random.default_rng(0)
    previous = task.REST_ARM_QPOS[None] + rng.normal(0, 0.02, (4, 7))
    action = rng.uniform(-1, 1, (4, 8))
    targets = task.joint_targets_from_action(action, previous, mode)
    recovered = task.action_from_joint_targets(targets[:, :7], action[:, 7], previous, mode)
    np.testing.assert_allclose(recovered, action, atol=1e-9)


def test_delta_mode_moves_at_most_01_rad_and_stays_in_range() -> None:
    previous = np.tile(task.ARM_UPPER - 0.05, (1, 1))
    targets = task.joint_targets_from_action(np.ones((1, 8)), previous, "pd_joint_delta_pos")
    np.testing.assert_allclose(targets[0, :7], task.ARM_UPPER)
    small = task.joint_targets_from_action(
        np.full((1, 8), -1.0), task.REST_ARM_QPOS[None], "pd_joint_delta_pos"
    )
    np.testing.assert_allclose(small[0, :7], task.REST_ARM_QPOS - 0.1)


def test_pos_mode_spans_joint_ranges() -> None:
    low = task.joint_targets_from_action(-np.ones((1, 8)), np.zeros((1, 7)), "pd_joint_pos")
    high = task.joint_targets_from_action(np.ones((1, 8)), np.zeros((1, 7)), "pd_joint_pos")
    np.testing.assert_allclose(low[0, :7], task.ARM_LOWER)
    np.testing.assert_allclose(high[0, :7], task.ARM_UPPER)


def test_success_rule_and_rewards() -> None:
    height = np.array([0.14, 0.139, 0.2, 0.2])
    dist = np.array([0.05, 0.01, 0.051, 0.0])
    success = task.is_success(height, dist)
    np.testing.assert_array_equal(success, [True, False, False, True])
    np.testing.assert_array_equal(task.binary_success_reward(success), [1, 0, 0, 1])
    grasped = np.array([True, True, False, True])
    dense = task.dense_reward(dist, height, grasped, success)
    assert dense[0] == task.DENSE_SUCCESS_REWARD
    d, h = 0.01, 0.139
    expected = 1 - np.tanh(5 * d) + (h - 0.02) / 0.12 + np.exp(-10 * d)
    assert dense[1] == pytest.approx(expected, rel=1e-6)
    assert dense[2] == pytest.approx(1 - np.tanh(5 * 0.051) + 1.0, rel=1e-6)


def test_episode_rng_is_reproducible_and_distinct() -> None:
    first = task.sample_initial_state(task.episode_rng(0, 0, 0))
    again = task.sample_initial_state(task.episode_rng(0, 0, 0))
    other_episode = task.sample_initial_state(task.episode_rng(0, 0, 1))
    other_stream = task.sample_initial_state(task.episode_rng(0, 1, 0))
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.allclose(first[1], other_episode[1])
    assert not np.allclose(first[1], other_stream[1])


def test_initial_state_distribution() -> None:
    rng = np.random.default_rng(1)
    arms, cubes = zip(*(task.sample_initial_state(rng) for _ in range(2000)), strict=True)
    arms, cubes = np.array(arms), np.array(cubes)
    np.testing.assert_allclose(arms.mean(0), task.REST_ARM_QPOS, atol=0.003)
    np.testing.assert_allclose(arms.std(0), 0.02, rtol=0.1)
    assert np.all(np.abs(cubes - [0.15, 0.02]) <= 0.01)
    assert np.ptp(cubes[:, 0]) > 0.018
