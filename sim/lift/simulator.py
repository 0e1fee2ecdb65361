"""The batched simulator contract every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from lift import pickplace, task
from lift.splits import SPLITS, get_split
from lift.task import ACTION_DIM
from lift.types import CAMERAS, CONTROL_MODES, Observation, SimulatorConfig, StepResult


class Simulator(ABC):
    """``num_envs`` copies of one task, stepped together.

    Every array has a leading ``num_envs`` axis. Episode starts are seeded:
    ``reset(seed=s)`` sets a base seed, and the k-th episode started after it
    (counted across envs, in env order) draws its start from
    ``(s, seed_stream, k)``, so runs are reproducible and every start differs.
    Use ``seed_stream=0`` for training and another stream (e.g. 1) for held-out
    evaluation.

    A backend implements the engine's part only: :meth:`_start_episodes`,
    :meth:`_apply_targets`, :meth:`_task_state`, :meth:`_observe`, :meth:`_render` and
    :meth:`task_state` (and :meth:`cube_pose` / :meth:`set_cube_pose` for tools that
    need them). :meth:`step`, :meth:`reset`, :meth:`render` and the reward rules
    (:meth:`outcome`) are the same for every engine.
    """

    action_dim: int = ACTION_DIM  # set from config.control_mode (lift.task.action_dim)
    state_dim: int | None = None  # length of Observation.state where the task defines one

    def __init__(self, config: SimulatorConfig, instruction: str | None) -> None:
        """``instruction``: the task's one instruction, or None when each episode has its own
        (then ``Observation.instructions`` carries them). ``config.split`` picks the
        distribution of episode starts (:func:`lift.list_splits`)."""
        self.config = config
        self.instruction = instruction
        self.action_dim = task.action_dim(config.control_mode)
        # A task without named splits (a simulator registered for its own env id) has one stream.
        self.split = get_split(config.env_id, config.split) if config.env_id in SPLITS else None
        self._base_seed = config.seed
        self._seed_stream = 0
        self._episode_counter = 0
        # The PD targets in force (N, 8: 7 arm joints, gripper) and each env's step count.
        self.joint_targets = np.zeros((config.num_envs, ACTION_DIM))
        self.elapsed_steps = np.zeros(config.num_envs, dtype=np.int64)

    @property
    def num_envs(self) -> int:
        return self.config.num_envs

    def reset(
        self,
        seed: int | None = None,
        env_ids: np.ndarray | list[int] | None = None,
        seed_stream: int | None = None,
    ) -> Observation:
        """Start new episodes in ``env_ids`` (all when None) and return the whole batch.

        ``seed`` restarts the episode counter from a new base seed; ``seed_stream``
        (kept until changed) selects an independent sequence of starts.
        """
        for name, value in (("seed", seed), ("seed_stream", seed_stream)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
                raise ValueError(f"{name}={value!r} is invalid: give a non-negative int")
        if seed is not None:
            self._base_seed = int(seed)
        if seed_stream is not None:
            self._seed_stream = int(seed_stream)
        if seed is not None or seed_stream is not None:
            self._episode_counter = 0
        ids = validate_env_ids(env_ids, self.num_envs)
        self._start_episodes(ids)
        return self._observe()

    def _draw_starts(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next seeded starts for ``ids``: arm joints (k, 7) and cube xy (k, 2).

        Advances the episode counter in env order and sets each env's PD targets
        (arm, gripper open) and step counter; the backend then places the state.
        """
        arms, cubes = np.zeros((len(ids), 7)), np.zeros((len(ids), 2))
        for k, i in enumerate(ids):
            arms[k], cubes[k] = task.sample_initial_state(self._next_episode_rng())
            self._start_targets(i, arms[k])
        return arms, cubes

    def _draw_pickplace_starts(self, ids: np.ndarray) -> list[pickplace.PickPlaceEpisode]:
        """Like :meth:`_draw_starts`, for PickPlace-CRANE-X7: each env's whole episode start."""
        episodes = []
        for i in ids:
            episode = pickplace.sample_episode(self._next_episode_rng(), self.split)
            self._start_targets(i, episode.arm_qpos)
            episodes.append(episode)
        return episodes

    def _next_episode_rng(self) -> np.random.Generator:
        split_stream = 0 if self.split is None else self.split.stream
        rng = task.episode_rng(
            self._base_seed, self._seed_stream, self._episode_counter, split_stream
        )
        self._episode_counter += 1
        return rng

    def _start_targets(self, i: int, arm: np.ndarray) -> None:
        self.joint_targets[i, :7] = arm
        self.joint_targets[i, 7] = task.REST_FINGER_QPOS
        self.elapsed_steps[i] = 0

    @abstractmethod
    def _start_episodes(self, ids: np.ndarray) -> None:
        """Start the next seeded episode in each env of ``ids`` (counter order)."""

    @abstractmethod
    def _observe(self, env_ids: np.ndarray | None = None) -> Observation:
        """The current observation of ``env_ids`` (all envs when None), in that order."""

    @abstractmethod
    def _apply_targets(self, action: np.ndarray) -> None:
        """Advance the engine one control period toward ``self.joint_targets``.

        ``action`` is the validated, clipped action the targets were computed from, for
        engines whose own controller maps actions to targets (ManiSkill).
        """

    def _joint_targets_from_action(self, action: np.ndarray) -> np.ndarray:
        """The PD targets (N, 8) the validated ``action`` asks for (joint modes; a backend
        that supports ``pd_ee_delta_pos`` overrides this with its IK)."""
        return task.joint_targets_from_action(
            action, self.joint_targets[:, :7], self.config.control_mode
        )

    @abstractmethod
    def _task_state(self) -> dict[str, np.ndarray]:
        """The task state after a step (:meth:`task_state` plus engine diagnostics)."""

    def step(self, actions: np.ndarray) -> StepResult:
        """Apply ``actions`` (num_envs, action_dim) in [-1, 1] for one control period.

        The same for every backend: validate the actions, move the PD targets, let the
        engine step (:meth:`_apply_targets`), read the task state (:meth:`_task_state`),
        score it (:meth:`outcome`), then restart finished envs when ``auto_reset`` is on,
        keeping the observation they ended in as ``final_observation``.
        """
        action = validate_actions(actions, self.num_envs, self.action_dim)
        self.joint_targets = self._joint_targets_from_action(action)
        self._apply_targets(action)
        self.elapsed_steps += 1

        info = self._task_state()
        reward, terminated, truncated = self.outcome(info, self.elapsed_steps)

        observation = self._observe()
        final_observation = None
        done_ids = np.flatnonzero(terminated | truncated)
        if self.config.auto_reset and done_ids.size:
            final_observation = observation
            self._start_episodes(done_ids)
            observation = observation.replace_rows(done_ids, self._observe(done_ids))
        # The names are StepResult's fields, in its order.
        return StepResult(observation, reward, terminated, truncated, info, final_observation)

    @abstractmethod
    def task_state(self) -> dict[str, np.ndarray]:
        """success, is_grasped, cube_height and gripper_to_cube_dist, each (N,), for the
        (named) cube as the envs stand now; tasks add their own keys."""

    def cube_pose(self) -> np.ndarray:
        """(N, 7): the (named) cube's centre position and orientation quaternion (w, x, y, z)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not report cube poses; implement cube_pose() in it"
        )

    def set_cube_pose(self, env_id: int, position: np.ndarray) -> None:
        """Teleport the (named) cube centre of one env (orientation reset, velocity zeroed)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot move the cube; implement set_cube_pose() in it"
        )

    def outcome(
        self, info: dict[str, np.ndarray], elapsed_steps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reward, terminated (success) and truncated (step limit, not on success) from the
        task state in ``info``; adds ``info["elapsed_steps"]``. Backends that simulate the
        task themselves share these rules through here."""
        success = info["success"]
        if self.config.reward_mode == "binary":
            reward = task.binary_success_reward(success)
        elif self.config.env_id == task.PICKPLACE_ENV_ID:
            reward = pickplace.dense_reward(
                info["gripper_to_cube_dist"],
                info["cube_to_target_dist"],
                info["cube_height"],
                info["is_grasped"],
                info["finger_opening"],
                success,
            )
        else:
            reward = task.dense_reward(
                info["gripper_to_cube_dist"], info["cube_height"], info["is_grasped"], success
            )
        terminated = success.copy()
        truncated = (elapsed_steps >= self.config.max_episode_steps) & ~terminated
        info["elapsed_steps"] = elapsed_steps.copy()
        return reward, terminated, truncated

    def render(
        self,
        camera: str = "third_person",
        env_ids: np.ndarray | list[int] | None = None,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """RGB frames (n, H, W, 3) uint8; ``size`` is (height, width), default the config's."""
        if camera not in CAMERAS:
            raise ValueError(f"camera={camera!r} is unknown; choose one of {sorted(CAMERAS)}")
        ids = validate_env_ids(env_ids, self.num_envs)
        return self._render(camera, ids, tuple(self.config.image_size if size is None else size))

    @abstractmethod
    def _render(self, camera: str, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Frames of the valid ``camera`` for the sorted env ``ids`` at ``size`` (height, width)."""

    def get_seed_state(self) -> dict[str, Any]:
        """What :meth:`set_seed_state` needs to continue the same sequence of episode starts."""
        return {
            "base_seed": self._base_seed,
            "seed_stream": self._seed_stream,
            "episode_counter": self._episode_counter,
        }

    def set_seed_state(self, state: dict[str, Any]) -> None:
        """Continue the sequence of episode starts captured by :meth:`get_seed_state`."""
        missing = {"base_seed", "seed_stream", "episode_counter"} - set(state)
        if missing:
            raise ValueError(
                f"seed state lacks {sorted(missing)}; pass what get_seed_state() returned"
            )
        self._base_seed = int(state["base_seed"])
        self._seed_stream = int(state["seed_stream"])
        self._episode_counter = int(state["episode_counter"])

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing here
        """Release renderers and native resources."""

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The modes every backend runs; pd_ee_delta_pos needs IK on the engine's model (MuJoCo only).
JOINT_CONTROL_MODES = tuple(mode for mode in CONTROL_MODES if mode != task.EE_CONTROL_MODE)


def check_control_mode(
    config: SimulatorConfig, engine: str, control_modes: tuple[str, ...] = JOINT_CONTROL_MODES
) -> None:
    """Raise ValueError naming the fix when ``engine`` does not run ``config.control_mode``."""
    if config.control_mode not in control_modes:
        raise ValueError(
            f"control_mode={config.control_mode!r} is not supported by {engine}: use simulator "
            f"'mujoco' for it, or a mode {engine} runs ({' or '.join(map(repr, control_modes))})"
        )


def validate_env_ids(env_ids: np.ndarray | list[int] | None, num_envs: int) -> np.ndarray:
    """Sorted unique env indices; all envs when ``env_ids`` is None."""
    if env_ids is None:
        return np.arange(num_envs)
    ids = np.unique(np.asarray(env_ids, dtype=np.int64).reshape(-1))
    if ids.size and (ids.min() < 0 or ids.max() >= num_envs):
        raise ValueError(f"env_ids {ids.tolist()} out of range: valid ids are 0..{num_envs - 1}")
    return ids


def validate_actions(
    actions: np.ndarray, num_envs: int, action_dim: int = ACTION_DIM
) -> np.ndarray:
    """Actions as float64 (num_envs, action_dim), clipped to [-1, 1]; NaN/inf or a wrong shape raise."""
    array = np.asarray(actions, dtype=np.float64)
    expected = (num_envs, action_dim)
    if array.shape != expected:
        raise ValueError(
            f"actions must have shape (num_envs, action_dim) = {expected}; got {array.shape}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1)).tolist()
        raise ValueError(
            f"actions contain NaN or inf in env rows {rows}; expected finite values of shape {expected}"
        )
    return np.clip(array, -1.0, 1.0)


def check_supported(
    config: SimulatorConfig,
    engine: str,
    env_ids: tuple[str, ...],
    backends: tuple[str, ...],
    control_modes: tuple[str, ...] = JOINT_CONTROL_MODES,
) -> None:
    """Raise ValueError naming the fix when ``engine`` cannot run ``config``'s task, backend
    or control mode."""
    check_control_mode(config, engine, control_modes)
    if config.env_id not in env_ids:
        raise ValueError(
            f"env_id={config.env_id!r} is not a {engine} task; available: {sorted(env_ids)}"
        )
    if config.backend not in backends:
        devices = " or ".join({"cpu": "the CPU", "gpu": "a CUDA GPU"}.get(b, b) for b in backends)
        raise ValueError(
            f"backend={config.backend!r}: {engine} runs on {devices}"
            + (" only" if len(backends) == 1 else "")
            + "; use "
            + " or ".join(f"backend={b!r}" for b in backends)
        )
