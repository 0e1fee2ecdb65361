"""Inverse kinematics for the CRANE-X7 gripper base, shared by the scripted expert and the
``pd_ee_delta_pos`` control mode.

Damped least squares on MuJoCo's body Jacobian, solved *in joint-target space*: it
starts from the PD targets now in force (not the measured joints), so PD lag and
gravity sag do not compound from step to step.
"""

from __future__ import annotations

import mujoco
import numpy as np

from lift import task

IK_ITERATIONS = 3
IK_DAMPING = 0.02
NULLSPACE_GAIN = 0.05  # pull toward the rest pose in the arm's redundant direction
TURN_SPEED = 0.1  # rad per control step: how fast the gripper orientation target turns


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking rotation matrix ``current`` to ``target``."""
    q_target, q_current, q_inv, q_err = (np.zeros(4) for _ in range(4))
    mujoco.mju_mat2Quat(q_target, target.reshape(-1))
    mujoco.mju_mat2Quat(q_current, current.reshape(-1))
    mujoco.mju_negQuat(q_inv, q_current)
    mujoco.mju_mulQuat(q_err, q_target, q_inv)
    if q_err[0] < 0:  # shortest way round
        q_err = -q_err
    velocity = np.zeros(3)
    mujoco.mju_quat2Vel(velocity, q_err, 1.0)
    return velocity


def limit_rotation(target: np.ndarray, current: np.ndarray, max_angle: float) -> np.ndarray:
    """``target`` rotation matrix, or ``current`` turned toward it by at most ``max_angle``."""
    error = rotation_error(target, current)
    angle = np.linalg.norm(error)
    if angle <= max_angle:
        return target
    quat, step = np.zeros(4), np.zeros(4)
    mujoco.mju_axisAngle2Quat(step, error / angle, max_angle)
    mujoco.mju_mat2Quat(quat, current.reshape(-1))
    turned = np.zeros(4)
    mujoco.mju_mulQuat(turned, step, quat)
    matrix = np.zeros(9)
    mujoco.mju_quat2Mat(matrix, turned)
    return matrix.reshape(3, 3)


def top_down_orientation(gripper_x: np.ndarray) -> np.ndarray:
    """Gripper pointing straight down, fingers closing along the world axis nearest ``gripper_x``."""
    candidates = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64)
    x_axis = candidates[np.argmax(candidates @ gripper_x)]
    z_axis = np.array([0.0, 0.0, -1.0])
    y_axis = np.cross(z_axis, x_axis)
    return np.stack([x_axis, y_axis, z_axis], axis=1)


class ArmIK:
    """Damped least-squares IK of the gripper base over the 7 arm joints of ``model``."""

    def __init__(self, model: mujoco.MjModel, iterations: int = IK_ITERATIONS) -> None:
        self.model = model
        self.iterations = iterations
        self._scratch = mujoco.MjData(model)
        self._arm_dofs = np.array([model.joint(n).dofadr[0] for n in task.ARM_JOINT_NAMES])
        self._arm_qpos = np.array([model.joint(n).qposadr[0] for n in task.ARM_JOINT_NAMES])
        self.body = model.body("gripper_base").id
        self._jacp, self._jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))

    def solve(
        self,
        qpos: np.ndarray,
        arm_targets: np.ndarray,
        position: np.ndarray,
        rotation: np.ndarray,
    ) -> np.ndarray:
        """Arm joint targets (7,) near ``arm_targets`` that put the gripper base at the pose.

        ``qpos`` is the env's full state (the non-arm joints, e.g. the fingers, are read
        from it); ``position`` (3,) and ``rotation`` (3, 3) are in the world frame.
        """
        m, scratch, body = self.model, self._scratch, self.body
        jacp, jacr = self._jacp, self._jacr
        scratch.qpos[:] = qpos
        q = np.array(arm_targets, dtype=np.float64)
        for _ in range(self.iterations):
            scratch.qpos[self._arm_qpos] = q
            mujoco.mj_kinematics(m, scratch)
            mujoco.mj_comPos(m, scratch)
            error = np.concatenate(
                [
                    position - scratch.xpos[body],
                    rotation_error(rotation, scratch.xmat[body].reshape(3, 3)),
                ]
            )
            mujoco.mj_jacBody(m, scratch, jacp, jacr, body)
            jac = np.vstack([jacp[:, self._arm_dofs], jacr[:, self._arm_dofs]])
            jjt = jac @ jac.T + IK_DAMPING**2 * np.eye(6)
            pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
            nullspace = (np.eye(7) - pinv @ jac) @ (NULLSPACE_GAIN * (task.REST_ARM_QPOS - q))
            q = np.clip(q + pinv @ error + nullspace, task.ARM_LOWER, task.ARM_UPPER)
        return q
