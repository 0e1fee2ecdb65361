"""Lift-CRANE-X7 on ManiSkill3 (SAPIEN/PhysX), CPU or GPU simulation.

Two layers:

* ``PickPlaceCraneX7Env``: the task registered in ManiSkill3 as ``Lift-CRANE-X7``
  (``gym.make("Lift-CRANE-X7", ...)`` after importing this module), with the
  agent ``crane_x7`` (:class:`CraneX7`) loaded from the project's own MJCF through
  ``BaseAgent.mjcf_path``. Actions, control modes, success, rewards and info keys
  follow :mod:`lift.task`, exactly as the MuJoCo backend does.
* :class:`ManiSkillPickPlace`: the batched :class:`lift.simulator.Simulator`. With
  ``backend="gpu"`` it runs one ManiSkill env holding ``num_envs`` parallel scenes
  (PhysX GPU). With ``backend="cpu"`` ManiSkill allows one env per process, so it
  runs ``num_envs`` worker processes (``spawn``), one env each, stepped in parallel.

Rendering on a CPU needs Mesa 25's lavapipe (Debian 12's own is too old):
``make sims`` (scripts/install_vulkan_lavapipe.sh) puts it in ``.vulkan/``, and this
module points ``VK_ICD_FILENAMES`` at it unless you set that variable yourself.

Differences from MuJoCo that follow from PhysX, not from this code: PhysX's joint
friction is a coefficient on the joint's constraint force, not MuJoCo's constant
``frictionloss`` torque, so joint friction is left at 0; the finger mirror
(an equality constraint in MJCF) is a mimic controller driving both fingers;
contacts are PhysX's (physics runs at ``SIM_FREQ`` Hz, 10 substeps per control step).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from lift import task
from lift.simulator import Simulator, check_supported, validate_env_ids
from lift.types import CAMERAS, Observation, SimulatorConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_ICD = REPO_ROOT / ".vulkan" / "lvp_icd.json"
SIM_FREQ = 100  # Hz of PhysX steps; the control period (10 Hz) is 10 of them
TASK_STATE_KEYS = ("success", "is_grasped", "cube_height", "gripper_to_cube_dist")
IS_GRASPED_MIN_FORCE = 1e-3  # N: a pad "touches" the cube when their contact force exceeds this
RENDER_HELP = (
    "ManiSkill/SAPIEN could not render ({error}). On a machine without a GPU it needs "
    "Mesa 25's lavapipe: run `make sims` (it runs scripts/install_vulkan_lavapipe.sh and "
    "builds .venv-sims), or set VK_ICD_FILENAMES to a working Vulkan ICD json "
    "(now {icd!r}). Or use obs_mode='state', which does not render."
)


def use_project_vulkan() -> None:
    """Point Vulkan at the project's lavapipe when the user has not chosen an ICD."""
    if "VK_ICD_FILENAMES" not in os.environ and PROJECT_ICD.exists():
        os.environ["VK_ICD_FILENAMES"] = str(PROJECT_ICD)


def render_error(error: BaseException | str) -> RuntimeError:
    return RuntimeError(RENDER_HELP.format(error=error, icd=os.environ.get("VK_ICD_FILENAMES")))


# ====================================================================== ManiSkill task
# Everything below imports mani_skill/sapien; it is defined on first use so that the
# module itself imports (and reports a clear error) without them.
_MS: dict[str, Any] = {}


