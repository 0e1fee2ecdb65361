"""The CRANE-X7 MJCF matches the published numbers (shared/crane_x7_facts.md)."""

from __future__ import annotations

import math
import re

import mujoco
import numpy as np
import pytest

from lift import task
from lift.backends.mujoco_env import ASSETS, SCENE_PATH

# The facts table, copied independently of lift/task.py:
# (joint, parent-relative body offset, axis, lower, upper, effort, link mass)
FACTS = [
    (
        "crane_x7_shoulder_fixed_part_pan_joint",
        (0, 0, 0.041),
        (0, 0, 1),
        -2.74017,
        2.74017,
        10,
        0.253,
    ),
    (
        "crane_x7_shoulder_revolute_part_tilt_joint",
        (0, 0, 0.064),
        (0, -1, 0),
        -1.5708,
        1.5708,
        10,
        0.144,
    ),
    (
        "crane_x7_upper_arm_revolute_part_twist_joint",
        (0, 0, 0.065),
        (0, 0, 1),
        -2.74017,
        2.74017,
        4,
        0.321,
    ),
    (
        "crane_x7_upper_arm_revolute_part_rotate_joint",
        (0, 0, 0.185),
        (0, -1, 0),
        -2.77507,
        0.0000175,
        4,
        0.230,
    ),
    ("crane_x7_lower_arm_fixed_part_joint", (0, 0, 0.121), (0, 0, 1), -2.74017, 2.74017, 4, 0.207),
    (
        "crane_x7_lower_arm_revolute_part_joint",
        (0, 0, 0.129),
        (0, -1, 0),
        -1.5708,
        1.5708,
        4,
        0.140,
    ),
    ("crane_x7_wrist_joint", (0, 0, 0.019), (0, 0, 1), -2.9147, 2.9147, 4, 0.193),
    (
        "crane_x7_gripper_finger_a_joint",
        (-0.012, 0, 0.024),
        (0, -1, 0),
        -0.0873,
        1.5708,
        None,
        0.0158,
    ),
    (
        "crane_x7_gripper_finger_b_joint",
        (0.012, 0, 0.024),
        (0, 1, 0),
        -0.0873,
        1.5708,
        None,
        0.0139,
    ),
]
REST = [0, math.pi / 8, 0, -5 * math.pi / 8, 0, -math.pi / 4, math.pi / 2, 0, 0]


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(SCENE_PATH))


@pytest.mark.parametrize("row", FACTS, ids=[row[0] for row in FACTS])
def test_joint_matches_facts(model: mujoco.MjModel, row: tuple) -> None:
    name, offset, axis, lower, upper, effort, mass = row
    joint = model.joint(name)
    body = joint.bodyid[0]
    assert model.jnt_type[joint.id] == mujoco.mjtJoint.mjJNT_HINGE
    np.testing.assert_allclose(model.body_pos[body], offset, atol=1e-9)
    np.testing.assert_allclose(model.jnt_axis[joint.id], axis, atol=1e-9)
    np.testing.assert_allclose(model.jnt_range[joint.id], [lower, upper], atol=1e-9)
    assert model.jnt_limited[joint.id]
    np.testing.assert_allclose(model.body_mass[body], mass, rtol=1e-6)
    if effort is not None:
        actuator = next(i for i in range(model.nu) if model.actuator_trnid[i, 0] == joint.id)
        np.testing.assert_allclose(model.actuator_forcerange[actuator], [-effort, effort])
        np.testing.assert_allclose(model.actuator_ctrlrange[actuator], [lower, upper])


def test_gains_and_joint_friction(model: mujoco.MjModel) -> None:
    for i in range(model.nu):
        assert model.actuator_gainprm[i, 0] == 1000  # kp
        assert model.actuator_biasprm[i, 1] == -1000
        assert model.actuator_biasprm[i, 2] == -100  # kv
    arm = [model.joint(name).dofadr[0] for name in task.ARM_JOINT_NAMES]
    fingers = [model.joint(name).dofadr[0] for name in task.FINGER_JOINT_NAMES]
    np.testing.assert_allclose(model.dof_frictionloss[arm], 0.2)
    np.testing.assert_allclose(model.dof_frictionloss[fingers], 0.8)
    np.testing.assert_allclose(model.dof_damping[arm + fingers], 1e-6)


def test_one_actuator_drives_mirrored_fingers(model: mujoco.MjModel) -> None:
    assert model.nu == 8
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("rest").id)
    data.ctrl[7] = 0.8
    mujoco.mj_step(model, data, nstep=500)
    a, b = (data.qpos[model.joint(n).qposadr[0]] for n in task.FINGER_JOINT_NAMES)
    assert a == pytest.approx(0.8, abs=0.02)
    assert b == pytest.approx(a, abs=0.005)


def test_gripper_base_is_0624_above_base_when_straight(model: mujoco.MjModel) -> None:
    data = mujoco.MjData(model)
    data.qpos[:] = 0
    data.qpos[model.joint("cube_joint").qposadr[0] + 3] = 1.0
    mujoco.mj_kinematics(model, data)
    np.testing.assert_allclose(data.xpos[model.body("gripper_base").id], [0, 0, 0.624], atol=1e-9)


def test_rest_keyframe_and_task_rest_pose(model: mujoco.MjModel) -> None:
    np.testing.assert_allclose(model.key("rest").qpos[:9], REST, atol=1e-6)
    np.testing.assert_allclose(task.REST_ARM_QPOS, REST[:7])


def test_cameras(model: mujoco.MjModel) -> None:
    hand = model.camera("hand_camera")
    assert model.body(hand.bodyid[0]).name == "gripper_base"
    np.testing.assert_allclose(hand.pos, [0, 0.0445, 0.034])
    vertical = 2 * math.degrees(math.atan(math.tan(math.radians(69 / 2)) * 3 / 4))
    assert model.cam_fovy[hand.id] == pytest.approx(vertical, abs=0.01)
    third = model.camera("third_person")
    np.testing.assert_allclose(third.pos, [0.6, 0.7, 0.6])
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    forward = -data.cam_xmat[third.id].reshape(3, 3)[:, 2]
    toward = np.array([0, 0, 0.35]) - np.array([0.6, 0.7, 0.6])
    np.testing.assert_allclose(forward, toward / np.linalg.norm(toward), atol=1e-3)


def test_radian_compiler_and_no_meshes() -> None:
    robot = (ASSETS / "crane_x7.xml").read_text()
    assert re.search(r'<compiler[^>]*angle="radian"', robot)
    for path in ASSETS.glob("*.xml"):
        text = path.read_text()
        assert "<mesh" not in text and ".stl" not in text.lower() and ".dae" not in text.lower()


def test_cube_and_table(model: mujoco.MjModel) -> None:
    np.testing.assert_allclose(model.geom_size[model.geom("cube").id], [0.02] * 3)
    table = model.geom("table").id
    top = model.geom_pos[table][2] + model.geom_size[table][2]
    assert top == pytest.approx(0.0)
