"""Which episode each environment plays: the queue of seeded episode starts.

A batch of environments plays a list of episodes, each named by its index and
start seed. ``EpisodeQueue`` hands the next episodes to the environments that
are free, in queue order, remembers which episode each environment plays, and
puts an episode that a simulator fault spoiled back at the front, so that it is
replayed from its own seed before any new episode starts. The rollout
collector and the demonstration recorder (``vla_rl_lib.sft.demos``) both
schedule their episodes through it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

IDLE = -1  # the episode index of an environment that plays nothing


class EpisodeQueue:
    """Episodes ``(index, seed)`` in order, handed to ``num_envs`` environments.

    ``seeds`` may be lazy (the k-th seed starts episode k): the queue draws from it
    only when an environment needs an episode.
    """

    def __init__(self, seeds: Iterable[int], num_envs: int) -> None:
        self._fresh = enumerate(seeds)
        self._again: deque[tuple[int, int]] = deque()  # requeued episodes, played first
        self.playing = np.full(num_envs, IDLE, dtype=np.int64)  # episode index per env
        self.seeds: dict[int, int] = {}  # start seed of every episode handed out, by index
        self.replays: dict[int, int] = {}  # episode index -> times it was requeued

    def assign(self, env_ids: Sequence[int], limit: int | None = None) -> list[tuple[int, int, int]]:
        """The next episodes, one per env of ``env_ids`` in order, as ``(env_id, index, seed)``;
        fewer when the queue runs out or once ``limit`` episodes were handed out."""
        started: list[tuple[int, int, int]] = []
        for env_id in env_ids:
            if limit is not None and len(started) >= limit:
                break
            upcoming = self._again.popleft() if self._again else next(self._fresh, None)
            if upcoming is None:
                break
            index, seed = int(upcoming[0]), int(upcoming[1])
            self.playing[env_id] = index
            self.seeds[index] = seed
            started.append((int(env_id), index, seed))
        return started

    def finish(self, env_id: int) -> None:
        """``env_id`` ended its episode and is free."""
        self.playing[env_id] = IDLE

    def requeue(self, env_ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """Free ``env_ids`` and put their episodes back at the front, in this order, to be
        replayed from their seeds; each as ``(index, seed, times requeued)``."""
        again = []
        for env_id in env_ids:
            index = int(self.playing[env_id])
            self.replays[index] = self.replays.get(index, 0) + 1
            self.playing[env_id] = IDLE
            again.append((index, self.seeds[index]))
        self._again.extendleft(reversed(again))
        return [(index, seed, self.replays[index]) for index, seed in again]

    def active(self, env_ids: np.ndarray | None = None) -> np.ndarray:
        """Whether each env (of ``env_ids``, default all) plays an episode."""
        playing = self.playing if env_ids is None else self.playing[env_ids]
        return playing != IDLE
