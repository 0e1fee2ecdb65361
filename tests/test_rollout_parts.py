"""The collector's parts: the episode queue (shared with the demo recorder) and the buffer."""

from __future__ import annotations

import itertools

import numpy as np

from vla_rl_lib.rollout.buffer import RolloutBuffer
from vla_rl_lib.rollout.episode_queue import EpisodeQueue


def test_queue_hands_out_episodes_in_order_and_replays_requeued_ones_first():
    queue = EpisodeQueue([10, 11, 12, 13, 14], num_envs=3)
    assert queue.assign([0, 1, 2]) == [(0, 0, 10), (1, 1, 11), (2, 2, 12)]
    assert queue.active().all()
    queue.finish(1)
    assert queue.active().tolist() == [True, False, True]
    assert queue.requeue([2, 0]) == [(2, 12, 1), (0, 10, 1)]  # in the order given
    assert not queue.active().any()
    # Replays come before episode 3; the queue runs out after episode 4.
    assert queue.assign([2, 0, 1]) == [(2, 2, 12), (0, 0, 10), (1, 3, 13)]
    queue.finish(0)
    assert queue.assign([0, 1]) == [(0, 4, 14)]
    assert queue.requeue([0]) == [(4, 14, 1)]
    assert queue.assign([0]) == [(0, 4, 14)]
    assert queue.requeue([0]) == [(4, 14, 2)]  # counted per episode
    assert queue.playing.tolist() == [-1, 3, 2]


def test_queue_limit_and_lazy_seeds():
    drawn = []
    seeds = (drawn.append(k) or 100 + k for k in itertools.count())  # endless: drawn on demand
    queue = EpisodeQueue(seeds, num_envs=4)
    assert queue.assign([0, 1, 2, 3], limit=2) == [(0, 0, 100), (1, 1, 101)]
    assert drawn == [0, 1]
    assert queue.assign([2, 3], limit=0) == []
    assert queue.seeds == {0: 100, 1: 101}


def test_buffer_grows_past_its_capacity_and_keeps_every_row():
    buffer = RolloutBuffer(num_envs=2, action_dim=3, capacity=2)
    for t in range(5):
        row = buffer.row(t, (4, 4, 3), np.dtype(np.uint8))
        row["images"][:] = t
        row["values"][:] = [t, -t]
        row["valid"][0] = True
        row["episode_index"][0] = 7
        row["token_ids"][1] = t
    assert buffer.capacity >= 5 and buffer.length == 5
    arrays = buffer.finish()
    assert arrays["images"].shape == (5, 2, 4, 4, 3)
    assert arrays["images"][:, 0, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert arrays["values"][:, 1].tolist() == [0, -1, -2, -3, -4]
    assert arrays["token_ids"][:, 1].tolist() == [[t] * 3 for t in range(5)]
    assert arrays["instructions"].dtype == object and set(arrays["instructions"].ravel()) == {""}
    assert arrays["next_values"][:, 0].tolist() == [1, 2, 3, 4, 0]  # nothing after the last row
    assert "final_values" not in arrays


def test_invalidate_forgets_one_episode_in_one_column_only():
    buffer = RolloutBuffer(num_envs=2, action_dim=1)
    for t, (first, second) in enumerate([(0, 1), (0, 1), (2, 1), (2, 3)]):
        row = buffer.row(t, (1, 1, 3), np.dtype(np.uint8))
        row["episode_index"][:] = [first, second]
        row["valid"][:] = True
        row["rewards"][:] = 1.0
        row["truncated"][:] = [t == 1, t == 2]
    buffer.invalidate(env_id=1, episode_index=1)
    arrays = buffer.finish()
    assert arrays["episode_index"].tolist() == [[0, -1], [0, -1], [2, -1], [2, 3]]
    assert arrays["valid"][:, 1].tolist() == [False, False, False, True]
    assert arrays["rewards"][:, 1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert not arrays["truncated"][:, 1].any()
    assert arrays["valid"][:, 0].all() and arrays["truncated"][1, 0]  # the other column stays
