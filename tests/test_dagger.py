"""DAgger data: the policy drives, the expert labels; the folder is a demonstration dataset;
aggregated datasets stay aligned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lift.expert import APPROACH_SPEED, ScriptedExpert
from lift.task import EE_MAX_DELTA
from tests.conftest import TINY_OVERRIDES
from vla_rl_lib.config import apply_overrides, load_template
from vla_rl_lib.policy.base import ActOutput
from vla_rl_lib.rollout.executor import make_collector, make_rollout_env
from vla_rl_lib.sft import DemoDataset, load_demonstrations
from vla_rl_lib.sft.dagger import collect_dagger, concatenate_demonstrations, expert_driven_episodes
from vla_rl_lib.sft.demos import META_FILE
from vla_rl_lib.training.policy_factory import policy_settings

SEED = 2_000_000
STEPS = 8
# The policy's constant action: far from anything the expert does (it lowers the arm and
# moves it sideways, gripper closed), so a policy-driven episode leaves the expert's path.
POLICY_ACTION = np.array([0.0, 0.8, -0.6, 1.0], dtype=np.float32)


class ConstantPolicy(torch.nn.Module):
    """A policy that always returns ``POLICY_ACTION``: which actions were executed is then known."""

    action_dim = len(POLICY_ACTION)

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def act(self, images, instructions, temperature=1.0, greedy=False) -> ActOutput:
        n = len(images)
        return ActOutput(
            actions=np.tile(POLICY_ACTION, (n, 1)),
            token_ids=torch.zeros((n, self.action_dim), dtype=torch.int64),
            log_probs=torch.zeros(n),
            values=torch.zeros(n),
        )


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return apply_overrides(
        load_template("fast"),
        {**TINY_OVERRIDES, "output_dir": str(tmp_path_factory.mktemp("out")),
         "rollout": {**TINY_OVERRIDES["rollout"], "env_id": "PickPlace-CRANE-X7",
                     "control_mode": "pd_ee_delta_pos", "max_steps": STEPS}},
    )  # fmt: skip


def collect(
    config, out_dir: Path, policy, num_episodes: int, beta: float, follow_target: bool = True
) -> DemoDataset:
    collector = make_collector(config, make_rollout_env(config, "train"), policy)
    try:
        collect_dagger(collector, num_episodes, SEED, out_dir, beta=beta, follow_target=follow_target,
                       policy_checkpoint="ckpt/x", progress=False)  # fmt: skip
    finally:
        collector.env.close()
    return load_demonstrations(out_dir)


def reference_episode(
    config, seed: int, expert_drives: bool, follow_target: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images, expert actions) of one episode played alone, step by step: the slow reference."""
    env = make_rollout_env(apply_overrides(config, {"rollout.num_parallel_envs": 1}), "train")
    try:
        expert = ScriptedExpert(env, follow_target=follow_target)
        observation = env.reset(seed=seed, env_ids=[0])
        images, labels = [], []
        for _ in range(STEPS):
            label = expert.act()
            images.append(observation.image[0].copy())
            labels.append(label[0].astype(np.float32))
            result = env.step(label if expert_drives else POLICY_ACTION[None])
            observation = result.observation
            if result.done[0]:
                break
        return np.stack(images), np.stack(labels)
    finally:
        env.close()


@pytest.fixture(scope="module")
def policy_driven(config, tmp_path_factory) -> DemoDataset:
    return collect(
        config, tmp_path_factory.mktemp("dagger") / "round1", ConstantPolicy(), 3, beta=0.0
    )


def test_labels_are_the_expert_action_in_the_states_the_policy_visits(
    config, policy_driven
) -> None:
    for episode in range(3):
        rows = policy_driven.episode_index == episode
        images, labels = reference_episode(config, SEED + episode, expert_drives=False)
        np.testing.assert_array_equal(policy_driven.images[rows], images)
        np.testing.assert_allclose(policy_driven.actions[rows], labels, atol=1e-7)
    # The policy drove: the labels are not what was executed, and the path left the expert's.
    assert not np.allclose(policy_driven.actions, POLICY_ACTION)
    expert_images, _ = reference_episode(config, SEED, expert_drives=True)
    assert not np.array_equal(policy_driven.images[policy_driven.episode_index == 0], expert_images)


def test_labels_from_the_arm_stay_at_the_expert_speed(config, policy_driven, tmp_path) -> None:
    """Stepping from the arm's target, a label is the script's step (<= 0.75 of the largest
    move); stepping from the script's own waypoint, the policy's drift saturates it."""
    fastest = APPROACH_SPEED / EE_MAX_DELTA
    assert np.abs(policy_driven.actions[:, :3]).max() <= fastest + 1e-6
    from_script = collect(
        config, tmp_path / "script", ConstantPolicy(), 1, 0.0, follow_target=False
    )
    images, labels = reference_episode(config, SEED, expert_drives=False, follow_target=False)
    np.testing.assert_allclose(from_script.actions, labels, atol=1e-7)
    assert (np.abs(from_script.actions[:, :3]) == 1.0).any()


def test_following_the_target_does_not_change_the_expert(config) -> None:
    images, labels = reference_episode(config, SEED, expert_drives=True, follow_target=True)
    script_images, script_labels = reference_episode(config, SEED, True, follow_target=False)
    np.testing.assert_allclose(labels, script_labels, atol=1e-5)
    assert np.abs(images.astype(int) - script_images).max() <= 1


