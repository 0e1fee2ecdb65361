"""Types shared by every simulator backend.

Every backend speaks the same batched contract: arrays carry a leading
``num_envs`` axis, even when there is one environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

CONTROL_MODES = ("pd_joint_delta_pos", "pd_joint_pos")
CAMERAS = ("third_person", "hand_camera")
REWARD_MODES = ("binary", "dense")
OBS_MODES = ("rgb", "state")


@dataclass(frozen=True)
class SimulatorConfig:
    """What a backend needs to build a batched task environment."""

    env_id: str = "PickPlace-CRANE-X7"
    num_envs: int = 1
    control_mode: str = "pd_joint_delta_pos"
    camera: str = "third_person"
    image_size: tuple[int, int] = (128, 128)  # (height, width)
    obs_mode: str = "rgb"  # "state" skips rendering
    reward_mode: str = "binary"
    max_episode_steps: int = 200
    control_freq: int = 10  # Hz; physics substeps fill the gap
    backend: str = "cpu"  # "cpu" | "gpu" (backends that have one)
    auto_reset: bool = True  # finished envs reset inside step()
    seed: int = 0

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, int):
            object.__setattr__(self, "image_size", (size, size))
        elif isinstance(size, list):
            object.__setattr__(self, "image_size", tuple(size))
        self.validate()

    def validate(self) -> None:
        def bad(name: str, value: object, why: str) -> ValueError:
            return ValueError(f"SimulatorConfig.{name}={value!r} is invalid: {why}")

        if self.num_envs < 1:
            raise bad("num_envs", self.num_envs, "need at least 1 environment")
        if self.control_mode not in CONTROL_MODES:
            raise bad("control_mode", self.control_mode, f"choose one of {CONTROL_MODES}")
        if self.camera not in CAMERAS:
            raise bad("camera", self.camera, f"choose one of {CAMERAS}")
        if self.reward_mode not in REWARD_MODES:
            raise bad("reward_mode", self.reward_mode, f"choose one of {REWARD_MODES}")
        if self.obs_mode not in OBS_MODES:
            raise bad("obs_mode", self.obs_mode, f"choose one of {OBS_MODES}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise bad("image_size", self.image_size, "give (height, width), each at least 8")
        if self.max_episode_steps < 1:
            raise bad("max_episode_steps", self.max_episode_steps, "must be >= 1")
        if self.control_freq < 1:
            raise bad("control_freq", self.control_freq, "must be >= 1 Hz")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class Observation:
    """A batched observation. ``image`` is None when ``obs_mode == "state"``."""

    image: np.ndarray | None  # (N, H, W, 3) uint8
    qpos: np.ndarray  # (N, 9) float32: 7 arm joints, 2 finger joints
    qvel: np.ndarray  # (N, 9) float32

    def select(self, env_ids: np.ndarray) -> Observation:
        return Observation(
            image=None if self.image is None else self.image[env_ids],
            qpos=self.qpos[env_ids],
            qvel=self.qvel[env_ids],
        )


@dataclass
class StepResult:
    """What ``Simulator.step`` returns; every array has a leading N axis.

    ``terminated`` (success) and ``truncated`` (step limit) are kept apart so
    that training bootstraps a truncated episode and not a terminated one.
    With auto-reset, ``observation`` rows of finished envs already show the
    next episode; ``final_observation`` rows show where the finished episode
    ended (rows of running envs equal ``observation``).
    """

    observation: Observation
    reward: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    info: dict[str, np.ndarray] = field(default_factory=dict)
    final_observation: Observation | None = None

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated
