"""Scripted expert for the MuJoCo Lift-CRANE-X7 and PickPlace-CRANE-X7 envs.

It reads the simulator's state (privileged), plans a gripper-base waypoint a
little further along the current phase each control step, solves damped
least-squares IK (:class:`lift.ik.ArmIK`) in joint-target space, and returns the
action in the env's own action space (``pd_joint_delta_pos`` or ``pd_joint_pos``).
In ``pd_ee_delta_pos`` the env solves the IK: the action is the step from the env's
end-effector target to the waypoint.

Phases, per env: approach (above the named cube, gripper open) -> descend ->
close -> lift. Lift-CRANE-X7 ends there. PickPlace-CRANE-X7 goes on: carry (over
the named plate) -> lower (until the cube rests on it) -> release (open) ->
retreat (straight up until the gripper is clear). A dropped cube sends the env
back to approach.
"""

from __future__ import annotations  # noqa: I001 (the order below is deliberate)

# The MuJoCo backend first: it sets the MUJOCO_GL default, which MuJoCo reads when it loads.
from lift.backends.mujoco_env import MujocoPickPlace
import numpy as np

from lift import pickplace, task
from lift.ik import TURN_SPEED, ArmIK, limit_rotation, rotation_error, top_down_orientation

APPROACH, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)
PHASE_NAMES = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")

# Cube centre sits this far below the gripper base origin when the fingers start to
# close: the pads (34..62 mm below the base) cover the cube's side and the palm clears
# its top by 4 mm; the pad tips would reach 2 mm below the table top, so the table
# stops the descent that last bit. The slow rise while closing (below) adds about
# 6 mm, which still leaves about 3 mm of margin under the success rule's 50 mm.
GRASP_DEPTH = 0.040
HOVER_CLEARANCE = 0.07  # approach this far above the grasp pose, then descend straight
LIFT_CUBE_HEIGHT = task.SUCCESS_HEIGHT + 0.03  # aim past the success height

# Waypoint speeds (per 0.1 s control step at 10 Hz): slow enough for smooth, phase-clear demos.
APPROACH_SPEED = 0.015  # m/step
DESCEND_SPEED = 0.008
LIFT_SPEED = 0.01
CLOSE_STEPS = 4  # control steps with the gripper closing before lifting
# While closing, the gripper already rises slowly instead of standing still. An
# image-only policy cloned from a script that pauses sees (nearly) the same frame
# at every paused step, so its most likely action there is "stay": greedy decoding
# then never leaves the grasp pose. A slow rise keeps every step of the demo moving.
CLOSE_RISE_SPEED = 0.0015  # m/step

APPROACH_TOLERANCE = 0.006  # m, actual gripper base to hover point
ORIENTATION_TOLERANCE = 0.05  # rad
DESCEND_TOLERANCE = 0.004  # m

# PickPlace: carry the cube with its bottom 5 cm above the table (clear of the other cube),
# lower it until it rests on the plate, open for RELEASE_STEPS, then rise past the
# success rule's clearance.
CARRY_CUBE_HEIGHT = pickplace.CUBE_HALF_SIZE + 0.05
CARRY_SPEED = 0.015
CARRY_TOLERANCE = 0.006  # m, cube centre to its point above the plate (horizontal)
LOWER_SPEED = 0.008
PLACE_CUBE_HEIGHT = pickplace.REST_HEIGHT + 0.004  # aim the cube just above resting
RELEASE_STEPS = 3
RETREAT_SPEED = 0.015
RETREAT_HEIGHT = pickplace.GRIPPER_CLEARANCE + 0.03  # gripper base above the released cube
DROP_GAP = 0.075  # gripper base this far above the cube while carrying: it was dropped


def move_toward(current: np.ndarray, goal: np.ndarray, max_step: float) -> np.ndarray:
    offset = goal - current
    distance = np.linalg.norm(offset)
    return goal if distance <= max_step else current + offset * (max_step / distance)


class ScriptedExpert:
    """Batched controller: ``ScriptedExpert(env).act()`` -> (N, env.action_dim) actions.

    ``place=False`` stops PickPlace episodes after the lift (grasp and raise, never
    place): what a lift-only policy does, which must score 0 there.

    ``follow_target`` (``pd_ee_delta_pos`` only): each step's waypoint moves from the
    env's end-effector target, wherever whoever drove left it, instead of from the
    script's own previous waypoint. While the expert drives the two are the same
    point (up to float rounding); when a policy drives (DAgger), the action is then
    the expert's step from the current state, at most the phase's speed, instead of
    a jump back to the script's waypoint cut to [-1, 1] axis by axis (which bends
    its direction).
    """

    def __init__(
        self, env: MujocoPickPlace, place: bool = True, follow_target: bool = False
    ) -> None:
        if not isinstance(env, MujocoPickPlace):
            raise TypeError(
                f"ScriptedExpert needs the MuJoCo simulator (lift.make_env('mujoco', ...)); got {type(env).__name__}"
            )
        if follow_target and env.config.control_mode != task.EE_CONTROL_MODE:
            raise ValueError(
                f"follow_target needs control_mode {task.EE_CONTROL_MODE!r} (the env's end-effector "
                f"target), not {env.config.control_mode!r}; leave follow_target off"
            )
        self.env = env
        self.place = place and env.pickplace
        self.follow_target = follow_target
        self._ik = ArmIK(env.model)
        n = env.num_envs
        self.phase = np.full(n, APPROACH)
        self._waypoint = np.zeros((n, 3))
        self._orientation = np.zeros((n, 3, 3))
        self._goal_rotation = np.zeros((n, 3, 3))
        self._close_steps = np.zeros(n, dtype=np.int64)
        self._lift_xy = np.zeros((n, 2))
        self._hold = np.zeros((n, 3))  # where the gripper waits while releasing
        self._release_steps = np.zeros(n, dtype=np.int64)

    # ------------------------------------------------------------------ public
    def act(self) -> np.ndarray:
        """Actions for the current state of every env; new episodes (elapsed 0) restart the script."""
        env = self.env
        waypoints = np.empty((env.num_envs, 3))
        gripper = np.empty(env.num_envs)
        for i in range(env.num_envs):
            if env.elapsed_steps[i] == 0:
                self._start(i)
            elif self.follow_target:
                self._waypoint[i] = env.ee_target[i]
            waypoints[i], gripper[i] = self._act_one(i)
        if env.config.control_mode == task.EE_CONTROL_MODE:
            # The env's own IK turns the gripper down at TURN_SPEED, as the script does.
            return task.action_from_ee_targets(waypoints, gripper, env.ee_target)
        arm_targets = np.stack(
            [
                self._ik.solve(env.data[i].qpos, env.joint_targets[i, :7], waypoints[i], self._orientation[i])
                for i in range(env.num_envs)
            ]
        )
        return task.action_from_joint_targets(
            arm_targets, gripper, env.joint_targets[:, :7], env.config.control_mode
        )

    # ------------------------------------------------------------------ script
    def _start(self, i: int) -> None:
        d = self.env.data[i]
        self.phase[i] = APPROACH
        self._waypoint[i] = d.xpos[self.env.gripper_body]
        current = d.xmat[self.env.gripper_body].reshape(3, 3)
        self._orientation[i] = current
        self._goal_rotation[i] = top_down_orientation(current[:, 0])
        self._close_steps[i] = 0

    def _act_one(self, i: int) -> tuple[np.ndarray, float]:
        """Env ``i``'s next gripper-base waypoint (3,) and gripper command; turns ``_orientation``."""
        env, d = self.env, self.env.data[i]
        gripper_pos = d.xpos[env.gripper_body]
        gripper_rot = d.xmat[env.gripper_body].reshape(3, 3)
        cube = d.xpos[env.named_cube_body[i]]
        goal_rot = self._goal_rotation[i]
        grasp_point = cube + np.array([0.0, 0.0, GRASP_DEPTH])
        hover_point = grasp_point + np.array([0.0, 0.0, HOVER_CLEARANCE])

        if self.phase[i] == APPROACH:
            turned = np.linalg.norm(rotation_error(goal_rot, gripper_rot)) < ORIENTATION_TOLERANCE
            if turned and np.linalg.norm(gripper_pos - hover_point) < APPROACH_TOLERANCE:
                self.phase[i] = DESCEND
        elif self.phase[i] == DESCEND:
            if np.linalg.norm(gripper_pos - grasp_point) < DESCEND_TOLERANCE:
                self.phase[i] = CLOSE
                self._lift_xy[i] = gripper_pos[:2]
        elif self.phase[i] == CLOSE:
            self._close_steps[i] += 1
            if self._close_steps[i] > CLOSE_STEPS:
                self.phase[i] = LIFT
        elif self.phase[i] == LIFT:
            dropped = cube[2] < task.CUBE_HALF_SIZE + 0.01 and gripper_pos[2] > cube[2] + 0.08
            if dropped:
                self.phase[i] = APPROACH
                self._close_steps[i] = 0
            elif self.place and cube[2] >= CARRY_CUBE_HEIGHT - 0.01:
                self.phase[i] = CARRY
        elif self.phase[i] in (CARRY, LOWER):
            if gripper_pos[2] - cube[2] > DROP_GAP:
                self.phase[i] = APPROACH
                self._close_steps[i] = 0
            elif self.phase[i] == CARRY:
                plate = d.xpos[env.named_plate_body[i]]
                if np.linalg.norm(cube[:2] - plate[:2]) < CARRY_TOLERANCE:
                    self.phase[i] = LOWER
            elif cube[2] <= PLACE_CUBE_HEIGHT + 0.002:
                self.phase[i] = RELEASE
                self._hold[i] = self._waypoint[i]
                self._release_steps[i] = 0
        elif self.phase[i] == RELEASE:
            self._release_steps[i] += 1
            if self._release_steps[i] > RELEASE_STEPS:
                self.phase[i] = RETREAT

        phase = self.phase[i]
        if phase == APPROACH:
            goal, speed, command = hover_point, APPROACH_SPEED, -1.0
        elif phase == DESCEND:
            goal, speed, command = grasp_point, DESCEND_SPEED, -1.0
        elif phase == CLOSE:
            goal = np.array([*self._lift_xy[i], LIFT_CUBE_HEIGHT + GRASP_DEPTH])
            speed, command = CLOSE_RISE_SPEED, 1.0
        elif phase == LIFT:
            lift_z = (CARRY_CUBE_HEIGHT if self.place else LIFT_CUBE_HEIGHT) + GRASP_DEPTH
            goal, speed, command = np.array([*self._lift_xy[i], lift_z]), LIFT_SPEED, 1.0
        elif phase in (CARRY, LOWER):
            # Move the gripper so that the cube (wherever it sits in the grasp) is over the plate.
            plate = d.xpos[env.named_plate_body[i]]
            xy = plate[:2] + (gripper_pos[:2] - cube[:2])
            cube_z = CARRY_CUBE_HEIGHT if phase == CARRY else PLACE_CUBE_HEIGHT
            goal = np.array([*xy, cube_z + (gripper_pos[2] - cube[2])])
            speed, command = (CARRY_SPEED if phase == CARRY else LOWER_SPEED), 1.0
        elif phase == RELEASE:
            goal, speed, command = self._hold[i], LOWER_SPEED, -1.0
        else:
            goal = self._hold[i] + np.array([0.0, 0.0, RETREAT_HEIGHT])
            speed, command = RETREAT_SPEED, -1.0
        self._waypoint[i] = move_toward(self._waypoint[i], goal, speed)
        self._orientation[i] = limit_rotation(goal_rot, self._orientation[i], TURN_SPEED)
        return self._waypoint[i], command
