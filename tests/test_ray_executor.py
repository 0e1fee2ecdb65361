"""Rollout executors: seed sharding, shard merging, and Ray workers against the local collector.

The Ray tests start a local Ray with 2 CPUs and two tiny workers; they are
skipped when Ray (the optional ``ray`` extra) is not installed.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.conftest import TINY_OVERRIDES
from vla_rl_lib.config import apply_overrides, load_template
from vla_rl_lib.rollout.batch import rollout_to_batch
from vla_rl_lib.rollout.collector import RolloutCollector, training_episode_seeds
from vla_rl_lib.rollout.executor import (
    LocalExecutor,
    make_rollout_env,
    merge_shards,
    shard_seeds,
)
from vla_rl_lib.training.policy_factory import build_training_policy

try:
    import ray
except ImportError:  # the optional `ray` extra
    ray = None
needs_ray = pytest.mark.skipif(
    ray is None, reason="Ray is not installed (optional extra): pip install 'ray[default]>=2.40'"
)

SEEDS = training_episode_seeds(seed=0, update=0, num_episodes=5)


def test_shards_are_contiguous_near_equal_and_cover_every_seed():
    seeds = list(range(10, 17))
    shards = shard_seeds(seeds, 3)
    assert [offset for offset, _ in shards] == [0, 2, 5]
    assert [s for _, part in shards for s in part] == seeds
    assert [len(part) for _, part in shards] == [2, 3, 2]
    assert shard_seeds([1], 3) == [(0, [1])]  # workers without seeds get no shard
    with pytest.raises(ValueError, match="num_shards"):
        shard_seeds(seeds, 0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny LoRA run: config, run directory, the learner's policy and its base record."""
    out = tmp_path_factory.mktemp("ray_executor")
    cfg = apply_overrides(
        load_template("fast"),
        {
            **TINY_OVERRIDES,
            "output_dir": str(out),
            "experiment_name": "tiny",
            "device": "cpu",
            "lora": {"enabled": True, "rank": 2, "alpha": 4.0},
        },
    )
    run_dir = out / "tiny"
    policy, base = build_training_policy(cfg, run_dir, progress=False)
    # Move the trainable weights off their initialization, so a replica that missed the
    # broadcast (LoRA B starts at zero) would play different episodes.
    generator = torch.Generator().manual_seed(3)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
        for k, v in policy.trainable_state_dict().items()
    }
    policy.load_trainable_state_dict(state)
    return cfg, run_dir, policy, base


@pytest.fixture(scope="module")
def local_executor(tiny_run):
    cfg, _, policy, _ = tiny_run
    torch.set_num_threads(1)  # as the trainer and the workers run
    env = make_rollout_env(cfg)
    yield LocalExecutor(RolloutCollector(env, policy, cfg.language_instruction), num_shards=2)
    env.close()


def _collect(executor, seed, **kwargs):
    torch.manual_seed(seed)  # the trainer seeds torch from (seed, update) before collecting
    return executor.collect(SEEDS, temperature=1.0, **kwargs)


def test_local_shards_merge_into_the_collector_layout(local_executor):
    rollout = _collect(local_executor, 11)
    n_envs = local_executor.env.num_envs
    assert rollout.valid.shape[1] == 2 * n_envs
    assert [e.seed for e in rollout.episodes] == SEEDS
    assert [e.index for e in rollout.episodes] == list(range(len(SEEDS)))
    for ep in rollout.episodes:  # every episode sits, whole, in the column its env_id names
        steps = rollout.episode_index[:, ep.env_id] == ep.index
        assert steps.sum() == ep.length
    assert rollout.env_steps == sum(e.length for e in rollout.episodes)
    again = _collect(local_executor, 11)
    np.testing.assert_array_equal(again.token_ids, rollout.token_ids)
    batch = rollout_to_batch(rollout, "grpo", 0.99, 0.95, group_size=1)
    assert batch.token_ids.shape[0] == rollout.env_steps


def test_merge_pads_shorter_shards_with_invalid_steps(local_executor):
    torch.manual_seed(5)
    short = local_executor.collector.collect(SEEDS[:1])
    long = local_executor.collector.collect(SEEDS[1:4])
    merged = merge_shards([(0, short), (1, long)])
    horizon = max(short.valid.shape[0], long.valid.shape[0])
    assert merged.valid.shape == (horizon, short.valid.shape[1] + long.valid.shape[1])
    assert merged.env_steps == short.env_steps + long.env_steps
    assert (merged.episode_index[~merged.valid] == -1).all()
    assert [e.index for e in merged.episodes] == [0, 1, 2, 3]


