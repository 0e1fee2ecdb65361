"""The ManiSkill3 side of Lift-CRANE-X7: the ``crane_x7`` agent and the ``Lift-CRANE-X7`` task.

Importing this module imports mani_skill, sapien and torch and registers both with
ManiSkill3, so ``gym.make("Lift-CRANE-X7", ...)`` works afterwards.
:mod:`lift.backends.maniskill` imports it only when a ManiSkill simulator is built;
``import lift`` never does.

* :class:`CraneX7`: the agent, loaded from the project's own MJCF through
  ``BaseAgent.mjcf_path`` (flattened by :func:`lift.backends._scene.exported_robot_path`).
* :class:`PickPlaceCraneX7Env`: the task. Actions, control modes, success, rewards and
  info keys follow :mod:`lift.task`, exactly as the MuJoCo backend does.

Differences from MuJoCo that follow from PhysX, not from this code: PhysX's joint
friction is a coefficient on the joint's constraint force, not MuJoCo's constant
``frictionloss`` torque, so joint friction is left at 0; the finger mirror
(an equality constraint in MJCF) is a mimic controller driving both fingers;
contacts are PhysX's (physics runs at ``SIM_FREQ`` Hz, 10 substeps per control step).
"""

from __future__ import annotations

import numpy as np

from lift import task
from lift.backends._vulkan import use_project_vulkan
from lift.types import CAMERAS

use_project_vulkan()  # before sapien loads Vulkan

import sapien  # noqa: E402
import torch  # noqa: E402
from mani_skill.agents.base_agent import BaseAgent  # noqa: E402
from mani_skill.agents.controllers import (  # noqa: E402
    PDJointPosController,
    PDJointPosControllerConfig,
    PDJointPosMimicController,
    PDJointPosMimicControllerConfig,
)
from mani_skill.agents.registration import REGISTERED_AGENTS, register_agent  # noqa: E402
from mani_skill.envs.sapien_env import BaseEnv  # noqa: E402
from mani_skill.sensors.camera import CameraConfig  # noqa: E402
from mani_skill.utils.registration import REGISTERED_ENVS, register_env  # noqa: E402
from mani_skill.utils.structs.pose import Pose  # noqa: E402
from mani_skill.utils.structs.types import SimConfig  # noqa: E402

from lift.backends import _scene  # noqa: E402  (sapien before mujoco: the order this was tested in)

SIM_FREQ = 100  # Hz of PhysX steps; the control period (10 Hz) is 10 of them
IS_GRASPED_MIN_FORCE = 1e-3  # N: a pad "touches" the cube when their contact force exceeds this

ARM_FORCE, GRIPPER_FORCE = _scene.actuator_limits()
STIFFNESS, DAMPING = _scene.pd_gains()


class ClippedJointPosController(PDJointPosController):
    """PD joint position control whose targets never leave the joint ranges.

    In ``pd_joint_delta_pos`` targets accumulate ``0.1 * action`` and are clipped
    to the ranges, as :func:`lift.task.joint_targets_from_action` does.
    """

    def set_action(self, action):
        super().set_action(action)
        low = torch.as_tensor(task.ARM_LOWER, dtype=self._target_qpos.dtype, device=self.device)
        high = torch.as_tensor(task.ARM_UPPER, dtype=self._target_qpos.dtype, device=self.device)
        self._target_qpos = torch.clamp(self._target_qpos, low, high)
        self.set_drive_targets(self._target_qpos)


class ClippedJointPosControllerConfig(PDJointPosControllerConfig):
    controller_cls = ClippedJointPosController


class GripperController(PDJointPosMimicController):
    """One command drives both fingers: -1 open (GRIPPER_OPEN rad), +1 closed (GRIPPER_CLOSED)."""

    def _preprocess_action(self, action):
        # Normalised [-1, 1] maps onto [lower, upper] = [closed, open]; negate so +1 closes.
        return super()._preprocess_action(-action)


class GripperControllerConfig(PDJointPosMimicControllerConfig):
    controller_cls = GripperController


# A re-import (importlib.reload) registers the classes again under the same names.
if "crane_x7" in REGISTERED_AGENTS:
    del REGISTERED_AGENTS["crane_x7"]


