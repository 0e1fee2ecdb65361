"""PickPlace-CRANE-X7: seeded episodes, splits, success rule, bad input, the expert."""

from __future__ import annotations

import numpy as np
import pytest

import lift
from lift import pickplace as pp
from lift.expert import ScriptedExpert

ENV = "PickPlace-CRANE-X7"
OOD = ("ood_position", "ood_combination", "ood_instruction", "ood_visual")


def make(**overrides: object) -> lift.Simulator:
    settings = {"num_envs": 4, "obs_mode": "state", **overrides}
    return lift.make_env("mujoco", ENV, **settings)


def test_list_splits_names_train_val_test_and_the_four_ood_splits() -> None:
    assert lift.list_splits(ENV) == ["train", "val", "test", *OOD]
    assert lift.list_splits("Lift-CRANE-X7") == ["train", "val", "test"]


def test_unknown_split_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown split 'ood_colour'.*ood_combination"):
        make(split="ood_colour")


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("put the {cube} sphere on the {bowl}", r"\['bowl'\]"),
        ("put the {cube} cube on the {plate} plate by the red cube", "literally"),
        ("put the {cube} cube down", "lacks"),
    ],
)
def test_template_naming_what_the_scene_lacks_fails_at_construction(template: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        pp.PickPlaceSplit("bad", 7, "bad template", templates=(template,))


def test_impossible_separation_fails_clearly_instead_of_looping() -> None:
    tiny = pp.Region(x=(0.2, 0.25), y=(0.0, 0.05))
    split = pp.PickPlaceSplit("crowded", 8, "four objects in 5 x 5 cm", region=tiny)
    with pytest.raises(ValueError, match="could not place 4 objects at least 0.1 m apart"):
        pp.sample_episode(np.random.default_rng(0), split)


def test_episode_start_is_a_pure_function_of_the_seed() -> None:
    a, b = make(), make()
    obs_a, obs_b = a.reset(seed=5), b.reset(seed=5)
    assert obs_a.instructions == obs_b.instructions
    np.testing.assert_array_equal(obs_a.state, obs_b.state)
    # The collector's way: one env reset on its own seed gives that seed's start.
    alone = b.reset(seed=5, env_ids=[2])
    assert alone.instructions[2] == a.reset(seed=5, env_ids=[2]).instructions[2]
    texts = {t for s in range(30) for t in make(num_envs=1).reset(seed=s).instructions}
    assert len(texts) > 15  # instructions vary across episodes


def test_train_val_test_share_a_distribution_but_draw_different_starts() -> None:
    starts = {name: make(split=name).reset(seed=0).state for name in ("train", "val", "test")}
    assert not np.allclose(starts["train"], starts["test"])
    assert not np.allclose(starts["val"], starts["test"])


def episodes(split: str, count: int = 60) -> list[pp.PickPlaceEpisode]:
    s = lift.splits.get_split(ENV, split)
    return [pp.sample_episode(lift.task.episode_rng(0, 0, k, s.stream), s) for k in range(count)]


def named_pair(e: pp.PickPlaceEpisode) -> tuple[str, str]:
    return e.cube_colours[e.named_cube], e.plate_colours[e.named_plate]


def test_splits_differ_from_train_exactly_where_they_say() -> None:
    train = episodes("train", 200)
    assert all(named_pair(e) in pp.TRAIN_PAIRS for e in train)
    assert all(named_pair(e) in pp.HELD_OUT_PAIRS for e in episodes("ood_combination"))
    every_xy = [xy for e in train for xy in (*e.cube_xy, *e.plate_xy)]
    assert not any(pp.HELD_OUT_CORNER.contains(xy) for xy in every_xy)
    assert all(pp.HELD_OUT_CORNER.contains(e.cube_xy[e.named_cube]) for e in episodes("ood_position"))
    paraphrase_words = {"block", "box", "dish", "disc"}
    assert not any(paraphrase_words & set(e.instruction.split()) for e in train)
    assert all(paraphrase_words & set(e.instruction.split()) for e in episodes("ood_instruction"))
    rendered = {
        name: make(num_envs=1, split=name, obs_mode="rgb", image_size=32).reset(seed=0).image
        for name in ("train", "ood_visual")
    }
    assert rendered["ood_visual"].mean() != pytest.approx(rendered["train"].mean(), abs=2.0)
    span = np.ptp(np.array(every_xy), axis=0)
    assert span[0] >= 0.17 and span[1] >= 0.23  # the 18 x 24 cm workspace is used


def test_minimum_separation_and_four_distinct_colours() -> None:
    for e in episodes("train", 100):
        centres = np.vstack([e.cube_xy, e.plate_xy])
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(4, 1)]
        assert gaps.min() >= pp.MIN_SEPARATION
        assert len({*e.cube_colours, *e.plate_colours}) == 4
        assert e.instruction == e.instruction.format()  # fully filled in


