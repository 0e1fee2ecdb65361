"""The rollout collector against a scripted stand-in simulator and policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lift.types import Observation, StepResult
from vla_rl_lib.policy.base import ActOutput
from vla_rl_lib.rollout.collector import (
    TRAIN_SEED_FLOOR,
    RolloutCollector,
    evaluation_seeds,
    training_episode_seeds,
)


class ScriptedEnv:
    """Episode with seed s lasts 2 + s % 4 steps; even seeds succeed, odd ones truncate."""

    num_envs = 3
    action_dim = 2

    def __init__(self):
        self.seed = np.zeros(self.num_envs, dtype=np.int64)
        self.t = np.zeros(self.num_envs, dtype=np.int64)

    def _obs(self):
        image = np.zeros((self.num_envs, 4, 4, 3), dtype=np.uint8)
        image[:, 0, 0, 0] = self.t  # the policy's value reads the step counter
        image[:, 0, 0, 1] = self.seed % 256
        q = np.zeros((self.num_envs, 9), dtype=np.float32)
        return Observation(image=image, qpos=q, qvel=q)

    def reset(self, seed=None, env_ids=None):
        self.seed[env_ids] = seed
        self.t[env_ids] = 0
        return self._obs()

    def step(self, actions):
        assert actions.shape == (self.num_envs, 2)
        self.t += 1
        length = 2 + self.seed % 4
        end = self.t >= length
        success = end & (self.seed % 2 == 0)
        final = self._obs()
        return StepResult(
            observation=self._obs(),
            reward=success.astype(np.float32),
            terminated=success,
            truncated=end & ~success,
            info={"success": success},
            final_observation=final,
        )

    def render(self, camera, env_ids=None, size=None):
        return np.full((len(env_ids), 8, 8, 3), 7, dtype=np.uint8)


class CountingPolicy:
    """Value = step counter; log-prob = -seed; tokens encode the step counter."""

    action_dim = 2

    def act(self, images, instructions, temperature=1.0, greedy=False):
        t = torch.as_tensor(images[:, 0, 0, 0].astype(np.float32))
        s = torch.as_tensor(images[:, 0, 0, 1].astype(np.float32))
        return ActOutput(
            actions=np.zeros((len(images), 2), dtype=np.float32),
            token_ids=torch.stack([t.long(), t.long()], dim=1),
            log_probs=-s,
            values=t,
        )


def test_plays_exactly_the_given_episodes():
    seeds = [0, 1, 2, 3, 4, 5, 6]
    rollout = RolloutCollector(ScriptedEnv(), CountingPolicy(), "pick").collect(seeds)
    assert [ep.seed for ep in rollout.episodes] == seeds
    lengths = [2 + s % 4 for s in seeds]
    assert [ep.length for ep in rollout.episodes] == lengths
    assert rollout.env_steps == sum(lengths)
    assert [ep.success for ep in rollout.episodes] == [s % 2 == 0 for s in seeds]
    assert rollout.success_rate == pytest.approx(4 / 7)
    # Every episode's steps are contiguous within one env column and end with a done flag.
    done = rollout.terminated | rollout.truncated
    for ep in rollout.episodes:
        t_idx, env_idx = np.nonzero(rollout.episode_index == ep.index)
        assert len(set(env_idx)) == 1 and len(t_idx) == ep.length
        assert np.array_equal(t_idx, np.arange(t_idx[0], t_idx[0] + ep.length))
        assert done[t_idx[-1], env_idx[0]] and not done[t_idx[:-1], env_idx[0]].any()
        assert (rollout.log_probs[t_idx, env_idx] == -ep.seed).all()
    assert not (rollout.terminated & rollout.truncated).any()
    assert not rollout.valid[rollout.episode_index < 0].any()


def test_next_values_bootstrap_truncation_only():
    rollout = RolloutCollector(ScriptedEnv(), CountingPolicy(), "pick").collect([0, 1, 2])
    v, nv = rollout.values, rollout.next_values
    valid = rollout.valid
    running = valid & ~rollout.terminated & ~rollout.truncated
    # Mid-episode: the value one step later is the counter + 1.
    assert np.array_equal(nv[running], v[running] + 1)
    assert (nv[rollout.terminated] == 0).all()
    # A truncated step bootstraps from the value of where it stopped (counter = length).
    t_idx, env_idx = np.nonzero(rollout.truncated)
    assert np.array_equal(nv[t_idx, env_idx], v[t_idx, env_idx] + 1)


def test_fewer_episodes_than_envs_and_frames():
    rollout = RolloutCollector(ScriptedEnv(), CountingPolicy(), "pick").collect(
        [2], record_frames=1
    )
    assert len(rollout.episodes) == 1
    assert rollout.valid[:, 1:].sum() == 0
    assert len(rollout.episodes[0].frames) == rollout.episodes[0].length


def test_seed_streams_are_disjoint_and_reproducible():
    a = training_episode_seeds(0, 5, 8)
    assert a == training_episode_seeds(0, 5, 8)
    assert a != training_episode_seeds(0, 6, 8)
    assert min(a) >= TRAIN_SEED_FLOOR
    assert max(evaluation_seeds(1_000_000, 200)) < TRAIN_SEED_FLOOR
    grouped = training_episode_seeds(0, 0, 6, group_size=3)
    assert grouped[:3] == [grouped[0]] * 3 and grouped[3] != grouped[0]
    with pytest.raises(ValueError, match="multiple of group_size"):
        training_episode_seeds(0, 0, 5, group_size=2)
    with pytest.raises(ValueError, match="held-out range"):
        evaluation_seeds(TRAIN_SEED_FLOOR - 1, 5)


class InstructedEnv(ScriptedEnv):
    """Each episode carries its own instruction in the observation, as PickPlace does."""

    instruction = None

    def _obs(self):
        obs = super()._obs()
        obs.instructions = [f"put cube {s} on plate" for s in self.seed]
        return obs


class RecordingPolicy(CountingPolicy):
    def __init__(self):
        self.seen = []

    def act(self, images, instructions, temperature=1.0, greedy=False):
        self.seen.append((images[:, 0, 0, 1].tolist(), list(instructions)))
        return super().act(images, instructions, temperature, greedy)


def test_each_episode_is_prompted_with_its_own_instruction_through_the_batch():
    from vla_rl_lib.rollout.batch import rollout_to_batch

    policy = RecordingPolicy()
    rollout = RolloutCollector(InstructedEnv(), policy).collect([0, 1, 2, 3, 4, 5, 6])
    for ep in rollout.episodes:
        t_idx, env_idx = np.nonzero(rollout.episode_index == ep.index)
        assert set(rollout.instructions[t_idx, env_idx]) == {f"put cube {ep.seed} on plate"}
    for seeds, texts in policy.seen:
        assert texts == [f"put cube {s} on plate" for s in seeds]
    # The PPO update re-evaluates every sample with the prompt it was acted on.
    batch = rollout_to_batch(rollout, "ppo", 0.99, 0.95)
    assert batch.instructions == [f"put cube {s} on plate" for s in batch.images[:, 0, 0, 1]]
    override = RolloutCollector(InstructedEnv(), CountingPolicy(), "pick").collect([0, 1])
    assert set(override.instructions[override.valid]) == {"pick"}