@register_agent()
class CraneX7(BaseAgent):
    """The CRANE-X7 from ``lift/assets/crane_x7/crane_x7.xml`` (see lift.backends._scene)."""

    uid = "crane_x7"
    mjcf_path = str(_scene.exported_robot_path())
    fix_root_link = True
    disable_self_collisions = True  # as in the MJCF (robot geoms never touch each other)

    @property
    def _controller_configs(self):
        common = dict(stiffness=STIFFNESS, damping=DAMPING, force_limit=ARM_FORCE, friction=0.0)
        gripper = GripperControllerConfig(
            list(task.FINGER_JOINT_NAMES),
            lower=task.GRIPPER_CLOSED,
            upper=task.GRIPPER_OPEN,
            stiffness=STIFFNESS,
            damping=DAMPING,
            force_limit=GRIPPER_FORCE,
            friction=0.0,
            normalize_action=True,
            mimic={task.FINGER_JOINT_NAMES[1]: {"joint": task.FINGER_JOINT_NAMES[0]}},
        )
        return dict(
            pd_joint_delta_pos=dict(
                arm=ClippedJointPosControllerConfig(
                    list(task.ARM_JOINT_NAMES),
                    lower=-task.MAX_JOINT_DELTA,
                    upper=task.MAX_JOINT_DELTA,
                    use_delta=True,
                    use_target=True,
                    normalize_action=True,
                    **common,
                ),
                gripper=gripper,
            ),
            pd_joint_pos=dict(
                arm=ClippedJointPosControllerConfig(
                    list(task.ARM_JOINT_NAMES),
                    lower=task.ARM_LOWER.tolist(),
                    upper=task.ARM_UPPER.tolist(),
                    normalize_action=True,
                    **common,
                ),
                gripper=gripper,
            ),
        )

    def _after_loading_articulation(self):
        # SAPIEN's MJCF loader derives inertia from geoms; use MuJoCo's compiled values.
        for name, inertial in _scene.body_inertias().items():
            link = self.robot.links_map.get(name)
            if link is None:
                continue
            for obj in link._objs:
                obj.set_mass(max(inertial.mass, 1e-6))
                obj.set_inertia(np.maximum(inertial.inertia, 1e-9).astype(np.float32))
                obj.set_cmass_local_pose(sapien.Pose(inertial.com_pos, inertial.com_quat))
        # The servos' reflected rotor inertia (MJCF armature) on the arm joints. Not on the
        # fingers: PhysX's implicit drives need no armature to stay stable, and 0.1 kg m^2
        # on each 15 g finger made PhysX eject the squeezed 64 g cube (0/10 expert
        # successes with it, 10/10 without).
        armature = _scene.joint_armature()
        for joint in self.robot.active_joints:
            value = armature.get(joint.name, 0.0) if joint.name in task.ARM_JOINT_NAMES else 0.0
            for obj in joint._objs:
                obj.set_armature(np.array([value], dtype=np.float32))
        self.gripper_link = self.robot.links_map[_scene.GRIPPER_BODY]
        self.finger_links = [self.robot.links_map[n] for n in _scene.FINGER_BODIES]
        names = [j.name for j in self.robot.active_joints]
        wanted = list(task.ARM_JOINT_NAMES + task.FINGER_JOINT_NAMES)
        if names != wanted:
            raise RuntimeError(
                f"CRANE-X7 active joints load as {names}; expected {wanted}. "
                "Check lift/assets/crane_x7/crane_x7.xml's body order."
            )


if task.ENV_ID in REGISTERED_ENVS:
    del REGISTERED_ENVS[task.ENV_ID]