def run_expert(env: lift.Simulator, place: bool, steps: int = 120) -> tuple[np.ndarray, np.ndarray]:
    expert = ScriptedExpert(env, place=place)
    env.reset(seed=0)
    success, reward = np.zeros(env.num_envs, bool), np.zeros(env.num_envs)
    max_height = np.zeros(env.num_envs)
    for _ in range(steps):
        result = env.step(expert.act())
        success |= result.terminated
        reward += result.reward
        max_height = np.maximum(max_height, result.info["cube_height"])
    return success, reward, max_height


def test_expert_places_the_named_cube() -> None:
    env = make(auto_reset=False)
    success, reward, _ = run_expert(env, place=True)
    assert success.all() and (reward >= 1).all()
    info = env.task_state()
    assert (info["cube_to_target_dist"] <= pp.PLATE_RADIUS).all()


def test_lift_only_episode_scores_zero() -> None:
    env = make(auto_reset=False, max_episode_steps=120)
    success, reward, max_height = run_expert(env, place=False)
    assert (max_height > 0.12).all()  # it did grasp and raise the named cube
    assert not success.any() and (reward == 0).all()


def test_success_needs_release_and_a_clear_gripper() -> None:
    ok = dict(cube_to_target_xy=np.array([0.01]), cube_height=np.array([pp.REST_HEIGHT]),
              is_grasped=np.array([False]), finger_opening=np.array([0.9]),
              gripper_to_cube_dist=np.array([0.2]))  # fmt: skip
    assert pp.is_success(**ok).all()
    for key, bad in [
        ("cube_to_target_xy", 0.06),
        ("cube_height", pp.REST_HEIGHT + 0.05),
        ("is_grasped", True),
        ("finger_opening", 0.1),
        ("gripper_to_cube_dist", 0.05),
    ]:
        assert not pp.is_success(**{**ok, key: np.array([bad])}).any(), key


def test_observation_carries_instructions_state_and_auto_reset_rows() -> None:
    env = make(num_envs=2, max_episode_steps=2, obs_mode="rgb", image_size=16)
    first = env.reset(seed=1)
    assert len(first.instructions) == 2 and first.state.shape == (2, env.state_dim)
    env.step(np.zeros((2, 8)))
    result = env.step(np.zeros((2, 8)))
    assert result.truncated.all()
    assert result.final_observation.instructions == first.instructions
    assert result.observation.instructions != first.instructions  # the next episodes' own
    one_hot = result.observation.state[:, -4:]
    assert (one_hot.sum(axis=1) == 2).all()


def test_dense_reward_is_staged() -> None:
    env = make(num_envs=1, reward_mode="dense", auto_reset=False)
    expert = ScriptedExpert(env)
    env.reset(seed=0)
    rewards = []
    for _ in range(100):
        result = env.step(expert.act())
        rewards.append(float(result.reward[0]))
        if result.terminated[0]:
            break
    assert rewards[-1] == pp.DENSE_SUCCESS_REWARD
    assert max(rewards[:-1]) > 3.0 > rewards[0]  # grasp, carry and place stages were paid


def test_lift_train_split_keeps_its_starts_and_other_splits_draw_new_ones() -> None:
    before_splits = lift.task.sample_initial_state(np.random.default_rng([0, 0, 0]))[0]
    train = lift.make_env("mujoco", "Lift-CRANE-X7", obs_mode="state").reset(seed=0)
    np.testing.assert_allclose(train.qpos[0, :7], before_splits, atol=1e-6)
    test = lift.make_env("mujoco", "Lift-CRANE-X7", obs_mode="state", split="test").reset(seed=0)
    assert not np.allclose(test.qpos, train.qpos)
    with pytest.raises(ValueError, match=r"available splits: \['train', 'val', 'test'\]"):
        lift.make_env("mujoco", "Lift-CRANE-X7", split="ood_visual")


def test_recolour_named_cube_asks_for_a_cube_the_instruction_does_not_name() -> None:
    assert pp.recolour_named_cube("put the red cube on the green plate") == (
        "put the blue cube on the green plate"
    )
    assert pp.recolour_named_cube("put the purple cube on the red plate") == (
        "put the green cube on the red plate"
    )
    for template in pp.TRAIN_TEMPLATES + pp.PARAPHRASED_TEMPLATES:
        assert template.index("{cube}") < template.index("{plate}")
        text = template.format(cube="blue", plate="yellow")
        assert pp.recolour_named_cube(text) == template.format(cube="purple", plate="yellow")
    with pytest.raises(ValueError, match="names 1 palette colour"):
        pp.recolour_named_cube("pick up the red cube")
