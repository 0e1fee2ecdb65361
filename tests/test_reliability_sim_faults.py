"""Simulator faults: an env.step that raises, a physics blow-up (NaN joint state) in one env,
or an unstable state MuJoCo resets on its own (finite, but the episode jumped to another pose).

The collector drops the episodes a fault hit, resets their environments and
replays each from its own start seed, so a rollout still holds one complete
episode per seed; ``Rollout.sim_faults`` (logged as ``rollout/sim_faults``)
counts the dropped episodes. Faults are injected by a wrapper around the real
MuJoCo simulator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lift import make_env
from vla_rl_lib.config import apply_overrides
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.policy.base import ActOutput
from vla_rl_lib.rollout import executor as executor_module
from vla_rl_lib.rollout.collector import (
    MAX_EPISODE_REPLAYS,
    TRAIN_SEED_FLOOR,
    RolloutCollector,
    SimulatorFaultError,
)
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.trainer import Trainer

MAX_STEPS = 5


class FaultyEnv:
    """A real simulator that fails on cue.

    ``plan`` maps a step count to a fault: ``"raise"`` (env.step raises) or an
    env id whose physics blows up (its MuJoCo state and observed joint state
    become NaN). Only steps taken while some env plays a seed >= ``min_seed``
    are counted, so evaluation episodes can be left alone. ``every_time``
    faults the given env on every step instead (a start that always fails).
    """

    def __init__(self, env, plan=None, min_seed=0, every_time=None):
        self.env = env
        self.plan = dict(plan or {})
        self.min_seed = min_seed
        self.every_time = every_time
        self.seeds = np.full(env.num_envs, -1, dtype=np.int64)
        self.counted_steps = 0
        self.injected = []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, seed=None, env_ids=None, seed_stream=None):
        self.seeds[env_ids] = seed
        return self.env.reset(seed=seed, env_ids=env_ids, seed_stream=seed_stream)

    def step(self, actions):
        fault = self.every_time
        if (self.seeds >= self.min_seed).any():
            self.counted_steps += 1
            fault = self.plan.pop(self.counted_steps, fault)
        if fault == "raise":
            self.injected.append("raise")
            raise RuntimeError("injected: simulator crashed")
        if isinstance(fault, tuple):  # ("huge_qvel", env): MuJoCo itself must catch and reset it
            self.env.data[fault[1]].qvel[:] = 1e11
            self.injected.append(fault)
            return self.env.step(actions)
        result = self.env.step(actions)
        if fault is not None:
            self.env.data[fault].qpos[:] = np.nan  # the physics state itself is gone
            result.observation.qpos[fault] = np.nan
            result.observation.qvel[fault] = np.inf
            self.injected.append(fault)
        return result


class SteadyPolicy:
    """Deterministic actions from the image, so a replayed episode repeats the original."""

    action_dim = 8

    def act(self, images, instructions, temperature=1.0, greedy=False):
        level = images.reshape(len(images), -1).mean(axis=1).astype(np.float32) / 255.0
        actions = np.tile((level - 0.5)[:, None], (1, self.action_dim)).astype(np.float32)
        b = len(images)
        return ActOutput(
            actions=actions,
            token_ids=torch.zeros((b, self.action_dim), dtype=torch.long),
            log_probs=torch.zeros(b),
            values=torch.as_tensor(level),
        )


@pytest.fixture
def env():
    env = make_env(
        "mujoco", "Lift-CRANE-X7", num_envs=2, image_size=32,
        max_episode_steps=MAX_STEPS, auto_reset=False, seed=0,
    )
    yield env
    env.close()


def _per_episode(rollout):
    """Each episode's valid steps, in time order: images and rewards."""
    out = {}
    for ep in rollout.episodes:
        mask = rollout.valid & (rollout.episode_index == ep.index)
        column = ep.env_id
        steps = np.flatnonzero(mask[:, column])
        out[ep.seed] = (rollout.images[steps, column], rollout.rewards[steps, column], mask.sum())
    return out


