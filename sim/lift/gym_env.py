"""Gymnasium wrapper: ``gymnasium.make("lift/PickPlace-CRANE-X7-v0")`` or ``"lift/Lift-CRANE-X7-v0"``
(after ``import lift``)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from lift.registry import make_env
from lift.task import ENV_ID, STATE_DIM
from lift.types import Observation


class PickPlaceGymEnv(gymnasium.Env):
    """One environment of a lift task with a Dict observation (image, qpos, qvel, and
    ``state`` where the task defines one: PickPlace's object, plate and gripper poses
    and the named pair). ``info["instruction"]`` is the episode's instruction, from
    ``reset`` on.

    Keyword arguments are :class:`lift.types.SimulatorConfig` fields (``env_id``,
    ``split``, ...; ``num_envs`` and ``auto_reset`` are fixed to 1 and False), plus
    ``simulator`` (default "mujoco") and ``render_mode`` ("rgb_array" renders the
    third-person camera).
    The env truncates itself at ``max_episode_steps``. ``reset(options={"seed_stream": 1})``
    selects an independent sequence of episode starts.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        simulator: str = "mujoco",
        render_mode: str | None = None,
        env_id: str = ENV_ID,
        **config: Any,
    ) -> None:
        for fixed in ("num_envs", "auto_reset"):
            if fixed in config:
                raise ValueError(
                    f"{fixed} is fixed for the single-env gymnasium wrapper; "
                    "use lift.make_env for batched envs"
                )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is unsupported; use 'rgb_array' or None")
        self.sim = make_env(simulator, env_id, num_envs=1, auto_reset=False, **config)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.sim.config.control_freq}
        joint_space = spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)
        observation = {"qpos": joint_space, "qvel": joint_space}
        if self.sim.state_dim is not None:
            observation["state"] = spaces.Box(
                -np.inf, np.inf, shape=(self.sim.state_dim,), dtype=np.float32
            )
        if self.sim.config.obs_mode == "rgb":
            height, width = self.sim.config.image_size
            observation["image"] = spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(observation)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.sim.action_dim,), dtype=np.float32)

    @staticmethod
    def _single(observation: Observation) -> dict[str, np.ndarray]:
        single = {"qpos": observation.qpos[0], "qvel": observation.qvel[0]}
        if observation.image is not None:
            single["image"] = observation.image[0]
        if observation.state is not None:
            single["state"] = observation.state[0]
        return single

    def _instruction(self, observation: Observation) -> str:
        return self.sim.instruction if observation.instructions is None else observation.instructions[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        seed_stream = (options or {}).get("seed_stream")
        observation = self.sim.reset(seed=seed, seed_stream=seed_stream)
        return self._single(observation), {"instruction": self._instruction(observation)}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.sim.action_dim,):
            raise ValueError(
                f"action must have shape ({self.sim.action_dim},) for control_mode="
                f"{self.sim.config.control_mode!r}; got {action.shape}"
            )
        result = self.sim.step(action[None])
        info = {key: value[0] for key, value in result.info.items()}
        info["instruction"] = self._instruction(result.observation)
        return (
            self._single(result.observation),
            float(result.reward[0]),
            bool(result.terminated[0]),
            bool(result.truncated[0]),
            info,
        )

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.sim.render("third_person")[0]

    def close(self) -> None:
        self.sim.close()