def test_beta_one_plays_the_expert(config, tmp_path) -> None:
    dataset = collect(config, tmp_path / "expert", ConstantPolicy(), 2, beta=1.0)
    for episode in range(2):
        rows = dataset.episode_index == episode
        images, labels = reference_episode(config, SEED + episode, expert_drives=True)
        np.testing.assert_array_equal(dataset.images[rows], images)
        np.testing.assert_allclose(dataset.actions[rows], labels, atol=1e-7)
    assert dataset.meta["dagger"]["expert_driven"] == [True, True]
    assert dataset.meta["dagger"]["policy_steps"] == 0


def test_the_folder_is_a_demonstration_dataset_that_says_it_is_dagger(policy_driven) -> None:
    meta = json.loads((policy_driven.path / META_FILE).read_text())
    assert policy_driven.num_episodes == meta["num_episodes"] == 3  # failed episodes are kept
    assert len(policy_driven) == meta["num_transitions"] == 3 * STEPS
    assert meta["episode_seeds"] == [SEED, SEED + 1, SEED + 2]
    assert meta["env"]["split"] == "train"
    assert meta["action"]["control_mode"] == "pd_ee_delta_pos"
    dagger = meta["dagger"]
    assert dagger["beta"] == 0.0 and dagger["policy_checkpoint"] == "ckpt/x"
    assert dagger["expert_driven"] == [False] * 3 and dagger["episode_success"] == [False] * 3
    assert dagger["policy_steps"] == 3 * STEPS
    assert policy_driven.statistics.action_dim == 4


def test_seeds_must_stay_below_the_training_floor(config, tmp_path) -> None:
    from vla_rl_lib.seed_ranges import TRAIN_SEED_FLOOR

    collector = make_collector(config, make_rollout_env(config, "train"), ConstantPolicy())
    try:
        with pytest.raises(ValueError, match="pick a smaller seed"):
            collect_dagger(collector, 2, TRAIN_SEED_FLOOR - 1, tmp_path / "x", progress=False)
    finally:
        collector.env.close()


def test_expert_driven_episodes_are_a_function_of_the_seed() -> None:
    draws = expert_driven_episodes(7, 1000, 0.3)
    assert 0.25 < draws.mean() < 0.35
    np.testing.assert_array_equal(expert_driven_episodes(7, 10, 0.3), draws[:10])
    assert not expert_driven_episodes(7, 50, 0.0).any() and expert_driven_episodes(7, 50, 1.0).all()
    with pytest.raises(ValueError, match="beta=1.5 is invalid"):
        expert_driven_episodes(7, 5, 1.5)


def numbered_dataset(path: str, first_row: int, episodes: list[int]) -> DemoDataset:
    """Every field of row k carries the number ``first_row + k``, so misalignment shows."""
    n = len(episodes)
    rows = np.arange(first_row, first_row + n)
    return DemoDataset(
        path=Path(path),
        images=np.broadcast_to(rows[:, None, None, None] % 256, (n, 4, 4, 3)).astype(np.uint8),
        actions=np.stack([rows / 1000, rows / 1000, rows / 1000, -rows / 1000], 1).astype(
            np.float32
        ),
        states=np.repeat(rows[:, None], 9, 1).astype(np.float32),
        instructions=[f"row {r}" for r in rows],
        episode_index=np.asarray(episodes, dtype=np.int64),
        frame_index=np.zeros(n, dtype=np.int64),
        rewards=rows.astype(np.float32),
        success=rows % 2 == 0,
    )


def test_concatenation_keeps_rows_aligned_and_episodes_apart() -> None:
    demos = numbered_dataset("demos", 0, [0, 0, 1, 1, 1])
    round1 = numbered_dataset("round1", 5, [0, 0, 1])
    round2 = numbered_dataset("round2", 8, [0, 1, 2, 2])
    union = concatenate_demonstrations([demos, round1, round2])
    rows = np.arange(12)
    assert len(union) == 12 and union.num_episodes == 2 + 2 + 3 == union.meta["num_episodes"]
    np.testing.assert_array_equal(union.images[:, 0, 0, 0], rows)
    np.testing.assert_array_equal(union.actions[:, 0] * 1000, rows.astype(np.float32))
    np.testing.assert_array_equal(union.states[:, 0], rows)
    assert union.instructions == [f"row {r}" for r in rows]
    np.testing.assert_array_equal(union.rewards, rows)
    np.testing.assert_array_equal(union.episode_index, [0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 6])
    assert union.path == Path("demos")  # so its statistics are the original demonstrations'
    assert [s["path"] for s in union.meta["sources"]] == ["demos", "round1", "round2"]


def test_concatenation_refuses_other_action_widths() -> None:
    demos = numbered_dataset("demos", 0, [0])
    joint = numbered_dataset("joint", 1, [0])
    joint.actions = np.zeros((1, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="4-D"):
        concatenate_demonstrations([demos, joint])


def test_a_tiny_vla_drives_through_the_evaluation_path(config, tmp_path) -> None:
    from vla_rl_lib.policy.loading import fresh_tiny_policy

    policy = fresh_tiny_policy(policy_settings(config), train_all=True)
    dataset = collect(config, tmp_path / "tiny", policy, 2, beta=0.0)
    assert len(dataset) == 2 * STEPS and dataset.meta["dagger"]["policy_steps"] == 2 * STEPS
