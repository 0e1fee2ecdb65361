"""rollout.collect_ahead: the next rollout played in a worker process during the update.

The worker's rollout is the in-process one to the bit for the same weights and
seeds; rollout k+1 is always played with the weights from before update k;
runs, and runs resumed from a checkpoint, repeat exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.test_ray_executor import needs_ray, ray
from tests.test_trainer import _curve, _train
from vla_rl_lib.config import ConfigError, apply_overrides
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.rollout.ahead import AheadExecutor, frozen_weights
from vla_rl_lib.rollout.collector import training_episode_seeds
from vla_rl_lib.rollout.executor import LocalExecutor, make_collector
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.trainer import Trainer


@pytest.fixture
def ahead_config(tiny_config):
    return apply_overrides(tiny_config, {"rollout": {"collect_ahead": True}})


def assert_same_rollout(a, b) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            same = x.tolist() == y.tolist() if x.dtype == object else x.tobytes() == y.tobytes()
            assert same, f"{field.name} differs"
    assert [dataclasses.astuple(e)[:-1] for e in a.episodes] == [
        dataclasses.astuple(e)[:-1] for e in b.episodes
    ]


def perturb(policy) -> None:
    """What an optimizer step does to the weights, here with noise."""
    with torch.no_grad():
        for param in policy.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))


def test_the_worker_plays_the_snapshot_bit_for_bit_like_a_local_collect(ahead_config):
    # two shards of two episodes each: the local executor's sharding, in the worker
    cfg = apply_overrides(ahead_config, {"rollout": {"num_workers": 2, "num_rollouts_per_update": 4}})
    trainer = Trainer(cfg, progress=False)
    try:
        assert isinstance(trainer.executor, AheadExecutor)
        seeds = training_episode_seeds(cfg.seed, 3, 4)
        snapshot = frozen_weights(trainer.policy)
        torch.manual_seed(7)
        trainer.executor.submit(3, seeds, snapshot, temperature=1.0)
        perturb(trainer.policy)  # the update runs while the worker plays
        ahead = trainer.executor.result(3)
        assert trainer.executor.pending is None
        torch.manual_seed(7)
        moved = trainer.executor.collect(seeds, temperature=1.0)  # the current (moved) weights

        trainer.policy.load_trainable_state_dict(snapshot)
        local = LocalExecutor(make_collector(cfg, trainer.env, trainer.policy), num_shards=2)
        torch.manual_seed(7)
        sync = local.collect(seeds, temperature=1.0)
    finally:
        trainer.close()
    assert sync.env_steps > 0 and len(sync.episodes) == 4
    assert_same_rollout(ahead, sync)
    assert moved.log_probs.tobytes() != sync.log_probs.tobytes()  # the snapshot mattered


def test_rollout_k_plus_1_is_played_with_the_weights_before_update_k_and_runs_repeat(ahead_config):
    cfg = apply_overrides(ahead_config, {"num_updates": 3})
    weights_before: list[dict[str, torch.Tensor]] = []  # index u: the weights before update u
    submitted: dict[int, dict[str, torch.Tensor]] = {}
    trainer = Trainer(cfg, progress=False)
    submit = trainer.executor.submit

    def spy(key, seeds, weights, **options):
        submitted[key] = weights
        return submit(key, seeds, weights, **options)

    trainer.executor.submit = spy
    trainer.on_update = lambda record: weights_before.append(frozen_weights(trainer.policy))
    weights_before.append(frozen_weights(trainer.policy))
    try:
        trainer.train()
    finally:
        trainer.close()
    run_dir = trainer.run_dir
    assert sorted(submitted) == [0, 1, 2]  # nothing played past num_updates
    behaviour = {0: weights_before[0], 1: weights_before[0], 2: weights_before[1]}
    for key, weights in submitted.items():
        assert all(torch.equal(weights[k], behaviour[key][k]) for k in weights), key
    assert any(not torch.equal(weights_before[0][k], weights_before[1][k]) for k in weights_before[0])

    records = [r for r in _curve(run_dir) if "train/episodes" in r]
    assert [r["update"] for r in records] == [1, 2, 3]
    _, again = _train(cfg)
    assert _curve(again) == _curve(run_dir)


def test_resumed_run_replays_the_pending_rollout_exactly(ahead_config):
    full_cfg = apply_overrides(ahead_config, {"num_updates": 3, "experiment_name": "full"})
    _, full_dir = _train(full_cfg)

    part_cfg = apply_overrides(full_cfg, {"experiment_name": "part", "num_updates": 1})
    _, part_dir = _train(part_cfg)
    state = ckpt.load_checkpoint(part_dir / "checkpoint_latest")
    assert set(state["behaviour_state"]) == set(state["policy_state"])  # theta_0, for rollout 1
    assert any(not torch.equal(state["behaviour_state"][k], v) for k, v in state["policy_state"].items())
    _, resumed = _train(apply_overrides(part_cfg, {"num_updates": 3}), resume=True)
    assert resumed == part_dir
    assert _curve(part_dir) == _curve(full_dir)


def test_max_minutes_plays_no_rollout_past_the_last_update(ahead_config):
    cfg = apply_overrides(ahead_config, {"num_updates": 5, "max_minutes": 1e-6, "eval_interval": 0})
    trainer = Trainer(cfg, progress=False)
    try:
        summary = trainer.train()
        assert trainer.executor.pending is None
    finally:
        trainer.close()
    assert summary["stopped_by"] == "max_minutes" and summary["updates"] == 1


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"ppo": {"update_threads": 2}}, "ppo.update_threads=2"),
        ({"ppo": {"update_threads": 0}}, "ppo.update_threads=0"),
        ({"device": "cuda"}, "device='cuda'"),
        ({"rollout": {"backend": "gpu"}}, "rollout.backend='gpu'"),
    ],
)
def test_unsupported_combinations_are_refused_in_one_line(ahead_config, overrides, key):
    with pytest.raises(ConfigError, match="collect_ahead") as error:
        apply_overrides(ahead_config, overrides)
    assert str(error.value).startswith(key) and "\n" not in str(error.value)


def test_ray_executor_settings_are_not_the_local_workers_limits(ahead_config):
    cfg = apply_overrides(ahead_config, {"rollout": {"executor": "ray"}, "ppo": {"update_threads": 2}})
    assert cfg.rollout.collect_ahead and cfg.ppo.update_threads == 2


@needs_ray
@pytest.mark.slow  # starts Ray and its worker: about a minute on 2 busy cores
def test_ray_workers_play_ahead_like_the_local_worker(ahead_config):
    if ray.is_initialized():
        pytest.skip("needs to start its own Ray; run it before the shared-Ray tests or alone")
    cfg = apply_overrides(ahead_config, {"num_updates": 3, "experiment_name": "local"})
    _, local_dir = _train(cfg)
    ray_cfg = apply_overrides(cfg, {"experiment_name": "ray", "rollout": {"executor": "ray"}})
    _, ray_dir = _train(ray_cfg)

    def learning(run_dir):  # the Ray executor adds its own rollout/worker* figures
        return [{k: v for k, v in r.items() if not k.startswith(("rollout/worker", "rollout/weight"))}
                for r in _curve(run_dir)]  # fmt: skip

    assert learning(ray_dir) == learning(local_dir)
    assert all("perf/rollout_overlap" in r for r in load_metrics(ray_dir) if "train/episodes" in r)


def test_a_worker_that_cannot_start_fails_with_its_own_error(ahead_config, tmp_path):
    trainer = Trainer(ahead_config, progress=False)
    try:
        missing = {"kind": "sft", "path": str(tmp_path / "no_such_policy")}
        with pytest.raises(FileNotFoundError, match="no_such_policy"):  # raised in the worker
            AheadExecutor(ahead_config, trainer.policy, missing, trainer.run_dir)
    finally:
        trainer.close()
