"""Every array of a rollout, pinned: the collector's output for fixed seeds must not move.

The hashes were taken from the collector before it was split into the episode
queue, the rollout buffer and the step loop (main at b285b65); a refactor that
changes one bit of any array, or of the episodes, fails here. The scripted
simulator and policy are pure NumPy, so the figures are the same on any machine.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.test_collector import CountingPolicy, InstructedEnv, ScriptedEnv
from vla_rl_lib.rollout.collector import RolloutCollector

ARRAYS = ("images", "instructions", "token_ids", "log_probs", "values", "rewards",
          "terminated", "truncated", "next_values", "valid", "episode_index")  # fmt: skip


class FaultyScriptedEnv(InstructedEnv):
    """Raises at the 4th step; env 1 blows up (NaN joint state) at the 9th."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def step(self, actions):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("injected")
        result = super().step(actions)
        if self.calls == 9:
            result.observation.qpos[1] = np.nan
        return result


def digest(rollout) -> str:
    """One hash over every array (dtype, shape, bytes; the prompts as text) and the episodes."""
    h = hashlib.sha256()
    for name in ARRAYS:
        array = getattr(rollout, name)
        h.update(f"{name}{array.dtype}{array.shape}".encode())
        h.update(repr(array.tolist()).encode() if array.dtype == object else array.tobytes())
    for ep in rollout.episodes:
        frames = None if ep.frames is None else np.stack(ep.frames).tobytes()
        fields = (int(ep.index), int(ep.seed), int(ep.env_id), int(ep.length), float(ep.reward_sum))
        h.update(repr((*fields, bool(ep.success))).encode())
        h.update(b"" if frames is None else frames)
    h.update(str(rollout.sim_faults).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    "make_env, instruction, seeds, record_frames, expected",
    [
        (ScriptedEnv, "pick", list(range(9)), 0, "849c3e66c843d18a"),
        (ScriptedEnv, "pick", list(range(100, 200)), 2, "397f130a1293af1e"),  # past the buffer's first rows
        (InstructedEnv, None, [3, 1, 4, 1, 5, 9, 2, 6], 1, "3d474ba5f5293e57"),
        (FaultyScriptedEnv, None, list(range(20, 32)), 0, "2739297bdc10d578"),
    ],
)
def test_every_rollout_array_is_pinned(make_env, instruction, seeds, record_frames, expected):
    rollout = RolloutCollector(make_env(), CountingPolicy(), instruction).collect(
        seeds, record_frames=record_frames
    )
    assert digest(rollout) == expected