def _maniskill_classes() -> dict[str, Any]:
    """Define and register the agent and the task once per process."""
    if _MS:
        return _MS
    use_project_vulkan()
    import sapien
    import torch
    from mani_skill.agents.base_agent import BaseAgent
    from mani_skill.agents.controllers import (
        PDJointPosController,
        PDJointPosControllerConfig,
        PDJointPosMimicController,
        PDJointPosMimicControllerConfig,
    )
    from mani_skill.agents.registration import REGISTERED_AGENTS, register_agent
    from mani_skill.envs.sapien_env import BaseEnv
    from mani_skill.sensors.camera import CameraConfig
    from mani_skill.utils.registration import REGISTERED_ENVS, register_env
    from mani_skill.utils.structs.pose import Pose
    from mani_skill.utils.structs.types import SimConfig

    from lift.backends import _scene

    arm_force, gripper_force = _scene.actuator_limits()
    stiffness, damping = _scene.pd_gains()

    class ClippedJointPosController(PDJointPosController):
        """PD joint position control whose targets never leave the joint ranges.

        In ``pd_joint_delta_pos`` targets accumulate ``0.1 * action`` and are clipped
        to the ranges, as :func:`lift.task.joint_targets_from_action` does.
        """

        def set_action(self, action):
            super().set_action(action)
            low = torch.as_tensor(task.ARM_LOWER, dtype=self._target_qpos.dtype, device=self.device)
            high = torch.as_tensor(
                task.ARM_UPPER, dtype=self._target_qpos.dtype, device=self.device
            )
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
            common = dict(stiffness=stiffness, damping=damping, force_limit=arm_force, friction=0.0)
            gripper = GripperControllerConfig(
                list(task.FINGER_JOINT_NAMES),
                lower=task.GRIPPER_CLOSED,
                upper=task.GRIPPER_OPEN,
                stiffness=stiffness,
                damping=damping,
                force_limit=gripper_force,
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

    _MS.update(CraneX7=CraneX7, PickPlaceCraneX7Env=PickPlaceCraneX7Env, torch=torch)
    return _MS


# ====================================================================== one ManiSkill env
class _EnvCore:
    """One ManiSkill env of ``k`` scenes, speaking numpy (used in-process or in a worker)."""

    def __init__(self, config: SimulatorConfig, num_scenes: int, sim_backend: str) -> None:
        classes = _maniskill_classes()
        import gymnasium as gym

        self.torch = classes["torch"]
        self.config = config
        self.rgb = config.obs_mode == "rgb"
        try:
            env = gym.make(
                task.ENV_ID,
                num_envs=num_scenes,
                obs_mode="rgb" if self.rgb else "state_dict",
                reward_mode="sparse" if config.reward_mode == "binary" else "dense",
                control_mode=config.control_mode,
                sim_backend=sim_backend,
                render_backend="gpu" if sim_backend == "gpu" else "cpu",
                camera=config.camera,
                image_size=config.image_size,
                control_freq=config.control_freq,
                max_episode_steps=None,
            )
        except RuntimeError as error:  # SAPIEN reports a missing Vulkan device this way
            if "render" in str(error).lower() or "vulkan" in str(error).lower():
                raise render_error(error) from error
            raise
        self.env = env.unwrapped
        self._last_obs: dict | None = None

    # the numpy views --------------------------------------------------------------
    def _np(self, tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    def _pack(self, obs: dict, ids: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
        robot = self.env.agent.robot
        qpos = self._np(robot.get_qpos()).astype(np.float32)
        qvel = self._np(robot.get_qvel()).astype(np.float32)
        image = None
        if self.rgb:
            image = self._np(obs["sensor_data"][self.config.camera]["rgb"]).astype(np.uint8)
        if ids is not None:
            qpos, qvel = qpos[ids], qvel[ids]
            image = None if image is None else image[ids]
        return {"qpos": qpos, "qvel": qvel, "image": image}

    def reset(self, ids: np.ndarray, arm: np.ndarray, cube_xy: np.ndarray) -> dict:
        torch = self.torch
        options = {
            "env_idx": torch.as_tensor(ids, dtype=torch.int64, device=self.env.device),
            "lift_init": {"arm_qpos": arm, "cube_xy": cube_xy},
        }
        obs, _ = self.env.reset(options=options)
        return self._pack(obs, ids)

    def step(self, action: np.ndarray) -> dict:
        torch = self.torch
        act = torch.as_tensor(action, dtype=torch.float32, device=self.env.device)
        obs, _, _, _, info = self.env.step(act)  # the Simulator scores the task itself
        out = self._pack(obs)
        out.update({k: self._np(info[k]).reshape(-1) for k in TASK_STATE_KEYS})
        return out

    def task_state(self) -> dict[str, np.ndarray]:
        return self.env.lift_task_state()

    def cube_pose(self) -> np.ndarray:
        return self._np(self.env.cube.pose.raw_pose).astype(np.float64)

    def set_cube_pose(self, index: int, position: np.ndarray) -> None:
        torch = self.torch
        pose = self.env.cube.pose.raw_pose.clone()
        pose[index, :3] = torch.as_tensor(position, dtype=pose.dtype)
        pose[index, 3:] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=pose.dtype)
        self.env.cube.set_pose(pose)
        zero = torch.zeros_like(self.env.cube.linear_velocity)
        self.env.cube.set_linear_velocity(zero)
        self.env.cube.set_angular_velocity(zero)
        if self.env.gpu_sim_enabled:
            self.env.scene._gpu_apply_all()
            self.env.scene._gpu_fetch_all()

    def render(self, camera: str, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        frames = self._np(self.env.render_rgb_array(f"render_{camera}"))[ids].astype(np.uint8)
        from lift.backends._scene import resize_frames

        return resize_frames(frames, size)

    def close(self) -> None:
        self.env.close()


# ====================================================================== worker processes
def _worker_main(read_fd: int, write_fd: int) -> None:
    """One CPU ManiSkill env per process; answers (command, args) with ("ok"|"error", value).

    Started by :class:`_WorkerPool` as ``python -m lift.backends.maniskill READ_FD WRITE_FD``
    (a fresh interpreter: nothing of the parent's ``__main__`` is re-run, unlike
    multiprocessing's spawn). The first message is the SimulatorConfig.
    """
    from multiprocessing.connection import Connection

    reader, writer = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    config = reader.recv()
    try:
        core = _EnvCore(config, 1, "cpu")
    except BaseException as error:  # report why the env could not be built, then stop
        writer.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))
        return
    writer.send(("ok", None))
    while True:
        try:
            command, args = reader.recv()
        except EOFError:
            break
        if command == "close":
            core.close()
            writer.send(("ok", None))
            break
        try:
            writer.send(("ok", getattr(core, command)(*args)))
        except BaseException as error:
            writer.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class _Worker:
    def __init__(self, config: SimulatorConfig) -> None:
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lift.backends.maniskill", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.writer = Connection(to_child_w, readable=False)
        self.reader = Connection(from_child_r, writable=False)
        self.writer.send(config)

    def receive(self, timeout: float | None = None):
        try:
            if timeout is not None and not self.reader.poll(timeout):
                return _WorkerError(f"no answer within {timeout} s")
            status, value = self.reader.recv()
        except (EOFError, OSError):
            return _WorkerError(f"the worker process died (exit code {self.proc.poll()})")
        return _WorkerError(value) if status == "error" else value

    def shutdown(self) -> None:
        try:
            self.writer.send(("close", ()))
            self.receive(timeout=10)
        except (BrokenPipeError, OSError):
            pass
        self.writer.close()
        self.reader.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=5)


