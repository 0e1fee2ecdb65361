"""DART demonstrations: the env executes the expert's action plus AR(1) noise, the dataset
records the expert's clean action; noise-free collection and its cache folder are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import lift
from lift.expert import ScriptedExpert
from vla_rl_lib.sft import collect_demonstrations
from vla_rl_lib.sft.demos import (
    NOISE_STREAM,
    Attempt,
    ExecutionNoise,
    demo_dataset_dir,
    demo_recipe,
    play_attempts,
    read_meta,
)

SETTINGS = {"num_envs": 2, "image_size": 32, "max_episode_steps": 60, "progress": False}
SEED = 0


class _NoBar:
    def set_postfix(self, **kwargs) -> None:
        pass


def _reference_noise(seed: int, dims: int, steps: int, sigma: float, rho: float) -> np.ndarray:
    """The AR(1) sequence written out step by step: n_0 = sigma e_0, n_t = rho n_{t-1} + ..."""
    rng = np.random.default_rng([seed, NOISE_STREAM])
    noise = [sigma * rng.standard_normal(dims)]
    for _ in range(steps - 1):
        noise.append(rho * noise[-1] + np.sqrt(1 - rho**2) * sigma * rng.standard_normal(dims))
    return np.array(noise)


def _drive(noise: ExecutionNoise, actions: np.ndarray, attempts: dict[int, Attempt], steps: int):
    """The executed actions of ``steps`` steps, each attempt recording its step first
    (as play_attempts does)."""
    executed = []
    for _ in range(steps):
        for env_id, attempt in attempts.items():
            attempt.actions.append(actions[env_id])
        executed.append(noise(None, actions, attempts))
    return np.array(executed)


def test_noise_is_the_ar1_sequence_of_the_episode_seed_on_arm_dims_only():
    actions = np.zeros((3, 4), dtype=np.float32)
    actions[:, 3] = 1.0
    executed = _drive(ExecutionNoise(0.1, 0.9), actions, {2: Attempt(index=0, seed=77)}, 50)
    expected = np.clip(_reference_noise(77, 3, 50, 0.1, 0.9), -1, 1)
    np.testing.assert_allclose(executed[:, 2, :3], expected, atol=1e-6)
    assert (executed[:, 2, 3] == 1.0).all()  # the gripper is never perturbed
    assert (executed[:, :2] == actions[:2]).all()  # envs without an attempt are left alone
    # The stream belongs to the attempt, not the env slot; a new attempt restarts it.
    other = _drive(ExecutionNoise(0.1, 0.9), actions[:1], {0: Attempt(index=5, seed=77)}, 3)
    np.testing.assert_array_equal(other[:, 0], executed[:3, 2])
    noise = ExecutionNoise(0.1, 0.9)
    _drive(noise, actions, {2: Attempt(index=0, seed=1)}, 4)
    again = _drive(noise, actions, {2: Attempt(index=1, seed=77)}, 3)
    np.testing.assert_array_equal(again[:, 2], executed[:3, 2])


def test_noise_has_std_sigma_and_step_correlation_rho():
    zeros = np.zeros((1, 8), dtype=np.float32)
    n = _drive(ExecutionNoise(0.2, 0.9), zeros, {0: Attempt(index=0, seed=5)}, 5000)[:, 0, :7]
    assert n.std() == pytest.approx(0.2, rel=0.1)
    lag1 = np.mean([np.corrcoef(n[:-1, j], n[1:, j])[0, 1] for j in range(7)])
    assert lag1 == pytest.approx(0.9, abs=0.03)


def test_noise_free_recipe_and_folder_are_those_of_before():
    before = demo_recipe(3, SEED, **SETTINGS)
    assert not {"action_noise", "noise_correlation"} & set(before["arguments"])
    explicit = demo_recipe(3, SEED, **SETTINGS, action_noise=0.0, noise_correlation=0.5)
    assert explicit == before
    assert demo_dataset_dir("root", explicit) == demo_dataset_dir("root", before)


def test_each_noise_setting_gets_its_own_folder():
    folders = {
        demo_dataset_dir("root", demo_recipe(3, SEED, **SETTINGS, **noise))
        for noise in (
            {},
            {"action_noise": 0.2},
            {"action_noise": 0.3},
            {"action_noise": 0.2, "noise_correlation": 0.5},
        )
    }
    assert len(folders) == 4
    recipe = demo_recipe(3, SEED, **SETTINGS, action_noise=0.2)
    assert recipe["arguments"]["action_noise"] == 0.2
    assert recipe["arguments"]["noise_correlation"] == 0.9


@pytest.mark.parametrize("control_mode", ["pd_ee_delta_pos", "pd_joint_delta_pos"])
def test_labels_are_the_experts_clean_action_at_the_visited_state(control_mode):
    """The env steps with the perturbed action; each row holds what the expert asked for there."""

    def play(sigma: float):
        env = lift.make_env(
            "mujoco", "PickPlace-CRANE-X7", num_envs=1, image_size=16, control_mode=control_mode,
            max_episode_steps=30, obs_mode="rgb", auto_reset=True, seed=SEED,
        )  # fmt: skip
        expert, asked, executed = ScriptedExpert(env), [], []
        act, step = expert.act, env.step
        expert.act = lambda: asked.append(np.asarray(act(), np.float32)) or asked[-1]
        env.step = lambda actions: executed.append(np.array(actions)) or step(actions)
        noise = ExecutionNoise(sigma, 0.9) if sigma else None
        (attempt,) = play_attempts(env, expert, 1, SEED, 1, _NoBar(), drive=noise)
        env.close()
        return attempt, np.concatenate(asked), np.concatenate(executed)

    clean, clean_asked, clean_executed = play(0.0)
    np.testing.assert_array_equal(clean_executed, clean_asked)  # no noise: no change
    noisy, asked, executed = play(0.3)
    np.testing.assert_array_equal(np.stack(noisy.actions), asked)
    arm = executed[:, :-1] - asked[:, :-1]
    assert (np.abs(arm) > 1e-3).mean() > 0.5  # most arm commands were perturbed ...
    np.testing.assert_array_equal(executed[:, -1], asked[:, -1])  # ... the gripper never
    assert np.abs(executed).max() <= 1.0
    # The trajectory (and so the recorded states and images) differs from the clean one.
    assert not np.allclose(np.stack(noisy.states[1:]), np.stack(clean.states[1:]))
    assert not np.array_equal(np.stack(noisy.images), np.stack(clean.images))


def test_noisy_collection_is_reproducible_and_records_its_recipe(tmp_path):
    kwargs = {**SETTINGS, "env_id": "PickPlace-CRANE-X7", "max_episode_steps": 100,
              "control_mode": "pd_ee_delta_pos", "action_noise": 0.2}  # fmt: skip
    first = collect_demonstrations(1, SEED, tmp_path / "a", **kwargs)
    again = collect_demonstrations(1, SEED, tmp_path / "b", **{**kwargs, "num_envs": 1})
    clean = collect_demonstrations(1, SEED, tmp_path / "c", **{**kwargs, "action_noise": 0.0})
    data = [(d / "data/train.parquet").read_bytes() for d in (first, again, clean)]
    assert data[0] == data[1]
    assert data[0] != data[2]
    assert read_meta(first)["recipe"] == demo_recipe(1, SEED, **kwargs)


@pytest.mark.parametrize(
    ("noise", "message"),
    [
        ({"action_noise": -0.1}, "action_noise=-0.1"),
        ({"noise_correlation": 1.0}, "noise_correlation=1.0"),
    ],
)
def test_bad_noise_values_are_named(tmp_path, noise, message):
    with pytest.raises(ValueError, match=message) as info:
        collect_demonstrations(1, SEED, tmp_path / "x", progress=False, **noise)
    assert "\n" not in str(info.value)
