"""The pd_ee_delta_pos control mode: 4-D end-effector delta actions on the MuJoCo backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lift
from lift import task
from lift.expert import ScriptedExpert
from lift.gym_env import PickPlaceGymEnv

EE = "pd_ee_delta_pos"
ENV = "PickPlace-CRANE-X7"


def make(num_envs: int = 2, **overrides: object) -> lift.Simulator:
    settings = {"num_envs": num_envs, "obs_mode": "state", "control_mode": EE, "auto_reset": False}
    return lift.make_env("mujoco", ENV, **{**settings, **overrides})


def gripper_positions(env: lift.Simulator) -> np.ndarray:
    return np.array([d.xpos[env.gripper_body] for d in env.data])


def gripper_z_axes(env: lift.Simulator) -> np.ndarray:
    return np.array([d.xmat[env.gripper_body].reshape(3, 3)[:, 2] for d in env.data])


def settled(env: lift.Simulator, steps: int = 10) -> np.ndarray:
    for _ in range(steps):
        env.step(np.zeros((env.num_envs, 4)))
    return gripper_positions(env)


def test_the_action_is_four_wide_and_starts_at_the_gripper() -> None:
    env = make()
    env.reset(seed=0)
    assert env.action_dim == task.EE_ACTION_DIM == 4
    np.testing.assert_allclose(env.ee_target, gripper_positions(env))
    gym = PickPlaceGymEnv(env_id=ENV, obs_mode="state", control_mode=EE)
    assert gym.action_space.shape == (4,)
    check_env(gym, skip_render_check=True)
    gym.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\) for control_mode='pd_ee_delta_pos'"):
        gym.step(np.zeros(8))


def test_plus_one_in_x_moves_the_gripper_ee_max_delta_a_step_pointing_down() -> None:
    env = make()
    env.reset(seed=3)
    start = settled(env)
    push = np.zeros((2, 4))
    push[:, 0] = 1.0
    steps = 4
    for _ in range(steps):
        env.step(push)
    moved = settled(env, 5) - start
    np.testing.assert_allclose(moved[:, 0], steps * task.EE_MAX_DELTA, atol=0.003)
    np.testing.assert_allclose(moved[:, 1:], 0.0, atol=0.003)
    np.testing.assert_allclose(env.ee_target - start, [[steps * task.EE_MAX_DELTA, 0, 0]] * 2, atol=2e-3)
    # Straight down: the gripper's z axis is world -z within about 3 degrees.
    assert (gripper_z_axes(env)[:, 2] < -np.cos(np.radians(3))).all()


def test_action_zero_holds_still() -> None:
    env = make()
    env.reset(seed=1)
    start = settled(env)
    after = settled(env, 20)
    assert np.abs(after - start).max() < 1e-3


def test_the_target_stays_in_the_workspace_box() -> None:
    env = make(num_envs=1)
    env.reset(seed=0)
    down = np.array([[0.0, 0.0, -1.0, -1.0]])
    for _ in range(30):
        env.step(down)
    assert env.ee_target[0, 2] == pytest.approx(task.EE_WORKSPACE_LOW[2])


def test_a_joint_width_action_is_a_one_line_error() -> None:
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(2, 4\); got \(2, 8\)") as error:
        env.step(np.zeros((2, 8)))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("simulator", ["maniskill", "genesis"])
def test_other_backends_refuse_the_mode_before_importing_their_engine(simulator: str) -> None:
    with pytest.raises(ValueError, match=rf"not supported by simulator '{simulator}': use simulator 'mujoco'") as error:
        lift.make_env(simulator, "Lift-CRANE-X7", control_mode=EE)
    assert "\n" not in str(error.value)


def test_expert_in_ee_mode_places_the_cube() -> None:
    env = make(num_envs=3, max_episode_steps=100)
    expert = ScriptedExpert(env)
    env.reset(seed=0)
    done = np.zeros(env.num_envs, dtype=bool)
    success = np.zeros(env.num_envs, dtype=bool)
    for _ in range(env.config.max_episode_steps):
        actions = expert.act()
        assert actions.shape == (3, 4) and np.abs(actions).max() <= 1.0
        result = env.step(actions)
        success |= result.terminated & ~done
        done |= result.done
        if done.all():
            break
    assert success.all()


def test_config_refuses_the_mode_off_mujoco() -> None:
    from vla_rl_lib.config import ConfigError, apply_overrides, load_template

    with pytest.raises(ConfigError, match="mujoco"):
        apply_overrides(
            load_template("fast"), {"rollout": {"simulator": "genesis", "control_mode": EE}}
        )


def test_a_joint_mode_policy_on_an_ee_env_is_a_one_line_error() -> None:
    from vla_rl_lib.policy.hf_policy import build_policy
    from vla_rl_lib.policy.tiny_vla import TinyVLAConfig
    from vla_rl_lib.rollout.collector import RolloutCollector

    policy = build_policy(TinyVLAConfig(), action_dim=8)
    with pytest.raises(ValueError, match="8-D actions .* 'pd_ee_delta_pos' takes 4-D") as error:
        RolloutCollector(make(), policy)
    assert "\n" not in str(error.value)


def test_train_cli_runs_pickplace_in_ee_mode(tmp_path) -> None:
    from vla_rl_lib.training.cli import main

    out = tmp_path / "outputs"
    args = ["train", "--template", "fast", "--output-dir", str(out), "--experiment-name", "ee",
            "--sft.dataset-dir", str(tmp_path / "demos"),
            "--rollout.env-id", ENV, "--rollout.control-mode", EE, "--rollout.max-steps", "80",
            "--rollout.num-parallel-envs", "2", "--rollout.num-rollouts-per-update", "2",
            "--num-updates", "2", "--sft.num-demos", "2", "--sft.epochs", "1",
            "--eval-interval", "1", "--num-eval-episodes", "1"]  # fmt: skip
    assert main(args) == 0
    run = next(out.glob("ee/*/metrics.jsonl")).parent
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows if "train/success_rate" in row] == [1, 2]
    policy_config = json.loads((run / "sft" / "policy_config.json").read_text())
    assert policy_config["action_dim"] == 4
    demos = next((tmp_path / "demos").rglob("meta.json"))
    meta = json.loads(demos.read_text())
    assert meta["action"]["dim"] == 4 and meta["env"]["control_mode"] == EE