class _WorkerPool:
    """``n`` worker processes, each running one CPU ManiSkill env; calls go out in parallel.

    Lifecycle: started in ``__init__`` (all workers build their env at once), closed by
    :meth:`close` (each worker closes its env and exits; one that does not is terminated),
    and closed at garbage collection or interpreter exit if the owner forgot.
    """

    def __init__(self, config: SimulatorConfig, n: int) -> None:
        self.workers = [_Worker(config) for _ in range(n)]
        self._finalizer = weakref.finalize(self, _shutdown, self.workers)
        started = [w.receive() for w in self.workers]
        failed = [e for e in started if isinstance(e, _WorkerError)]
        if failed:
            self.close()
            message = str(failed[0])
            if any(word in message.lower() for word in ("render", "vulkan")):
                raise render_error(message.strip().splitlines()[-1])
            raise RuntimeError(f"a ManiSkill worker failed to start: {message}")

    def call(self, command: str, args_per_worker: dict[int, tuple]) -> dict[int, Any]:
        for i, args in args_per_worker.items():
            self.workers[i].writer.send((command, args))
        results = {i: self.workers[i].receive() for i in args_per_worker}
        for i, value in results.items():
            if isinstance(value, _WorkerError):
                raise RuntimeError(f"ManiSkill worker {i} failed in {command}: {value}")
        return results

    def close(self) -> None:
        self._finalizer()


class _WorkerError(str):
    pass


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.shutdown()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), int(sys.argv[2]))


