"""PickPlace-CRANE-X7 on MuJoCo: one MjModel, ``num_envs`` MjData stepped in turn."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from lift import task
from lift.simulator import Simulator, validate_actions, validate_env_ids
from lift.types import CAMERAS, Observation, SimulatorConfig, StepResult

GL_HELP = (
    "MuJoCo could not load or open an offscreen OpenGL context (MUJOCO_GL={gl!r}). "
    "For MUJOCO_GL=egl install libegl1 and libgl1-mesa-dri (apt-get install libegl1 libgl1-mesa-dri); "
    "for MUJOCO_GL=osmesa install libosmesa6. Without any GL, set MUJOCO_GL=disable and use "
    "obs_mode='state', which does not render."
)

os.environ.setdefault("MUJOCO_GL", "egl")  # headless by default; must precede `import mujoco`
try:
    import mujoco
except ModuleNotFoundError as error:
    if error.name != "mujoco":
        raise ImportError(GL_HELP.format(gl=os.environ.get("MUJOCO_GL"))) from error
    raise
except (ImportError, AttributeError, OSError) as error:  # mujoco loads the GL library on import
    raise ImportError(GL_HELP.format(gl=os.environ.get("MUJOCO_GL"))) from error

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

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "crane_x7"
SCENE_PATH = ASSETS / "scene_pickplace.xml"


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
    """Batched PickPlace-CRANE-X7. See :class:`lift.simulator.Simulator` for the contract.

    Public attributes for privileged tools (the scripted expert, tests):
    ``model``, ``data`` (one MjData per env), ``joint_targets`` (N, 8: the PD
    targets in force) and ``elapsed_steps`` (N,).
    """

    def __init__(self, config: SimulatorConfig, scene_path: str | Path = SCENE_PATH) -> None:
        if config.env_id != task.ENV_ID:
            raise ValueError(
                f"env_id={config.env_id!r} is not a MuJoCo task; available: [{task.ENV_ID!r}]"
            )
        if config.backend != "cpu":
            raise ValueError(
                f"backend={config.backend!r}: the MuJoCo simulator runs on the CPU only; use backend='cpu'"
            )
        super().__init__(config, task.INSTRUCTION)
        self.model = mujoco.MjModel.from_xml_path(str(scene_path))
        self._set_control_period(config.control_freq)
        self.data = [mujoco.MjData(self.model) for _ in range(config.num_envs)]
        self._find_ids()

        n = config.num_envs
        self.joint_targets = np.zeros((n, task.ACTION_DIM))
        self.elapsed_steps = np.zeros(n, dtype=np.int64)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

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
        cube_joint = m.joint("cube_joint")
        self._cube_qpos_adr = int(cube_joint.qposadr[0])
        self._cube_qvel_adr = int(cube_joint.dofadr[0])
        self.gripper_body = m.body("gripper_base").id
        self.cube_body = m.body("cube").id
        self._cube_geom = m.geom("cube").id
        self._pad_geoms = (m.geom("finger_a_pad").id, m.geom("finger_b_pad").id)
        self._camera_ids = {name: m.camera(name).id for name in CAMERAS}

    # ----------------------------------------------------------------- episodes
    def _start_episodes(self, ids: np.ndarray) -> None:
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

    def step(self, actions: np.ndarray) -> StepResult:
        action = validate_actions(actions, self.num_envs)
        self.joint_targets = task.joint_targets_from_action(
            action, self.joint_targets[:, :7], self.config.control_mode
        )
        unstable = np.zeros(self.num_envs, dtype=bool)
        for i, (d, targets) in enumerate(zip(self.data, self.joint_targets, strict=True)):
            d.ctrl[:] = targets
            for warning in INSTABILITY_WARNINGS:
                d.warning[warning].number = 0
            mujoco.mj_step(self.model, d, nstep=self.substeps)
            unstable[i] = any(d.warning[warning].number for warning in INSTABILITY_WARNINGS)
        self.elapsed_steps += 1

        info = self.task_state()
        info["sim_unstable"] = unstable
        reward, terminated, truncated = self.outcome(info, self.elapsed_steps)

        observation = self._observe()
        final_observation = None
        done_ids = np.flatnonzero(terminated | truncated)
        if self.config.auto_reset and done_ids.size:
            final_observation = observation
            self._start_episodes(done_ids)
            fresh = self._observe(done_ids)
            observation = Observation(
                image=None if observation.image is None else observation.image.copy(),
                qpos=observation.qpos.copy(),
                qvel=observation.qvel.copy(),
            )
            for name in ("image", "qpos", "qvel"):
                rows = getattr(fresh, name)
                if rows is not None:
                    getattr(observation, name)[done_ids] = rows
        return StepResult(
            observation=observation,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            info=info,
            final_observation=final_observation,
        )

    # ----------------------------------------------------------------- state
    def task_state(self) -> dict[str, np.ndarray]:
        """success, is_grasped, cube_height and gripper_to_cube_dist, each (N,)."""
        cube = np.array([d.xpos[self.cube_body] for d in self.data])
        gripper = np.array([d.xpos[self.gripper_body] for d in self.data])
        dist = np.linalg.norm(gripper - cube, axis=1).astype(np.float32)
        height = cube[:, 2].astype(np.float32)
        grasped = np.array([self._pads_touch_cube(d) for d in self.data])
        return {
            "success": task.is_success(height, dist),
            "is_grasped": grasped,
            "cube_height": height,
            "gripper_to_cube_dist": dist,
        }

    def _pads_touch_cube(self, d: mujoco.MjData) -> bool:
        pairs = d.contact.geom[: d.ncon]
        with_cube = pairs[(pairs == self._cube_geom).any(axis=1)]
        return all((with_cube == pad).any() for pad in self._pad_geoms)

    def _observe(self, env_ids: np.ndarray | None = None) -> Observation:
        ids = np.arange(self.num_envs) if env_ids is None else env_ids
        qpos = np.array([self.data[i].qpos[self._qpos_adr] for i in ids], dtype=np.float32)
        qvel = np.array([self.data[i].qvel[self._qvel_adr] for i in ids], dtype=np.float32)
        image = None
        if self.config.obs_mode == "rgb":
            image = self.render(self.config.camera, ids, self.config.image_size)
        return Observation(image=image, qpos=qpos, qvel=qvel)

    def set_cube_pose(self, env_id: int, position: np.ndarray) -> None:
        """Teleport the cube centre of one env (orientation reset, velocity zeroed)."""
        d = self.data[env_id]
        adr = self._cube_qpos_adr
        d.qpos[adr : adr + 7] = [*np.asarray(position, dtype=np.float64), 1.0, 0.0, 0.0, 0.0]
        d.qvel[self._cube_qvel_adr : self._cube_qvel_adr + 6] = 0.0
        mujoco.mj_forward(self.model, d)

    # ----------------------------------------------------------------- rendering
    def render(
        self,
        camera: str = "third_person",
        env_ids: np.ndarray | list[int] | None = None,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        if camera not in self._camera_ids:
            raise ValueError(
                f"camera={camera!r} is unknown; choose one of {sorted(self._camera_ids)}"
            )
        ids = validate_env_ids(env_ids, self.num_envs)
        height, width = self.config.image_size if size is None else size
        renderer = self._renderers.get((height, width))
        if renderer is None:
            renderer = make_renderer(self.model, height, width)
            self._renderers[(height, width)] = renderer
        frames = np.empty((len(ids), height, width, 3), dtype=np.uint8)
        camera_id = self._camera_ids[camera]
        for row, i in enumerate(ids):
            renderer.update_scene(self.data[i], camera=camera_id)
            renderer.render(out=frames[row])
        return frames

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
