"""The Lift-CRANE-X7 task and the robot numbers every task shares, independent of any physics engine.

Numbers come from ``shared/crane_x7_facts.md`` (see ``lift/assets/crane_x7/README.md``).
Backends use these functions so that every simulator samples, scores and maps
actions the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

LIFT_ENV_ID = "Lift-CRANE-X7"  # pick up the cube and raise it 12 cm (the quick smoke task)
PICKPLACE_ENV_ID = "PickPlace-CRANE-X7"  # see lift/pickplace.py
ENV_ID = LIFT_ENV_ID  # the default task
ENV_IDS = (LIFT_ENV_ID, PICKPLACE_ENV_ID)
INSTRUCTION = "pick up the blue cube"
# The MJCF files every simulator builds the scenes from (robot, table, objects, cameras).
ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "crane_x7"


def scene_digest() -> str:
    """12 hex digits of sha256 over the scene MJCF files (names and bytes): a moved camera, a
    resized cube or a new light changes it, so data recorded in another scene is not reused."""
    digest = hashlib.sha256()
    for path in sorted(ASSETS_DIR.glob("*.xml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]

ARM_JOINT_NAMES = (
    "crane_x7_shoulder_fixed_part_pan_joint",
    "crane_x7_shoulder_revolute_part_tilt_joint",
    "crane_x7_upper_arm_revolute_part_twist_joint",
    "crane_x7_upper_arm_revolute_part_rotate_joint",
    "crane_x7_lower_arm_fixed_part_joint",
    "crane_x7_lower_arm_revolute_part_joint",
    "crane_x7_wrist_joint",
)
FINGER_JOINT_NAMES = ("crane_x7_gripper_finger_a_joint", "crane_x7_gripper_finger_b_joint")
ARM_LOWER = np.array([-2.74017, -1.5708, -2.74017, -2.77507, -2.74017, -1.5708, -2.9147])
ARM_UPPER = np.array([2.74017, 1.5708, 2.74017, 0.0000175, 2.74017, 1.5708, 2.9147])
FINGER_RANGE = (-0.0873, 1.5708)

ACTION_DIM = 8  # 7 arm joints, then one gripper command
STATE_DIM = 9  # 7 arm joints, then both finger joints

# Rest pose [0, pi/8, 0, -5pi/8, 0, -pi/4, pi/2] with fingers at 0, plus N(0, 0.02) noise.
REST_ARM_QPOS = np.array([0.0, np.pi / 8, 0.0, -5 * np.pi / 8, 0.0, -np.pi / 4, np.pi / 2])
REST_FINGER_QPOS = 0.0
JOINT_NOISE_STD = 0.02

# pd_joint_delta_pos moves each arm target by at most this many radians per step.
MAX_JOINT_DELTA = 0.1
# pd_ee_delta_pos: the action is (dx, dy, dz, gripper); the gripper-base target moves by
# EE_MAX_DELTA * action[:3] metres per control step in the world (robot base) frame.
# The scripted expert's fastest waypoint speed is 0.015 m/step (approach, carry, retreat):
# 0.02 m lets a policy match it at |a| = 0.75, short of saturation, while keeping one
# quantization bin of the action tokens (2 / 256 of the range) at about 0.16 mm.
EE_CONTROL_MODE = "pd_ee_delta_pos"
EE_ACTION_DIM = 4  # dx, dy, dz, then one gripper command
EE_MAX_DELTA = 0.02
# The box the gripper-base target is kept in (world frame, metres): the table area the
# tasks use with margin, from just above the table (the grasp pose is about 6 cm up) to
# well above the carry height; IK far outside it would fold the arm into itself.
EE_WORKSPACE_LOW = np.array([0.0, -0.3, 0.03])
EE_WORKSPACE_HIGH = np.array([0.45, 0.3, 0.40])
# Gripper command -1 -> open, +1 -> closed (finger angle targets, radians).
# Open 1.0 rad leaves >= 48 mm between the pads for the 40 mm cube; closed 0.0 rad
# (the rest pose) is where the fingertips meet, so a held cube is squeezed at the force limit.
GRIPPER_OPEN = 1.0
GRIPPER_CLOSED = 0.0

CUBE_HALF_SIZE = 0.02
CUBE_SPAWN_XY = np.array([0.15, 0.02])
CUBE_SPAWN_JITTER = 0.01  # uniform, each of x and y
SUCCESS_HEIGHT = 0.14  # cube centre z: 0.12 m above its resting height
SUCCESS_DISTANCE = 0.05  # gripper base to cube centre
LIFT_HEIGHT = SUCCESS_HEIGHT - CUBE_HALF_SIZE  # 0.12 m of lift for full progress
DENSE_SUCCESS_REWARD = 5.0


def episode_rng(
    base_seed: int, seed_stream: int, episode_index: int, split_stream: int = 0
) -> np.random.Generator:
    """The generator for one episode start: reproducible, distinct per episode, stream and split.

    ``split_stream`` 0 (every task's ``train`` split) keeps the generator it had before
    splits existed; any other value gives an independent sequence from the same seeds.
    """
    if split_stream == 0:
        return np.random.default_rng([base_seed, seed_stream, episode_index])
    return np.random.default_rng([base_seed, seed_stream, episode_index, split_stream])


def sample_initial_state(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Arm joint positions (7,) and cube centre xy (2,) for a new episode."""
    arm = REST_ARM_QPOS + rng.normal(0.0, JOINT_NOISE_STD, size=7)
    arm = np.clip(arm, ARM_LOWER, ARM_UPPER)
    cube_xy = CUBE_SPAWN_XY + rng.uniform(-CUBE_SPAWN_JITTER, CUBE_SPAWN_JITTER, size=2)
    return arm, cube_xy


def gripper_target(command: np.ndarray) -> np.ndarray:
    """Finger angle target for gripper commands in [-1, 1] (-1 open, +1 closed)."""
    fraction_closed = (np.asarray(command) + 1.0) / 2.0
    return GRIPPER_OPEN + fraction_closed * (GRIPPER_CLOSED - GRIPPER_OPEN)


def gripper_command(target: np.ndarray) -> np.ndarray:
    """Inverse of :func:`gripper_target`."""
    fraction_closed = (np.asarray(target) - GRIPPER_OPEN) / (GRIPPER_CLOSED - GRIPPER_OPEN)
    return fraction_closed * 2.0 - 1.0


def joint_targets_from_action(
    action: np.ndarray, previous_arm_targets: np.ndarray, control_mode: str
) -> np.ndarray:
    """Map clipped actions (N, 8) in [-1, 1] to PD targets (N, 8): 7 arm joints, gripper.

    ``pd_joint_delta_pos``: arm targets move from the previous targets by
    ``0.1 * action`` rad (so holding still is action 0 and gravity sag does not
    accumulate). ``pd_joint_pos``: each arm dim maps [-1, 1] linearly onto the
    joint's range. Arm targets are kept inside the joint ranges.
    """
    arm = action[:, :7]
    if control_mode == "pd_joint_delta_pos":
        arm_targets = previous_arm_targets + MAX_JOINT_DELTA * arm
    elif control_mode == "pd_joint_pos":
        arm_targets = ARM_LOWER + (arm + 1.0) / 2.0 * (ARM_UPPER - ARM_LOWER)
    else:
        raise ValueError(
            f"control_mode={control_mode!r} is unknown: use 'pd_joint_delta_pos' or 'pd_joint_pos'"
        )
    arm_targets = np.clip(arm_targets, ARM_LOWER, ARM_UPPER)
    return np.concatenate([arm_targets, gripper_target(action[:, 7:8])], axis=1)


def action_from_joint_targets(
    arm_targets: np.ndarray,
    gripper: np.ndarray,
    previous_arm_targets: np.ndarray,
    control_mode: str,
) -> np.ndarray:
    """The action (N, 8) that asks for ``arm_targets`` (N, 7), clipped to [-1, 1].

    In ``pd_joint_delta_pos`` a request further than 0.1 rad away is cut to 0.1 rad.
    ``gripper`` (N,) is already a command in [-1, 1].
    """
    if control_mode == "pd_joint_delta_pos":
        arm = (arm_targets - previous_arm_targets) / MAX_JOINT_DELTA
    elif control_mode == "pd_joint_pos":
        arm = 2.0 * (arm_targets - ARM_LOWER) / (ARM_UPPER - ARM_LOWER) - 1.0
    else:
        raise ValueError(
            f"control_mode={control_mode!r} is unknown: use 'pd_joint_delta_pos' or 'pd_joint_pos'"
        )
    action = np.concatenate([arm, np.asarray(gripper).reshape(-1, 1)], axis=1)
    return np.clip(action, -1.0, 1.0)


def action_dim(control_mode: str) -> int:
    """The action width of ``control_mode``: 4 in ``pd_ee_delta_pos``, 8 in the joint modes."""
    return EE_ACTION_DIM if control_mode == EE_CONTROL_MODE else ACTION_DIM


def ee_targets_from_action(action: np.ndarray, previous_targets: np.ndarray) -> np.ndarray:
    """``pd_ee_delta_pos``: the gripper-base targets (N, 3) after clipped actions (N, 4),
    moved by ``EE_MAX_DELTA * action[:, :3]`` and kept in the workspace box."""
    moved = previous_targets + EE_MAX_DELTA * action[:, :3]
    return np.clip(moved, EE_WORKSPACE_LOW, EE_WORKSPACE_HIGH)


def action_from_ee_targets(
    positions: np.ndarray, gripper: np.ndarray, previous_targets: np.ndarray
) -> np.ndarray:
    """The ``pd_ee_delta_pos`` action (N, 4) that asks for gripper-base ``positions`` (N, 3),
    clipped to [-1, 1] (a request further than EE_MAX_DELTA per axis is cut to it)."""
    delta = (positions - previous_targets) / EE_MAX_DELTA
    action = np.concatenate([delta, np.asarray(gripper).reshape(-1, 1)], axis=1)
    return np.clip(action, -1.0, 1.0)


def is_success(cube_height: np.ndarray, gripper_to_cube_dist: np.ndarray) -> np.ndarray:
    return (cube_height >= SUCCESS_HEIGHT) & (gripper_to_cube_dist <= SUCCESS_DISTANCE)


def binary_success_reward(success: np.ndarray) -> np.ndarray:
    return success.astype(np.float32)


def dense_reward(
    gripper_to_cube_dist: np.ndarray,
    cube_height: np.ndarray,
    is_grasped: np.ndarray,
    success: np.ndarray,
) -> np.ndarray:
    """Reaching ``1 - tanh(5 d)`` + lift progress (0..1 over 0.12 m) + grasp bonus
    ``exp(-10 d)`` while grasped; a success step pays ``DENSE_SUCCESS_REWARD`` instead."""
    reaching = 1.0 - np.tanh(5.0 * gripper_to_cube_dist)
    lift = np.clip((cube_height - CUBE_HALF_SIZE) / LIFT_HEIGHT, 0.0, 1.0)
    grasp = np.where(is_grasped, np.exp(-10.0 * gripper_to_cube_dist), 0.0)
    reward = np.where(success, DENSE_SUCCESS_REWARD, reaching + lift + grasp)
    return reward.astype(np.float32)
