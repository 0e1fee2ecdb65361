"""Types shared by every simulator backend.

Every backend speaks the same batched contract: arrays carry a leading
``num_envs`` axis, even when there is one environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from lift.splits import SPLITS, get_split

CONTROL_MODES = ("pd_joint_delta_pos", "pd_joint_pos", "pd_ee_delta_pos")  # the last: MuJoCo only
CAMERAS = ("third_person", "hand_camera")
REWARD_MODES = ("binary", "dense")
OBS_MODES = ("rgb", "state")


@dataclass(frozen=True)
class SimulatorConfig:
    """What a backend needs to build a batched task environment."""

    env_id: str = "Lift-CRANE-X7"
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
    split: str = "train"  # lift.list_splits(env_id) names the env's splits

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
        if self.env_id in SPLITS:
            get_split(self.env_id, self.split)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class Observation:
    """A batched observation. ``image`` is None when ``obs_mode == "state"``.

    ``instructions`` holds each env's instruction for its current episode (None from a
    backend that does not give one: then it is the simulator's ``instruction``).
    ``state`` is the task's privileged state vector where the task defines one
    (PickPlace-CRANE-X7: object, plate and gripper poses and the named pair).
    """

    image: np.ndarray | None  # (N, H, W, 3) uint8
    qpos: np.ndarray  # (N, 9) float32: 7 arm joints, 2 finger joints
    qvel: np.ndarray  # (N, 9) float32
    instructions: list[str] | None = None  # (N,)
    state: np.ndarray | None = None  # (N, S) float32

    def select(self, env_ids: np.ndarray) -> Observation:
        ids = np.asarray(env_ids).reshape(-1)
        return Observation(
            image=None if self.image is None else self.image[env_ids],
            qpos=self.qpos[env_ids],
            qvel=self.qvel[env_ids],
            instructions=None if self.instructions is None else [self.instructions[i] for i in ids],
            state=None if self.state is None else self.state[env_ids],
        )

    def replace_rows(self, env_ids: np.ndarray, rows: Observation) -> Observation:
        """A copy of this batch with the rows ``env_ids`` taken from ``rows`` (one per id)."""
        out = Observation(
            image=None if self.image is None else self.image.copy(),
            qpos=self.qpos.copy(),
            qvel=self.qvel.copy(),
            instructions=None if self.instructions is None else list(self.instructions),
            state=None if self.state is None else self.state.copy(),
        )
        for name in ("image", "qpos", "qvel", "state"):
            target, source = getattr(out, name), getattr(rows, name)
            if target is not None and source is not None:
                target[env_ids] = source
        if out.instructions is not None and rows.instructions is not None:
            for i, text in zip(np.asarray(env_ids).reshape(-1), rows.instructions, strict=True):
                out.instructions[int(i)] = text
        return out


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