@register_env(task.ENV_ID, max_episode_steps=200)
class PickPlaceCraneX7Env(BaseEnv):
    """Pick up the blue cube with the CRANE-X7 (the contract of :mod:`lift.task`).

    Extra keyword arguments: ``camera`` (the observed camera, "third_person" or
    "hand_camera"), ``image_size`` (height, width), ``control_freq`` (Hz).
    ``reset(options={"lift_init": {"arm_qpos": (b, 7), "cube_xy": (b, 2)}})`` starts
    the reset envs from given states (the lift wrapper samples them with
    :func:`lift.task.sample_initial_state`); without it starts are sampled from the
    env's own seeded RNG. Reward modes: "sparse" (1.0 on a success step) and "dense"
    (:func:`lift.task.dense_reward`).
    """

    SUPPORTED_ROBOTS = ["crane_x7"]
    SUPPORTED_REWARD_MODES = ("dense", "normalized_dense", "sparse", "none")
    agent: CraneX7

    def __init__(
        self,
        *args,
        robot_uids="crane_x7",
        camera: str = "third_person",
        image_size: tuple[int, int] = (128, 128),
        control_freq: int = 10,
        **kwargs,
    ):
        if camera not in CAMERAS:
            raise ValueError(f"camera={camera!r} is unknown; choose one of {CAMERAS}")
        self.lift_camera = camera
        self.lift_image_size = tuple(image_size)
        self.lift_control_freq = int(control_freq)
        self._cameras = _scene.cameras()
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    @property
    def _default_sim_config(self):
        sim_freq = max(SIM_FREQ, self.lift_control_freq)
        sim_freq -= sim_freq % self.lift_control_freq
        return SimConfig(sim_freq=sim_freq, control_freq=self.lift_control_freq)

    def _camera_config(self, name: str, uid: str):
        spec = self._cameras[name]
        height, width = self.lift_image_size
        pose = sapien.Pose(spec.pos, _scene.mat_to_quat(spec.forward_left_up()))
        mount = None if spec.body == "world" else self.agent.robot.links_map[spec.body]
        return CameraConfig(
            uid, pose, width, height, np.deg2rad(spec.fovy_deg), 0.01, 10.0, mount=mount
        )

    @property
    def _default_sensor_configs(self):
        return [self._camera_config(self.lift_camera, self.lift_camera)]

    @property
    def _default_human_render_camera_configs(self):
        return [self._camera_config(name, f"render_{name}") for name in CAMERAS]

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=[0.0, 0.0, 0.0]))

    def _load_lighting(self, options: dict):
        self.scene.set_ambient_light([0.4, 0.4, 0.4])
        self.scene.add_directional_light([-0.3, -0.3, -1.0], [0.5, 0.5, 0.5])

    def _load_scene(self, options: dict):
        model = _scene.scene_model()
        table = _scene.table(model)
        builder = self.scene.create_actor_builder()
        builder.add_box_collision(half_size=table.half_size.tolist())
        builder.add_box_visual(
            half_size=table.half_size.tolist(),
            material=sapien.render.RenderMaterial(base_color=table.rgba.tolist()),
        )
        builder.initial_pose = sapien.Pose(p=table.pos.tolist())
        self.table = builder.build_static(name="table")

        floor = _scene.floor(model)  # visual only, as in the MJCF
        if floor is not None:
            builder = self.scene.create_actor_builder()
            builder.add_box_visual(
                half_size=floor.half_size.tolist(),
                material=sapien.render.RenderMaterial(base_color=floor.rgba.tolist()),
            )
            builder.initial_pose = sapien.Pose(p=floor.pos.tolist())
            self.floor = builder.build_static(name="floor")

        half = task.CUBE_HALF_SIZE
        friction = _scene.cube_friction(model)
        material = sapien.physx.PhysxMaterial(friction, friction, 0.0)
        builder = self.scene.create_actor_builder()
        builder.add_box_collision(half_size=[half] * 3, material=material)
        builder.add_box_visual(
            half_size=[half] * 3,
            material=sapien.render.RenderMaterial(base_color=_scene.cube_rgba(model).tolist()),
        )
        builder.initial_pose = sapien.Pose(p=[*task.CUBE_SPAWN_XY, half])
        self.cube = builder.build(name="cube")

    def _initialize_episode(self, env_idx, options: dict):
        b = len(env_idx)
        init = options.get("lift_init")
        if init is None:
            # Seeded per env by ManiSkill's reset(seed=...), as its own tasks are.
            ids = env_idx.cpu().numpy().tolist()
            seeds = np.atleast_1d(self._batched_episode_rng[ids].randint(0, 2**31 - 1))
            starts = [task.sample_initial_state(np.random.default_rng(int(s))) for s in seeds]
            arm = np.stack([s[0] for s in starts])
            cube_xy = np.stack([s[1] for s in starts])
        else:
            arm = np.asarray(init["arm_qpos"], dtype=np.float64).reshape(b, 7)
            cube_xy = np.asarray(init["cube_xy"], dtype=np.float64).reshape(b, 2)
        qpos = np.concatenate([arm, np.full((b, 2), task.REST_FINGER_QPOS)], axis=1)
        with torch.device(self.device):
            self.agent.reset(torch.as_tensor(qpos, dtype=torch.float32))
            p = torch.zeros((b, 3))
            p[:, :2] = torch.as_tensor(cube_xy, dtype=torch.float32)
            p[:, 2] = task.CUBE_HALF_SIZE
            q = torch.zeros((b, 4))
            q[:, 0] = 1.0
            self.cube.set_pose(Pose.create_from_pq(p, q))
            self.cube.set_linear_velocity(torch.zeros((b, 3)))
            self.cube.set_angular_velocity(torch.zeros((b, 3)))

    def lift_task_state(self) -> dict[str, np.ndarray]:
        """success, is_grasped, cube_height, gripper_to_cube_dist as numpy (num_envs,)."""
        cube = self.cube.pose.p
        gripper = self.agent.gripper_link.pose.p
        dist = torch.linalg.norm(gripper - cube, dim=1).cpu().numpy().astype(np.float32)
        height = cube[:, 2].cpu().numpy().astype(np.float32)
        touching = [
            torch.linalg.norm(self.scene.get_pairwise_contact_forces(link, self.cube), dim=1)
            > IS_GRASPED_MIN_FORCE
            for link in self.agent.finger_links
        ]
        grasped = (touching[0] & touching[1]).cpu().numpy()
        return {
            "success": task.is_success(height, dist),
            "is_grasped": grasped,
            "cube_height": height,
            "gripper_to_cube_dist": dist,
        }

    def evaluate(self):
        state = self.lift_task_state()
        return {k: torch.as_tensor(v, device=self.device) for k, v in state.items()}

    def _get_obs_extra(self, info: dict):
        return dict()

    def compute_dense_reward(self, obs, action, info: dict):
        reward = task.dense_reward(
            info["gripper_to_cube_dist"].cpu().numpy(),
            info["cube_height"].cpu().numpy(),
            info["is_grasped"].cpu().numpy(),
            info["success"].cpu().numpy(),
        )
        return torch.as_tensor(reward, device=self.device)

    def compute_normalized_dense_reward(self, obs, action, info: dict):
        return self.compute_dense_reward(obs, action, info) / task.DENSE_SUCCESS_REWARD
