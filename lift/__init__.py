"""lift: batched robot-arm simulators for the CRANE-X7 pick task.

Usage::

    import lift
    env = lift.make_env("mujoco", "PickPlace-CRANE-X7", num_envs=8)
    obs = env.reset(seed=0)  # training starts: seed_stream 0
    result = env.step(actions)  # actions (8, 8) in [-1, 1]
    held_out = lift.make_env("mujoco", "PickPlace-CRANE-X7", num_envs=8)
    held_out.reset(seed=0, seed_stream=1)  # evaluation starts, disjoint from training

Actions are (num_envs, 8); values outside [-1, 1] are clipped, NaN/inf or a wrong
shape raise ValueError. Dims 0-6 drive the arm joints: ``pd_joint_delta_pos``
moves each PD target by 0.1 rad x action; ``pd_joint_pos`` maps [-1, 1] onto the
joint's range. Dim 7 is the gripper: -1 opens (fingers to 1.0 rad), +1 closes
(0.0 rad), values between are proportional.
"""

from __future__ import annotations

import os

# Headless rendering by default. MuJoCo reads MUJOCO_GL when it is first imported,
# so this must run before any backend imports mujoco; a user's own setting wins.
os.environ.setdefault("MUJOCO_GL", "egl")

from lift.registry import (  # noqa: E402
    create_simulator,
    isaacsim_unavailable,
    list_simulators,
    make_env,
    register_simulator,
)
from lift.simulator import Simulator  # noqa: E402
from lift.task import ENV_ID, INSTRUCTION  # noqa: E402
from lift.types import Observation, SimulatorConfig, StepResult  # noqa: E402

register_simulator("mujoco", "lift.backends.mujoco_env:MujocoPickPlace", requires=("mujoco",))
register_simulator(
    "maniskill",
    "lift.backends.maniskill:ManiSkillPickPlace",
    extra="maniskill",
    requires=("mani_skill", "sapien"),
)
register_simulator(
    "genesis", "lift.backends.genesis:GenesisPickPlace", extra="genesis", requires=("genesis",)
)
register_simulator("isaacsim", isaacsim_unavailable)

GYM_ID = "lift/PickPlace-CRANE-X7-v0"


def _register_gymnasium() -> None:
    import gymnasium

    if GYM_ID not in gymnasium.registry:
        gymnasium.register(id=GYM_ID, entry_point="lift.gym_env:PickPlaceGymEnv")


_register_gymnasium()

__all__ = [
    "ENV_ID",
    "GYM_ID",
    "INSTRUCTION",
    "Observation",
    "Simulator",
    "SimulatorConfig",
    "StepResult",
    "create_simulator",
    "list_simulators",
    "make_env",
    "register_simulator",
]
