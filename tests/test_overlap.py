"""Overlapped rollouts: env groups, and the overlapped collector against the synchronous one.

The overlapped collector runs each group's policy call on a second thread
while the previous group's simulator steps. It must play the very rollout the
synchronous collector plays for the same seeds: every array equal to the bit.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from lift import make_env
from tests.test_reliability_sim_faults import FaultyEnv, SteadyPolicy
from vla_rl_lib.config import ConfigError, apply_overrides, load_template
from vla_rl_lib.policy.hf_policy import build_policy
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig
from vla_rl_lib.rollout.collector import RolloutCollector, training_episode_seeds
from vla_rl_lib.rollout.env_groups import EnvGroups, group_sizes
from vla_rl_lib.rollout.executor import make_rollout_env

IMAGE = 32
MAX_STEPS = 7  # short enough that most episodes are cut (bootstrapped from the policy's value)


def mujoco(num_envs: int):
    return make_env(
        "mujoco", "PickPlace-CRANE-X7", num_envs=num_envs, image_size=IMAGE,
        max_episode_steps=MAX_STEPS, auto_reset=False, seed=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def policy():
    config = TinyVLAConfig(image_size=IMAGE, vision_hidden_size=32, vision_intermediate_size=64,
                           vision_layers=1, text_hidden_size=32, text_intermediate_size=64,
                           text_layers=1)  # fmt: skip
    return build_policy(config, lora=None, seed=0)


def test_group_sizes_split_evenly_and_never_exceed_the_envs():
    assert group_sizes(4, 2) == [2, 2]
    assert group_sizes(5, 2) == [3, 2]
    assert group_sizes(2, 3) == [1, 1]
    assert group_sizes(3, 1) == [3]
    with pytest.raises(ValueError, match="num_groups"):
        group_sizes(3, 0)


def test_env_groups_play_like_one_simulator():
    whole, split = mujoco(3), EnvGroups([mujoco(2), mujoco(1)])
    try:
        a, b = whole.reset(seed=7), split.reset(seed=7)  # starts counted across envs, in order
        np.testing.assert_array_equal(a.qpos, b.qpos)
        np.testing.assert_array_equal(a.image, b.image)
        a, b = whole.reset(seed=9, env_ids=[1, 2]), split.reset(seed=9, env_ids=[1, 2])
        np.testing.assert_array_equal(a.image, b.image)
        assert whole.get_seed_state() == split.get_seed_state()
        rng = np.random.default_rng(0)
        for _ in range(MAX_STEPS):
            actions = rng.uniform(-1, 1, (3, 8)).astype(np.float32)
            ra, rb = whole.step(actions), split.step(actions)
            for name in ("image", "qpos", "qvel"):
                np.testing.assert_array_equal(getattr(ra.observation, name), getattr(rb.observation, name))
            for name in ("reward", "terminated", "truncated"):
                np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name))
            assert sorted(ra.info) == sorted(rb.info)
            for key in ra.info:
                np.testing.assert_array_equal(ra.info[key], rb.info[key])
        assert rb.truncated.all()
        np.testing.assert_array_equal(
            whole.render("hand_camera", [0, 2], (16, 16)), split.render("hand_camera", [0, 2], (16, 16))
        )
    finally:
        whole.close()
        split.close()


class ThreadRecorder:
    """Wraps a policy and records the thread of every ``act`` call."""

    def __init__(self, policy):
        self.policy = policy
        self.action_dim = policy.action_dim
        self.threads: list[str] = []

    def act(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        return self.policy.act(*args, **kwargs)


def collect(env, policy, overlap: bool, **kwargs):
    recorder = ThreadRecorder(policy)
    finished = []
    torch.manual_seed(5)  # the trainer seeds torch from (seed, update) before collecting
    rollout = RolloutCollector(env, recorder, "pick up the blue cube", overlap=overlap).collect(
        training_episode_seeds(0, 3, 7), on_episode=lambda ep: finished.append(ep.index), **kwargs
    )
    return rollout, finished, recorder.threads


def assert_same_bits(a: np.ndarray, b: np.ndarray, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, name
    if a.dtype == object:  # the prompts: the same strings, not the same objects
        assert a.tolist() == b.tolist(), f"{name} differs"
    else:
        assert a.tobytes() == b.tobytes(), f"{name} differs"


def test_overlapped_rollout_equals_the_synchronous_one_to_the_bit(policy):
    env = EnvGroups([mujoco(2), mujoco(1)])  # uneven groups; 7 episodes on 3 envs: restarts
    try:
        sync, sync_order, sync_threads = collect(env, policy, overlap=False, record_frames=2)
        over, over_order, over_threads = collect(env, policy, overlap=True, record_frames=2)
    finally:
        env.close()
    main = threading.current_thread().name
    assert set(sync_threads) == {main}
    assert any(name != main for name in over_threads)  # the overlap really ran elsewhere
    assert len(sync_threads) == len(over_threads)
    assert sync.truncated.any() and sync.env_steps > 0
    for field in dataclasses.fields(sync):
        a, b = getattr(sync, field.name), getattr(over, field.name)
        if isinstance(a, np.ndarray):
            assert_same_bits(a, b, field.name)
    assert [dataclasses.astuple(e)[:-1] for e in sync.episodes] == [
        dataclasses.astuple(e)[:-1] for e in over.episodes
    ]
    for a, b in zip(sync.episodes, over.episodes, strict=True):
        assert (a.frames is None) == (b.frames is None)
        if a.frames is not None:
            assert_same_bits(np.stack(a.frames), np.stack(b.frames), f"frames of {a.index}")
    assert sync_order == over_order
    assert sync.instructions.tolist() == over.instructions.tolist()
    assert sync.sim_faults == over.sim_faults == 0


def test_simulator_faults_in_one_group_replay_the_same_with_overlap():
    def faulty():
        return EnvGroups([FaultyEnv(mujoco(2), plan={2: "raise", 5: 1}), mujoco(2)])

    seeds = list(range(100, 106))
    rollouts = []
    for overlap in (False, True):
        env = faulty()
        try:
            rollouts.append(RolloutCollector(env, SteadyPolicy(), "pick", overlap=overlap).collect(seeds))
        finally:
            env.close()
    sync, over = rollouts
    assert sync.sim_faults == over.sim_faults == 3  # two dropped by the raise, one blow-up
    assert [e.seed for e in over.episodes] == seeds
    for name in ("images", "valid", "episode_index", "rewards", "values", "next_values"):
        assert_same_bits(getattr(sync, name), getattr(over, name), name)


def test_rollout_env_is_grouped_on_cpu_and_env_groups_is_validated(tmp_path):
    cfg = apply_overrides(load_template("fast"), {
        "output_dir": str(tmp_path),
        "rollout": {"num_parallel_envs": 3, "image_size": 32, "env_groups": 2},
        "model": {"image_size": 32},
    })  # fmt: skip
    env = make_rollout_env(cfg)
    try:
        assert isinstance(env, EnvGroups) and [g.num_envs for g in env.groups] == [2, 1]
        assert env.num_envs == 3
    finally:
        env.close()
    single = make_rollout_env(apply_overrides(cfg, {"rollout": {"env_groups": 1}}))
    assert not isinstance(single, EnvGroups)
    single.close()
    with pytest.raises(ConfigError, match="rollout.env_groups"):
        apply_overrides(cfg, {"rollout": {"env_groups": 0}})


@pytest.mark.slow  # starts Ray and two workers: about a minute on 2 busy cores
def test_ray_workers_with_overlapped_groups_play_the_local_synchronous_episodes(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is the optional `ray` extra")
    import logging

    from tests.conftest import TINY_OVERRIDES
    from vla_rl_lib.rollout.executor import LocalExecutor, make_collector
    from vla_rl_lib.rollout.ray_executor import RayExecutor
    from vla_rl_lib.training.policy_factory import build_training_policy

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray")
    grouped = {"num_parallel_envs": 3, "env_groups": 2, "num_workers": 2}
    cfg = apply_overrides(load_template("fast"), {
        **TINY_OVERRIDES, "output_dir": str(tmp_path), "experiment_name": "tiny",
        "rollout": {**TINY_OVERRIDES["rollout"], **grouped, "overlap": False},
    })  # fmt: skip
    run_dir = tmp_path / "tiny"
    policy, base = build_training_policy(cfg, run_dir, progress=False)
    seeds = training_episode_seeds(0, 0, 7)
    torch.set_num_threads(1)
    env = make_rollout_env(cfg)
    try:
        torch.manual_seed(11)
        local = LocalExecutor(make_collector(cfg, env, policy), num_shards=2).collect(seeds)
    finally:
        env.close()
    remote_cfg = apply_overrides(cfg, {"rollout": {"executor": "ray", "overlap": True}})
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        executor = RayExecutor(remote_cfg, policy, base, run_dir)
        try:
            torch.manual_seed(11)
            remote = executor.collect(seeds)
        finally:
            executor.close()
    finally:
        ray.shutdown()
    assert [(e.index, e.seed, e.env_id, e.length) for e in local.episodes] == [
        (e.index, e.seed, e.env_id, e.length) for e in remote.episodes
    ]
    for name in ("images", "token_ids", "log_probs", "values", "next_values", "valid"):
        assert_same_bits(getattr(local, name), getattr(remote, name), name)