# ====================================================================== the Simulator
class ManiSkillPickPlace(Simulator):
    """Batched Lift-CRANE-X7 on ManiSkill3 (PickPlace-CRANE-X7 is not built here yet). See :class:`lift.simulator.Simulator`.

    Seeding, action mapping, rewards, termination and auto-reset behave as in
    :class:`lift.backends.mujoco_env.MujocoPickPlace`; the same seed gives the same
    episode starts (sampled by :mod:`lift.task`) on both. Privileged attributes for
    tools: ``joint_targets`` (N, 8), ``elapsed_steps`` (N,), :meth:`task_state`,
    :meth:`cube_pose`, :meth:`set_cube_pose`.

    ``render(size=...)`` at a size other than the config's image size resizes the
    camera's frame (SAPIEN cameras have a fixed resolution).
    """

    def __init__(self, config: SimulatorConfig) -> None:
        check_supported(config, "ManiSkill", env_ids=(task.ENV_ID,), backends=("cpu", "gpu"))
        super().__init__(config, task.INSTRUCTION)
        use_project_vulkan()
        n = config.num_envs
        self._pool: _WorkerPool | None = None
        self._core: _EnvCore | None = None
        if config.backend == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(
                    "backend='gpu' selects ManiSkill's PhysX GPU simulation, which needs a CUDA GPU "
                    "and a CUDA build of torch; none is available here (torch.cuda.is_available() "
                    "is False). Use backend='cpu'."
                )
            self._core = _EnvCore(config, n, "gpu")
        else:
            self._pool = _WorkerPool(config, n)
        self._obs: Observation | None = None
        self._stepped: dict[str, np.ndarray] = {}  # the task state the last step returned

    # ----------------------------------------------------------------- dispatch
    def _all(self, command: str, args: tuple = ()) -> list[Any]:
        """Run a command on every env; results in env order (GPU: one call, N rows)."""
        if self._core is not None:
            return [getattr(self._core, command)(*args)]
        results = self._pool.call(command, {i: args for i in range(self.num_envs)})
        return [results[i] for i in range(self.num_envs)]

    @staticmethod
    def _stack(parts: list[dict], key: str) -> np.ndarray | None:
        if parts[0][key] is None:
            return None
        return np.concatenate([p[key] for p in parts], axis=0)

    # ----------------------------------------------------------------- episodes
    def _observe(self, env_ids: np.ndarray | None = None) -> Observation:
        return self._obs if env_ids is None else self._obs.select(env_ids)

    def _start_episodes(self, ids: np.ndarray) -> None:
        if ids.size == 0:
            if self._obs is None:
                self._obs = self._empty_observation()
            return
        arms, cubes = self._draw_starts(ids)
        if self._core is not None:
            fresh = self._core.reset(ids, arms, cubes)
        else:
            results = self._pool.call(
                "reset",
                {
                    int(i): (np.array([0]), arms[k : k + 1], cubes[k : k + 1])
                    for k, i in enumerate(ids)
                },
            )
            fresh = {
                key: self._stack([results[int(i)] for i in ids], key)
                for key in ("qpos", "qvel", "image")
            }
        if self._obs is None:
            self._obs = self._empty_observation()
        self._obs = Observation(
            image=None if self._obs.image is None else self._obs.image.copy(),
            qpos=self._obs.qpos.copy(),
            qvel=self._obs.qvel.copy(),
        )
        self._obs.qpos[ids] = fresh["qpos"]
        self._obs.qvel[ids] = fresh["qvel"]
        if self._obs.image is not None:
            self._obs.image[ids] = fresh["image"]

    def _empty_observation(self) -> Observation:
        n = self.num_envs
        image = None
        if self.config.obs_mode == "rgb":
            image = np.zeros((n, *self.config.image_size, 3), dtype=np.uint8)
        return Observation(
            image=image,
            qpos=np.zeros((n, task.STATE_DIM), dtype=np.float32),
            qvel=np.zeros((n, task.STATE_DIM), dtype=np.float32),
        )

    def _apply_targets(self, action: np.ndarray) -> None:
        # ManiSkill's own controllers map the action to the same targets as lift.task.
        if self._core is not None:
            parts = [self._core.step(action)]
        else:
            results = self._pool.call(
                "step", {i: (action[i : i + 1],) for i in range(self.num_envs)}
            )
            parts = [results[i] for i in range(self.num_envs)]
        self._stepped = {key: self._stack(parts, key) for key in TASK_STATE_KEYS}
        self._obs = Observation(
            image=self._stack(parts, "image"),
            qpos=self._stack(parts, "qpos"),
            qvel=self._stack(parts, "qvel"),
        )

    def _task_state(self) -> dict[str, np.ndarray]:
        info = dict(self._stepped)
        info["success"] = info["success"].astype(bool)
        info["is_grasped"] = info["is_grasped"].astype(bool)
        info["cube_height"] = info["cube_height"].astype(np.float32)
        info["gripper_to_cube_dist"] = info["gripper_to_cube_dist"].astype(np.float32)
        return info

    # ----------------------------------------------------------------- state
    def task_state(self) -> dict[str, np.ndarray]:
        """success, is_grasped, cube_height and gripper_to_cube_dist, each (N,)."""
        parts = self._all("task_state")
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def cube_pose(self) -> np.ndarray:
        """(N, 7): cube centre position and orientation quaternion (w, x, y, z)."""
        return np.concatenate(self._all("cube_pose"), axis=0)

    def set_cube_pose(self, env_id: int, position: np.ndarray) -> None:
        """Teleport the cube centre of one env (orientation reset, velocity zeroed)."""
        ids = validate_env_ids([env_id], self.num_envs)
        if self._core is not None:
            self._core.set_cube_pose(int(ids[0]), np.asarray(position, dtype=np.float64))
        else:
            self._pool.call(
                "set_cube_pose", {int(ids[0]): (0, np.asarray(position, dtype=np.float64))}
            )

    # ----------------------------------------------------------------- rendering
    def _render(self, camera: str, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self._core is not None:
            return self._core.render(camera, ids, size)
        results = self._pool.call("render", {int(i): (camera, np.array([0]), size) for i in ids})
        if not ids.size:
            return np.zeros((0, *size, 3), dtype=np.uint8)
        return np.concatenate([results[int(i)] for i in ids], axis=0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._core is not None:
            self._core.close()
            self._core = None
