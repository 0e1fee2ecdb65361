"""One batch of environments held as consecutive groups, each its own simulator.

The overlapped collector steps one group's simulator while the policy picks
the next group's actions, which a single batched simulator (it steps all of
its environments at once) cannot do. ``EnvGroups`` keeps the rest of the code
unaware of the split: it is a ``Simulator`` of ``num_envs`` environments whose
``reset``, ``step`` and ``render`` route each environment to its group and
join the results in environment order, and its episode starts follow the same
seeded sequence as one simulator of ``num_envs`` (the k-th start after a seed,
counted across environments in order, draws from ``(seed, stream, k)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from lift import Simulator
from lift.simulator import validate_actions
from lift.types import Observation, StepResult


def group_sizes(num_envs: int, num_groups: int) -> list[int]:
    """Near-equal consecutive group sizes; never more groups than environments."""
    if num_envs < 1 or num_groups < 1:
        raise ValueError(f"need num_envs >= 1 and num_groups >= 1, got {num_envs} and {num_groups}")
    groups = min(num_groups, num_envs)
    return [num_envs // groups + (g < num_envs % groups) for g in range(groups)]


def join_fields(parts: Sequence[Any]) -> Any:
    """Per-group values of one field joined along the environment axis (None stays None)."""
    if all(p is None for p in parts):
        return None
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    if isinstance(parts[0], (list, tuple)):
        return type(parts[0])(item for part in parts for item in part)
    raise TypeError(f"cannot join per-group values of type {type(parts[0]).__name__}")


def join_observations(parts: Sequence[Observation]) -> Observation:
    return Observation(
        **{f.name: join_fields([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Observation)}
    )


class EnvGroups(Simulator):
    """``groups`` (each a batched simulator of the same task) as one simulator, in order."""

    def __init__(self, groups: Sequence[Simulator]) -> None:
        if not groups:
            raise ValueError("EnvGroups needs at least one simulator")
        first = groups[0]
        super().__init__(
            dataclasses.replace(first.config, num_envs=sum(g.num_envs for g in groups)),
            first.instruction,
        )
        self.groups = list(groups)
        bounds = np.cumsum([0, *(g.num_envs for g in groups)])
        self.group_envs = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def _split(self, env_ids: np.ndarray) -> list[np.ndarray]:
        """Each group's share of the (sorted) batch ``env_ids``, as the group's own indices."""
        return [env_ids[np.isin(env_ids, ids)] - ids[0] for ids in self.group_envs]

    def _start_episodes(self, ids: np.ndarray) -> None:
        for group, local in zip(self.groups, self._split(ids), strict=True):
            if local.size:
                # The group continues this batch's sequence of starts and hands it back.
                group.set_seed_state(self.get_seed_state())
                group.reset(env_ids=local)
                self._episode_counter = group.get_seed_state()["episode_counter"]

    def _observe(self, env_ids: np.ndarray | None = None) -> Observation:
        if env_ids is None:
            return join_observations([group._observe() for group in self.groups])
        return join_observations(
            [group._observe(local) for group, local in zip(self.groups, self._split(env_ids), strict=True) if local.size]
        )

    # A composite: ``step`` below runs each group's own template step (targets, engine,
    # task state, outcome, auto-reset), so the per-engine parts are never called on it.
    def _apply_targets(self, action: np.ndarray) -> None:
        raise NotImplementedError("EnvGroups steps each group whole; call step()")

    def _task_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError("EnvGroups steps each group whole; call step()")

    def task_state(self) -> dict[str, np.ndarray]:
        states = [group.task_state() for group in self.groups]
        return {key: np.concatenate([state[key] for state in states]) for key in states[0]}

    def step(self, actions: np.ndarray) -> StepResult:
        actions = validate_actions(actions, self.num_envs, self.action_dim)
        results = [g.step(actions[ids]) for g, ids in zip(self.groups, self.group_envs, strict=True)]
        finals = [r.observation if r.final_observation is None else r.final_observation for r in results]
        return StepResult(
            observation=join_observations([r.observation for r in results]),
            reward=np.concatenate([r.reward for r in results]),
            terminated=np.concatenate([r.terminated for r in results]),
            truncated=np.concatenate([r.truncated for r in results]),
            info={key: join_fields([r.info[key] for r in results]) for key in results[0].info},
            final_observation=None
            if all(r.final_observation is None for r in results)
            else join_observations(finals),
        )

    def _render(self, camera: str, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        frames = [
            group.render(camera, local, size)
            for group, local in zip(self.groups, self._split(ids), strict=True)
            if local.size
        ]
        if not frames:
            return np.empty((0, *size, 3), dtype=np.uint8)
        return np.concatenate(frames)

    def close(self) -> None:
        for group in self.groups:
            group.close()