def _train_curve(cfg):
    from vla_rl_lib.metrics import load_metrics
    from vla_rl_lib.training.trainer import Trainer

    trainer = Trainer(cfg, progress=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    return load_metrics(trainer.run_dir)


@needs_ray
@pytest.mark.slow  # two tiny training runs, one starting its own Ray: about a minute
def test_training_with_ray_workers_follows_the_local_curve(tiny_config):
    if ray.is_initialized():
        pytest.skip("needs to start its own Ray; run it before the shared-Ray tests or alone")
    sharded = {"num_updates": 1, "rollout": {"num_workers": 2, "num_rollouts_per_update": 4}}
    local = _train_curve(apply_overrides(tiny_config, {**sharded, "experiment_name": "local"}))
    remote = _train_curve(
        apply_overrides(
            tiny_config,
            {
                **sharded,
                "experiment_name": "ray",
                "rollout": {**sharded["rollout"], "executor": "ray"},
            },
        )
    )
    assert not ray.is_initialized()  # the executor stops the Ray it started
    train = [r for r in remote if "train/success_rate" in r]
    assert train[0]["rollout/weight_broadcast_bytes"] > 0
    assert train[0]["rollout/worker_restarts"] == 0

    def comparable(records):
        return [
            {k: v for k, v in r.items() if not k.startswith(("perf/", "time_s", "rollout/"))}
            for r in records
        ]

    a, b = comparable(local), comparable(remote)
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            assert rb[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


@pytest.fixture(scope="module")
def ray_executor(tiny_run):
    from vla_rl_lib.rollout.ray_executor import RayExecutor

    cfg, run_dir, policy, base = tiny_run
    cfg = apply_overrides(cfg, {"rollout": {"executor": "ray", "num_workers": 2}})
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    executor = RayExecutor(cfg, policy, base, run_dir)
    yield executor
    executor.close()
    ray.shutdown()


def _assert_same_episodes(a, b):
    assert [(e.index, e.seed, e.env_id, e.length, e.success) for e in a.episodes] == [
        (e.index, e.seed, e.env_id, e.length, e.success) for e in b.episodes
    ]
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.episode_index, b.episode_index)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    np.testing.assert_allclose(a.next_values, b.next_values, atol=1e-5)


@needs_ray
@pytest.mark.slow  # starts Ray and two workers: about 35 s on 2 busy cores
def test_ray_workers_play_the_local_executors_episodes(ray_executor, local_executor, tiny_run):
    policy = tiny_run[2]
    local = _collect(local_executor, 11)
    remote = _collect(ray_executor, 11)
    _assert_same_episodes(local, remote)
    assert [w["num_envs"] for w in ray_executor.worker_info] == [2, 2]
    # Only the trainable weights travel: LoRA + value head, a fraction of the whole model.
    sent = ray_executor.metrics["rollout/weight_broadcast_bytes"]
    model_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    trainable = sum(v.numel() * v.element_size() for v in policy.trainable_state_dict().values())
    assert sent == trainable
    assert 0 < sent < model_bytes / 2
    assert ray_executor.metrics["rollout/worker_restarts"] == 0


@needs_ray
@pytest.mark.slow  # starts Ray and two workers: about 35 s on 2 busy cores
def test_greedy_evaluation_with_frames_matches(ray_executor, local_executor):
    local = _collect(local_executor, 0, greedy=True, record_frames=3)
    remote = _collect(ray_executor, 0, greedy=True, record_frames=3)
    _assert_same_episodes(local, remote)
    assert [e.frames is not None for e in remote.episodes] == [True, True, True, False, False]
    for a, b in zip(local.episodes[:3], remote.episodes[:3], strict=True):
        np.testing.assert_array_equal(np.stack(a.frames), np.stack(b.frames))


@needs_ray
@pytest.mark.slow  # starts Ray and two workers: about 35 s on 2 busy cores
def test_a_worker_that_dies_mid_rollout_is_replaced_and_its_shard_replayed(
    ray_executor, local_executor
):
    dying = ray_executor.workers[1]
    ray.get(dying.exit_after_episodes.remote(1))
    before = ray_executor.worker_restarts
    remote = _collect(ray_executor, 11)
    assert ray_executor.metrics["rollout/worker_restarts"] == 1
    assert ray_executor.worker_restarts == before + 1
    assert ray_executor.workers[1] is not dying
    _assert_same_episodes(_collect(local_executor, 11), remote)