def _assert_complete(rollout, seeds):
    assert [ep.seed for ep in rollout.episodes] == seeds
    for ep in rollout.episodes:
        mask = rollout.valid & (rollout.episode_index == ep.index)
        assert mask.sum() == ep.length == MAX_STEPS
        assert mask.any(axis=0).sum() == 1  # one column holds the whole episode
        last = np.flatnonzero(mask[:, ep.env_id])[-1]
        assert rollout.terminated[last, ep.env_id] or rollout.truncated[last, ep.env_id]
    # Dropped steps are invalid and carry nothing into the batch.
    dropped = ~rollout.valid & (rollout.episode_index == -1)
    assert not rollout.rewards[dropped].any()
    assert not (rollout.terminated | rollout.truncated)[dropped].any()


@pytest.mark.parametrize(
    "plan, expected_faults",
    [({2: "raise"}, 2), ({3: 1}, 1), ({1: 0, 4: "raise", 7: 1}, 4), ({3: ("huge_qvel", 1)}, 1)],
    ids=["step-raises", "one-env-blows-up", "mixed", "mujoco-resets-an-unstable-state"],
)
def test_faulted_episodes_are_replayed_from_their_seed(env, plan, expected_faults):
    seeds = [11, 12, 13]
    clean = RolloutCollector(env, SteadyPolicy(), "pick").collect(seeds)
    faulty_env = FaultyEnv(env, plan)
    rollout = RolloutCollector(faulty_env, SteadyPolicy(), "pick").collect(seeds)

    assert not faulty_env.plan, "every planned fault fired"
    assert rollout.sim_faults == expected_faults and clean.sim_faults == 0
    _assert_complete(rollout, seeds)
    # A replay starts from the same seed: with a deterministic policy it is the same episode.
    want, got = _per_episode(clean), _per_episode(rollout)
    for seed in seeds:
        np.testing.assert_array_equal(got[seed][0], want[seed][0])
        np.testing.assert_array_equal(got[seed][1], want[seed][1])
    assert rollout.env_steps == clean.env_steps


def test_a_start_that_always_fails_is_an_error(env):
    faulty_env = FaultyEnv(env, every_time=1)
    with pytest.raises(SimulatorFaultError, match=r"failed \d+ times .*start seed") as info:
        RolloutCollector(faulty_env, SteadyPolicy(), "pick").collect([5, 6])
    assert f"failed {MAX_EPISODE_REPLAYS + 1} times" in str(info.value)


def test_training_survives_simulator_faults(tiny_config, monkeypatch):
    """A raise and a blow-up during update 1's rollout: dropped, counted, replayed; training goes on."""
    built = []

    def make_faulty_env(*args, **kwargs):
        faulty = FaultyEnv(make_env(*args, **kwargs), {2: "raise", 5: 1}, min_seed=TRAIN_SEED_FLOOR)
        built.append(faulty)
        return faulty

    monkeypatch.setattr(executor_module, "make_env", make_faulty_env)  # make_rollout_env builds it
    # One simulator for the batch, so the plan's step counts and env ids are the batch's.
    tiny_config = apply_overrides(tiny_config, {"rollout": {"env_groups": 1}})
    trainer = Trainer(tiny_config, progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()

    assert built[0].injected == ["raise", 1]
    assert summary["updates"] == tiny_config.num_updates
    train = [r for r in load_metrics(trainer.run_dir) if "train/success_rate" in r]
    assert [r["rollout/sim_faults"] for r in train] == [3, 0]  # 2 dropped by the raise, 1 by NaN
    episodes = tiny_config.rollout.num_rollouts_per_update
    assert all(r["train/episodes"] == episodes for r in train)
    assert all(r["ppo/num_minibatch_steps"] > 0 for r in train)
    state = ckpt.load_checkpoint(trainer.run_dir / "checkpoint_latest")
    assert state["trainer_state"]["update"] == tiny_config.num_updates
