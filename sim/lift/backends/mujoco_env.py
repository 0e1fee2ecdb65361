"""Lift-CRANE-X7 and PickPlace-CRANE-X7 on MuJoCo: one MjModel, ``num_envs`` MjData stepped in turn."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from lift import pickplace, task
from lift.simulator import Simulator, check_supported
from lift.types import CAMERAS, CONTROL_MODES, Observation, SimulatorConfig

GL_HELP = (
    "MuJoCo could not load or open an offscreen OpenGL context (MUJOCO_GL={gl!r}). "
    "For MUJOCO_GL=egl install libegl1 and libgl1-mesa-dri (apt-get install libegl1 libgl1-mesa-dri); "
    "for MUJOCO_GL=osmesa install libosmesa6. Without any GL, set MUJOCO_GL=disable and use "
    "obs_mode='state', which does not render."
)

# Headless rendering (EGL) unless the user chose a GL backend. MuJoCo reads MUJOCO_GL once,
# when it is first imported, so this runs before `import mujoco` (lift.expert imports this
# module before mujoco for the same reason). `import lift` alone leaves the environment alone.
os.environ.setdefault("MUJOCO_GL", "egl")
try:
    import mujoco
except ModuleNotFoundError as error:
    if error.name != "mujoco":
        raise ImportError(GL_HELP.format(gl=os.environ.get("MUJOCO_GL"))) from error
    raise
except (ImportError, AttributeError, OSError) as error:  # mujoco loads the GL library on import
    raise ImportError(GL_HELP.format(gl=os.environ.get("MUJOCO_GL"))) from error

from lift.ik import TURN_SPEED, ArmIK, limit_rotation, top_down_orientation  # noqa: E402

# MuJoCo resets an MjData on its own (mj_resetData, then counts the warning) when
# its acceleration, position or velocity turns NaN or huge; the episode then jumps
# back to the model's default pose mid-way. step() reports it as info["sim_unstable"].
INSTABILITY_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
)

log = logging.getLogger(__name__)
# MuJoCo's default warning handler appends to MUJOCO_LOG.TXT in the working directory;
# send its warnings to Python logging instead (unless the process installed its own).
if mujoco.get_mju_user_warning() is None:
    mujoco.set_mju_user_warning(lambda message: log.warning("MuJoCo: %s", message))

ASSETS = task.ASSETS_DIR
SCENE_PATH = ASSETS / "scene_lift.xml"
PICKPLACE_SCENE_PATH = ASSETS / "scene_pickplace.xml"
SCENES = {task.LIFT_ENV_ID: SCENE_PATH, task.PICKPLACE_ENV_ID: PICKPLACE_SCENE_PATH}
# PickPlace state vector: gripper base position and quaternion (7), each cube's position and
# quaternion (7 each), each plate's position (3 each), one-hot named cube, one-hot named plate.
PICKPLACE_STATE_DIM = 7 + 7 * pickplace.NUM_CUBES + 3 * pickplace.NUM_PLATES
PICKPLACE_STATE_DIM += pickplace.NUM_CUBES + pickplace.NUM_PLATES


def make_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """An offscreen renderer with shadows, reflections and multisampling off (the costly parts).

    The offscreen buffer is made exactly the image size: a CPU rasterizer clears the
    whole buffer every frame, so a 640x480 buffer costs ~30% more for 128x128 frames.
    """
    model.vis.global_.offwidth = width
    model.vis.global_.offheight = height
    model.vis.quality.offsamples = 0
    try:
        renderer = mujoco.Renderer(model, height=height, width=width)
    except Exception as error:  # the GL stack fails with many types; name the fix
        raise RuntimeError(GL_HELP.format(gl=os.environ.get("MUJOCO_GL"))) from error
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return renderer


class MujocoPickPlace(Simulator):
    """Batched Lift-CRANE-X7 or PickPlace-CRANE-X7 (``config.env_id``). See
    :class:`lift.simulator.Simulator` for the contract and :mod:`lift.pickplace` for the task.

    Public attributes for privileged tools (the scripted expert, tests):
    ``model``, ``data`` (one MjData per env), ``joint_targets`` (N, 8: the PD
    targets in force), ``elapsed_steps`` (N,), ``named_cube_body`` and
    ``named_plate_body`` (N,: the body ids the current instruction names; Lift: its
    one cube) and, for PickPlace, ``episodes`` (each env's :class:`PickPlaceEpisode`).

    In ``pd_ee_delta_pos`` the action (N, 4) moves ``ee_target`` (N, 3: the gripper-base
    target, world frame; the gripper's position at reset) by ``task.EE_MAX_DELTA *
    action[:, :3]`` inside the workspace box, the orientation target turns toward
    pointing straight down (``lift.ik.TURN_SPEED`` rad a step), and damped least-squares
    IK from the joint targets in force gives the arm's new joint targets.
    """

    def __init__(self, config: SimulatorConfig, scene_path: str | Path | None = None) -> None:
        check_supported(
            config, "MuJoCo", env_ids=tuple(SCENES), backends=("cpu",), control_modes=CONTROL_MODES
        )
        self.pickplace = config.env_id == task.PICKPLACE_ENV_ID
        # PickPlace has no one instruction: each episode's is in Observation.instructions.
        super().__init__(config, None if self.pickplace else task.INSTRUCTION)
        scene = SCENES[config.env_id] if scene_path is None else scene_path
        self.model = mujoco.MjModel.from_xml_path(str(scene))
        self._set_control_period(config.control_freq)
        self.data = [mujoco.MjData(self.model) for _ in range(config.num_envs)]
        self._find_ids()

        n = config.num_envs
        self._unstable = np.zeros(n, dtype=bool)  # per env: MuJoCo reset it in the last step
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self.state_dim = PICKPLACE_STATE_DIM if self.pickplace else None
        self.named_cube_body = np.full(n, self._cube_bodies[0])
        # Until its first reset an env shows the MJCF's placeholder scene with no instruction.
        self.named_plate_body = np.full(n, self._plate_bodies[0] if self.pickplace else -1)
        self.episodes: list[pickplace.PickPlaceEpisode | None] = [None] * n
        self._geom_rgba = np.tile(self.model.geom_rgba, (n, 1, 1))  # per env: colours differ
        self.ee_target = np.zeros((n, 3))
        self._ee_rotation = np.zeros((n, 3, 3))  # the orientation target in force
        self._ee_goal_rotation = np.zeros((n, 3, 3))  # pointing down
        self._ik = ArmIK(self.model) if config.control_mode == task.EE_CONTROL_MODE else None
        if self.pickplace:
            self._apply_split_visuals()

    # ----------------------------------------------------------------- setup
    def _set_control_period(self, control_freq: int) -> None:
        """Physics substeps per control step; the timestep shrinks if it does not divide the period."""
        period = 1.0 / control_freq
        self.substeps = math.ceil(period / self.model.opt.timestep - 1e-9)
        self.model.opt.timestep = period / self.substeps

    def _find_ids(self) -> None:
        m = self.model
        joints = [m.joint(name) for name in task.ARM_JOINT_NAMES + task.FINGER_JOINT_NAMES]
        self._qpos_adr = np.array([j.qposadr[0] for j in joints])
        self._qvel_adr = np.array([j.dofadr[0] for j in joints])
        self.gripper_body = m.body("gripper_base").id
        self._pad_geoms = (m.geom("finger_a_pad").id, m.geom("finger_b_pad").id)
        self._camera_ids = {name: m.camera(name).id for name in CAMERAS}
        cubes = (
            [f"cube_{k}" for k in range(pickplace.NUM_CUBES)] if self.pickplace else ["cube"]
        )
        joints = [m.joint(f"{name}_joint") for name in cubes]
        self._cube_qpos_adrs = np.array([int(j.qposadr[0]) for j in joints])
        self._cube_qvel_adrs = np.array([int(j.dofadr[0]) for j in joints])
        self._cube_bodies = np.array([m.body(name).id for name in cubes])
        self._cube_geoms = np.array([m.geom(name).id for name in cubes])
        # Lift's one cube, under the names privileged tools and tests use.
        self._cube_qpos_adr, self._cube_qvel_adr = self._cube_qpos_adrs[0], self._cube_qvel_adrs[0]
        self.cube_body, self._cube_geom = int(self._cube_bodies[0]), int(self._cube_geoms[0])
        if self.pickplace:
            plates = [f"plate_{k}" for k in range(pickplace.NUM_PLATES)]
            self._plate_bodies = np.array([m.body(name).id for name in plates])
            self._plate_mocap = np.array([int(m.body_mocapid[b]) for b in self._plate_bodies])
            self._plate_geoms = np.array([m.geom(name).id for name in plates])

    def _apply_split_visuals(self) -> None:
        """The split's table tint and light level (the same in every env of this simulator)."""
        m, split = self.model, self.split
        m.mat_rgba[m.geom_matid[m.geom("table").id]] = split.table_rgba
        m.light_diffuse[:] *= split.light_scale
        m.vis.headlight.diffuse[:] = np.asarray(m.vis.headlight.diffuse) * split.light_scale
        m.vis.headlight.ambient[:] = np.asarray(m.vis.headlight.ambient) * split.light_scale

    # ----------------------------------------------------------------- episodes
    def _start_episodes(self, ids: np.ndarray) -> None:
        if self.pickplace:
            self._start_pickplace_episodes(ids)
        else:
            self._start_lift_episodes(ids)
        for i in ids:  # the end-effector target starts where the gripper is
            d = self.data[i]
            self.ee_target[i] = d.xpos[self.gripper_body]
            self._ee_rotation[i] = d.xmat[self.gripper_body].reshape(3, 3)
            self._ee_goal_rotation[i] = top_down_orientation(self._ee_rotation[i][:, 0])

    def _start_lift_episodes(self, ids: np.ndarray) -> None:
        arms, cubes = self._draw_starts(ids)
        for i, arm, cube_xy in zip(ids, arms, cubes, strict=True):
            d = self.data[i]
            mujoco.mj_resetData(self.model, d)
            d.qpos[self._qpos_adr[:7]] = arm
            d.qpos[self._qpos_adr[7:]] = task.REST_FINGER_QPOS
            d.qpos[self._cube_qpos_adr : self._cube_qpos_adr + 7] = [
                cube_xy[0],
                cube_xy[1],
                task.CUBE_HALF_SIZE,
                1.0,
                0.0,
                0.0,
                0.0,
            ]
            d.ctrl[:] = self.joint_targets[i]
            mujoco.mj_forward(self.model, d)

    def _start_pickplace_episodes(self, ids: np.ndarray) -> None:
        for i, episode in zip(ids, self._draw_pickplace_starts(ids), strict=True):
            d = self.data[i]
            mujoco.mj_resetData(self.model, d)
            d.qpos[self._qpos_adr[:7]] = episode.arm_qpos
            d.qpos[self._qpos_adr[7:]] = task.REST_FINGER_QPOS
            for adr, xy in zip(self._cube_qpos_adrs, episode.cube_xy, strict=True):
                d.qpos[adr : adr + 7] = [xy[0], xy[1], pickplace.CUBE_HALF_SIZE, 1.0, 0.0, 0.0, 0.0]
            for mocap, xy in zip(self._plate_mocap, episode.plate_xy, strict=True):
                d.mocap_pos[mocap] = [xy[0], xy[1], pickplace.PLATE_HALF_HEIGHT]
            rgba = self._geom_rgba[i]
            rgba[self._cube_geoms] = [pickplace.PALETTE[c] for c in episode.cube_colours]
            rgba[self._plate_geoms] = [pickplace.PALETTE[c] for c in episode.plate_colours]
            self.named_cube_body[i] = self._cube_bodies[episode.named_cube]
            self.named_plate_body[i] = self._plate_bodies[episode.named_plate]
            self.episodes[i] = episode
            d.ctrl[:] = self.joint_targets[i]
            mujoco.mj_forward(self.model, d)

    def _joint_targets_from_action(self, action: np.ndarray) -> np.ndarray:
        if self._ik is None:
            return super()._joint_targets_from_action(action)
        self.ee_target = task.ee_targets_from_action(action, self.ee_target)
        targets = np.empty_like(self.joint_targets)
        for i, d in enumerate(self.data):
            self._ee_rotation[i] = limit_rotation(
                self._ee_goal_rotation[i], self._ee_rotation[i], TURN_SPEED
            )
            targets[i, :7] = self._ik.solve(
                d.qpos, self.joint_targets[i, :7], self.ee_target[i], self._ee_rotation[i]
            )
        targets[:, 7] = task.gripper_target(action[:, 3])
        return targets

    def _apply_targets(self, action: np.ndarray) -> None:
        unstable = np.zeros(self.num_envs, dtype=bool)
        for i, (d, targets) in enumerate(zip(self.data, self.joint_targets, strict=True)):
            d.ctrl[:] = targets
            for warning in INSTABILITY_WARNINGS:
                d.warning[warning].number = 0
            mujoco.mj_step(self.model, d, nstep=self.substeps)
            unstable[i] = any(d.warning[warning].number for warning in INSTABILITY_WARNINGS)
        self._unstable = unstable

    def _task_state(self) -> dict[str, np.ndarray]:
        info = self.task_state()
        info["sim_unstable"] = self._unstable
        return info

    # ----------------------------------------------------------------- state
    def task_state(self) -> dict[str, np.ndarray]:
        """success, is_grasped, cube_height and gripper_to_cube_dist, each (N,), for the
        (named) cube. PickPlace adds cube_to_target_dist (horizontal, named cube to named
        plate), finger_opening (the less open finger, rad), named_cube and named_plate (slot
        indices), cube_pos (N, 2, 3), plate_pos (N, 2, 3) and gripper_pos (N, 3)."""
        cube = np.array([d.xpos[b] for d, b in zip(self.data, self.named_cube_body, strict=True)])
        gripper = np.array([d.xpos[self.gripper_body] for d in self.data])
        dist = np.linalg.norm(gripper - cube, axis=1).astype(np.float32)
        height = cube[:, 2].astype(np.float32)
        named_geoms = self._cube_geoms[np.searchsorted(self._cube_bodies, self.named_cube_body)]
        grasped = np.array(
            [self._pads_touch_cube(d, g) for d, g in zip(self.data, named_geoms, strict=True)]
        )
        if not self.pickplace:
            return {
                "success": task.is_success(height, dist),
                "is_grasped": grasped,
                "cube_height": height,
                "gripper_to_cube_dist": dist,
            }
        plate = np.array([d.xpos[b] for d, b in zip(self.data, self.named_plate_body, strict=True)])
        to_target = np.linalg.norm(cube[:, :2] - plate[:, :2], axis=1).astype(np.float32)
        opening = np.array([d.qpos[self._qpos_adr[7:]].min() for d in self.data], dtype=np.float32)
        return {
            "success": pickplace.is_success(to_target, height, grasped, opening, dist),
            "is_grasped": grasped,
            "cube_height": height,
            "gripper_to_cube_dist": dist,
            "cube_to_target_dist": to_target,
            "finger_opening": opening,
            "named_cube": np.array([e.named_cube if e else -1 for e in self.episodes]),
            "named_plate": np.array([e.named_plate if e else -1 for e in self.episodes]),
            "cube_pos": np.array([d.xpos[self._cube_bodies] for d in self.data], dtype=np.float32),
            "plate_pos": np.array([d.xpos[self._plate_bodies] for d in self.data], dtype=np.float32),
            "gripper_pos": gripper.astype(np.float32),
        }

    def _pads_touch_cube(self, d: mujoco.MjData, cube_geom: int) -> bool:
        pairs = d.contact.geom[: d.ncon]
        with_cube = pairs[(pairs == cube_geom).any(axis=1)]
        return all((with_cube == pad).any() for pad in self._pad_geoms)

    def _observe(self, env_ids: np.ndarray | None = None) -> Observation:
        ids = np.arange(self.num_envs) if env_ids is None else env_ids
        qpos = np.array([self.data[i].qpos[self._qpos_adr] for i in ids], dtype=np.float32)
        qvel = np.array([self.data[i].qvel[self._qvel_adr] for i in ids], dtype=np.float32)
        image = None
        if self.config.obs_mode == "rgb":
            image = self.render(self.config.camera, ids, self.config.image_size)
        if not self.pickplace:
            return Observation(image, qpos, qvel, instructions=[self.instruction] * len(ids))
        return Observation(
            image,
            qpos,
            qvel,
            instructions=[e.instruction if e else "" for e in (self.episodes[i] for i in ids)],
            state=np.stack([self._state_vector(i) for i in ids]),
        )

    def _state_vector(self, i: int) -> np.ndarray:
        """PickPlace's privileged state of env ``i`` (layout: ``PICKPLACE_STATE_DIM``)."""
        d, episode = self.data[i], self.episodes[i]
        gripper_quat = np.zeros(4)
        mujoco.mju_mat2Quat(gripper_quat, d.xmat[self.gripper_body])
        cubes = [np.concatenate([d.xpos[b], d.xquat[b]]) for b in self._cube_bodies]
        named = np.zeros(pickplace.NUM_CUBES + pickplace.NUM_PLATES)
        if episode is not None:
            named[episode.named_cube] = 1.0
            named[pickplace.NUM_CUBES + episode.named_plate] = 1.0
        parts = [d.xpos[self.gripper_body], gripper_quat, *cubes, d.xpos[self._plate_bodies].ravel(), named]
        return np.concatenate(parts).astype(np.float32)

    def cube_pose(self) -> np.ndarray:
        """(N, 7): the (named) cube's centre position and orientation quaternion (w, x, y, z)."""
        return np.array(
            [
                np.concatenate([d.xpos[b], d.xquat[b]])
                for d, b in zip(self.data, self.named_cube_body, strict=True)
            ]
        )

    def set_cube_pose(self, env_id: int, position: np.ndarray) -> None:
        """Teleport the (named) cube centre of one env (orientation reset, velocity zeroed)."""
        d = self.data[env_id]
        slot = int(np.flatnonzero(self._cube_bodies == self.named_cube_body[env_id])[0])
        adr, vel_adr = self._cube_qpos_adrs[slot], self._cube_qvel_adrs[slot]
        d.qpos[adr : adr + 7] = [*np.asarray(position, dtype=np.float64), 1.0, 0.0, 0.0, 0.0]
        d.qvel[vel_adr : vel_adr + 6] = 0.0
        mujoco.mj_forward(self.model, d)

    # ----------------------------------------------------------------- rendering
    def _render(self, camera: str, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        height, width = size
        renderer = self._renderers.get((height, width))
        if renderer is None:
            renderer = make_renderer(self.model, height, width)
            self._renderers[(height, width)] = renderer
        frames = np.empty((len(ids), height, width, 3), dtype=np.uint8)
        camera_id = self._camera_ids[camera]
        for row, i in enumerate(ids):
            if self.pickplace:  # one model for all envs: show this env's colours
                self.model.geom_rgba[:] = self._geom_rgba[i]
            renderer.update_scene(self.data[i], camera=camera_id)
            renderer.render(out=frames[row])
        return frames

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
