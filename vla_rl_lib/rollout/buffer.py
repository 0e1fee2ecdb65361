"""The time-major (T, N) arrays of one collect, preallocated and filled row by row.

Row ``t`` holds the ``t``-th step of every environment (of each env group: groups
step in lockstep, and a group that has nothing left to play leaves its columns at
the fill). A step no episode played keeps the fill: invalid, no reward, not done.
The buffer starts with room for ``capacity`` rows and doubles when a collect runs
longer. ``invalidate`` turns every recorded step of one episode back into fill,
for an episode a simulator fault spoiled.
"""

from __future__ import annotations

import numpy as np

# name -> (fill, dtype) of the per-step arrays with one value per env (token_ids: one per
# action dimension); images are allocated at the first step, when their size is known.
FIELDS: dict[str, tuple[object, type]] = {
    "instructions": ("", object),  # the prompt the policy saw
    "token_ids": (0, np.int64),
    "log_probs": (0.0, np.float32),
    "values": (0.0, np.float32),
    "rewards": (0.0, np.float32),
    "terminated": (False, bool),
    "truncated": (False, bool),
    "final_values": (0.0, np.float32),  # V(final observation) at a time-limit cut
    "valid": (False, bool),
    "episode_index": (-1, np.int64),
}


class RolloutBuffer:
    """Preallocated per-step arrays of ``num_envs`` environments; ``length`` rows in use."""

    def __init__(self, num_envs: int, action_dim: int, capacity: int = 64) -> None:
        self.num_envs, self.action_dim = num_envs, action_dim
        self.length = 0
        self.images: np.ndarray | None = None
        self.arrays = {name: self._empty(name, capacity) for name in FIELDS}

    def _empty(self, name: str, rows: int) -> np.ndarray:
        fill, dtype = FIELDS[name]
        extra = (self.action_dim,) if name == "token_ids" else ()
        return np.full((rows, self.num_envs, *extra), fill, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.arrays["valid"].shape[0]

    def row(self, t: int, image_shape: tuple[int, ...], image_dtype: np.dtype) -> dict[str, np.ndarray]:
        """Row ``t`` of every array (views to write into, ``images`` included); grows the
        buffer when ``t`` is past its end."""
        if t >= self.capacity:
            grow = max(self.capacity, t + 1 - self.capacity)
            for name, array in self.arrays.items():
                self.arrays[name] = np.concatenate([array, self._empty(name, grow)])
            if self.images is not None:
                pad = np.zeros((grow, *self.images.shape[1:]), dtype=self.images.dtype)
                self.images = np.concatenate([self.images, pad])
        if self.images is None:
            self.images = np.zeros((self.capacity, self.num_envs, *image_shape), dtype=image_dtype)
        self.length = max(self.length, t + 1)
        return {"images": self.images[t], **{name: array[t] for name, array in self.arrays.items()}}

    def invalidate(self, env_id: int, episode_index: int) -> None:
        """Forget every step episode ``episode_index`` recorded in column ``env_id``."""
        column = {name: array[: self.length, env_id] for name, array in self.arrays.items()}
        mine = column["episode_index"] == episode_index
        column["episode_index"][mine] = -1
        column["valid"][mine] = False
        column["rewards"][mine] = 0.0
        column["terminated"][mine] = column["truncated"][mine] = False

    def finish(self) -> dict[str, np.ndarray]:
        """The used rows of every array, and ``next_values``: V(s_{t+1}) of the same env and
        episode, V(final observation) at a time-limit cut, 0 at a termination."""
        if self.images is None:
            raise ValueError("no step was recorded: collect needs at least one seed")
        used = {name: array[: self.length] for name, array in self.arrays.items()}
        used["images"] = self.images[: self.length]
        values = used["values"]
        next_values = np.zeros_like(values)
        next_values[:-1] = values[1:]  # same env, same episode, one step later (if it continued)
        next_values = np.where(used["terminated"] | used["truncated"], 0.0, next_values)
        next_values = np.where(used["truncated"], used.pop("final_values"), next_values)
        used["next_values"] = next_values.astype(np.float32)
        return used
