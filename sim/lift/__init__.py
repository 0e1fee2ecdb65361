"""lift: batched robot-arm simulators for CRANE-X7 tasks.

Tasks: ``Lift-CRANE-X7`` (pick up one blue cube and raise it; the quick smoke task)
and ``PickPlace-CRANE-X7`` (put the named coloured cube on the named plate; see
:mod:`lift.pickplace`). Usage::

    import lift
    env = lift.make_env("mujoco", "PickPlace-CRANE-X7", num_envs=8)
    obs = env.reset(seed=0)  # training starts: seed_stream 0
    obs.instructions  # one instruction per env, e.g. "put the red cube on the green plate"
    result = env.step(actions)  # actions (8, 8) in [-1, 1]
    held_out = lift.make_env("mujoco", "PickPlace-CRANE-X7", num_envs=8, split="test")
    lift.list_splits("PickPlace-CRANE-X7")  # train, val, test, ood_position, ...

Actions are (num_envs, 8); values outside [-1, 1] are clipped, NaN/inf or a wrong
shape raise ValueError. Dims 0-6 drive the arm joints: ``pd_joint_delta_pos``
moves each PD target by 0.1 rad x action; ``pd_joint_pos`` maps [-1, 1] onto the
joint's range. Dim 7 is the gripper: -1 opens (fingers to 1.0 rad), +1 closes
(0.0 rad), values between are proportional.
"""

from __future__ import annotations

import importlib.util

from lift.registry import (
    create_simulator,
    isaacsim_unavailable,
    list_simulators,
    make_env,
    register_simulator,
)
from lift.simulator import Simulator
from lift.splits import list_splits
from lift.task import ENV_ID, ENV_IDS, INSTRUCTION, LIFT_ENV_ID, PICKPLACE_ENV_ID
from lift.types import CONTROL_MODES, Observation, SimulatorConfig, StepResult

register_simulator(
    "mujoco",
    "lift.backends.mujoco_env:MujocoPickPlace",
    requires=("mujoco",),
    control_modes=CONTROL_MODES,  # pd_ee_delta_pos too: its IK runs on the MuJoCo model
)
# ManiSkill3 and Genesis do not build the PickPlace scene yet: make_env refuses it there.
register_simulator(
    "maniskill",
    "lift.backends.maniskill:ManiSkillPickPlace",
    extra="maniskill",
    env_ids=(LIFT_ENV_ID,),
    requires=("mani_skill", "sapien"),
)
register_simulator(
    "genesis",
    "lift.backends.genesis:GenesisPickPlace",
    extra="genesis",
    env_ids=(LIFT_ENV_ID,),
    requires=("genesis",),
)
register_simulator("isaacsim", isaacsim_unavailable)

GYM_ID = "lift/Lift-CRANE-X7-v0"
PICKPLACE_GYM_ID = "lift/PickPlace-CRANE-X7-v0"


def _register_gymnasium() -> None:
    """Make ``gymnasium.make(GYM_ID)`` work: the one side effect of ``import lift``.

    Without gymnasium installed there is nothing to register with, and the rest of
    lift (``make_env``, its types and task constants) works without it.
    """
    if importlib.util.find_spec("gymnasium") is None:
        return
    import gymnasium

    for gym_id, env_id in ((GYM_ID, LIFT_ENV_ID), (PICKPLACE_GYM_ID, PICKPLACE_ENV_ID)):
        if gym_id not in gymnasium.registry:
            gymnasium.register(
                id=gym_id, entry_point="lift.gym_env:PickPlaceGymEnv", kwargs={"env_id": env_id}
            )


_register_gymnasium()

__all__ = [
    "ENV_ID",
    "ENV_IDS",
    "GYM_ID",
    "INSTRUCTION",
    "LIFT_ENV_ID",
    "PICKPLACE_ENV_ID",
    "PICKPLACE_GYM_ID",
    "Observation",
    "Simulator",
    "SimulatorConfig",
    "StepResult",
    "create_simulator",
    "list_simulators",
    "list_splits",
    "make_env",
    "register_simulator",
]
