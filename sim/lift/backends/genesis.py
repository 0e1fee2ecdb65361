"""Lift-CRANE-X7 on Genesis (PickPlace-CRANE-X7 is not built here yet): one scene, ``num_envs`` batched environments.

``backend="cpu"`` runs Genesis on ``gs.cpu``; ``backend="gpu"`` on ``gs.gpu`` (CUDA).
Genesis is initialised once per process (``gs.init``); asking for the other backend
later in the same process is an error that says so.

The robot is the project's own ``lift/assets/crane_x7/crane_x7.xml`` (Genesis reads
MJCF through MuJoCo's compiler, so frames, masses and the finger mirror survive);
table, floor, cube and cameras take their numbers from ``scene_lift.xml`` via
:mod:`lift.backends._scene`. Actions, success, rewards, info keys, seeding and
auto-reset follow :mod:`lift.task` exactly as the MuJoCo backend does.

Kernel cache and first-build cost: Genesis compiles its physics and rendering kernels
(through Quadrants, its Taichi fork) at the first ``scene.build`` on a machine. The
compiled kernels are cached under ``~/.cache/quadrants`` (~9 MB) and ``~/.cache/genesis``
(~11 MB); later processes load them. Measured on the shared 2-core CPU machine, gs.cpu,
4 envs, 128x128 RGB, import + build + first reset:

* empty caches: 109 s (``benchmarks/backends.py --backends genesis --cold-genesis``;
  179 s in another run while other jobs loaded the cores);
* warm caches: 21-24 s.

Delete those folders to force a rebuild; a changed option that alters a kernel
(e.g. the friction cone) compiles again.

Physics options: ``dt`` is ``PHYSICS_DT`` (5 ms, 20 substeps per 10 Hz control step)
and Genesis' default pyramid friction cone without torsional friction; Genesis warns
that the MJCF asks for an elliptic cone and torsional friction on the pads, and raises
the pad contacts' time constant to 2 dt. The contract tests (grasp-and-lift, scripted
expert) pass with these settings.

Rendering uses Genesis' rasterizer camera through EGL (no GPU needed; set
``PYOPENGL_PLATFORM`` yourself to override ``egl``). Cameras render every
environment (``VisOptions(split_envs=True)``) with shadows off.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # headless rasterizer; must precede genesis


import numpy as np  # noqa: E402

from lift import task  # noqa: E402
from lift.backends import _scene  # noqa: E402
from lift.simulator import Simulator, check_supported, validate_env_ids  # noqa: E402
from lift.types import CAMERAS, Observation, SimulatorConfig  # noqa: E402

PHYSICS_DT = 0.005  # s; the control period (0.1 s at 10 Hz) is 20 physics steps
CACHE_DIRS = ("~/.cache/quadrants", "~/.cache/genesis")


def _init_genesis(backend: str):
    import genesis as gs

    wanted = "cpu" if backend == "cpu" else "gpu"
    if wanted == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "backend='gpu' runs Genesis on gs.gpu, which needs a CUDA GPU and a CUDA "
                "build of torch; none is available here (torch.cuda.is_available() is False). "
                "Use backend='cpu'."
            )
    current = getattr(gs, "_lift_backend", None)
    if current is None:
        if not getattr(gs, "_initialized", False):
            gs.init(backend=gs.cpu if wanted == "cpu" else gs.gpu, logging_level="warning")
        gs._lift_backend = wanted
    elif current != wanted:
        raise RuntimeError(
            f"Genesis is already initialised on {current!r} in this process and cannot switch to "
            f"{wanted!r}; use backend={current!r} or start a new process"
        )
    return gs


class GenesisPickPlace(Simulator):
    """Batched Lift-CRANE-X7 on Genesis. See :class:`lift.simulator.Simulator`.

    Privileged attributes for tools: ``joint_targets`` (N, 8), ``elapsed_steps`` (N,),
    :meth:`task_state`, :meth:`cube_pose`, :meth:`set_cube_pose`. ``render(size=...)``
    at a size other than the config's resizes the camera frame.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        check_supported(config, "Genesis", env_ids=(task.ENV_ID,), backends=("cpu", "gpu"))
        super().__init__(config, task.INSTRUCTION)
        gs = _init_genesis(config.backend)
        self._gs = gs
        self.substeps = max(1, round(1.0 / (config.control_freq * PHYSICS_DT)))
        self._build(gs)

    # ----------------------------------------------------------------- setup
    def _build(self, gs) -> None:
        model = _scene.scene_model()
        height, width = self.config.image_size
        self.scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=1.0 / (self.config.control_freq * self.substeps)),
            rigid_options=gs.options.RigidOptions(enable_self_collision=False),
            vis_options=gs.options.VisOptions(
                shadow=False, split_envs=True, ambient_light=(0.4, 0.4, 0.4)
            ),
            renderer=gs.renderers.Rasterizer(),
            show_viewer=False,
        )
        floor = _scene.floor(model)
        if floor is not None:  # visual only, as in the MJCF
            self.scene.add_entity(
                gs.morphs.Box(
                    size=tuple(2 * floor.half_size),
                    pos=tuple(floor.pos),
                    fixed=True,
                    collision=False,
                ),
                surface=gs.surfaces.Default(color=tuple(floor.rgba[:3])),
            )
        table = _scene.table(model)
        self.table = self.scene.add_entity(
            gs.morphs.Box(size=tuple(2 * table.half_size), pos=tuple(table.pos), fixed=True),
            surface=gs.surfaces.Default(color=tuple(table.rgba[:3])),
        )
        self.robot = self.scene.add_entity(gs.morphs.MJCF(file=str(_scene.ROBOT_MJCF)))
        half = task.CUBE_HALF_SIZE
        self.cube = self.scene.add_entity(
            gs.morphs.Box(size=(2 * half,) * 3, pos=(*task.CUBE_SPAWN_XY, half)),
            surface=gs.surfaces.Default(color=tuple(_scene.cube_rgba(model)[:3])),
        )
        self.cameras = {}
        specs = _scene.cameras(model)
        for name in CAMERAS:
            spec = specs[name]
            if spec.body == "world":
                forward, up = -spec.rotation[:, 2], spec.rotation[:, 1]
                camera = self.scene.add_camera(
                    res=(width, height),
                    pos=tuple(spec.pos),
                    lookat=tuple(spec.pos + forward),
                    up=tuple(up),
                    fov=spec.fovy_deg,
                    GUI=False,
                    near=0.01,
                    far=10.0,
                )
            else:
                camera = self.scene.add_camera(
                    res=(width, height), fov=spec.fovy_deg, GUI=False, near=0.01, far=10.0
                )
            self.cameras[name] = camera
        self.scene.build(n_envs=self.config.num_envs)

        names = task.ARM_JOINT_NAMES + task.FINGER_JOINT_NAMES
        self._dofs = np.array([self.robot.get_joint(n).dofs_idx_local[0] for n in names])
        kp, kv = _scene.pd_gains()
        arm_force, gripper_force = _scene.actuator_limits()
        force = np.concatenate([arm_force, [gripper_force, gripper_force]])
        self.robot.set_dofs_kp(np.full(len(names), kp), self._dofs)
        self.robot.set_dofs_kv(np.full(len(names), kv), self._dofs)
        self.robot.set_dofs_force_range(-force, force, self._dofs)
        self._gripper_link = self.robot.get_link(_scene.GRIPPER_BODY)
        self._finger_links = {self.robot.get_link(n).idx for n in _scene.FINGER_BODIES}
        spec = specs["hand_camera"]
        offset = np.eye(4)
        offset[:3, :3], offset[:3, 3] = spec.rotation, spec.pos
        self.cameras["hand_camera"].attach(self.robot.get_link(spec.body), offset)

    # ----------------------------------------------------------------- episodes
    def _start_episodes(self, ids: np.ndarray) -> None:
        if ids.size == 0:
            return
        arms, cubes = self._draw_starts(ids)
        k = len(ids)
        qpos = np.concatenate([arms, np.full((k, 2), task.REST_FINGER_QPOS)], axis=1)
        self.robot.set_dofs_position(qpos, self._dofs, envs_idx=ids, zero_velocity=True)
        self.robot.control_dofs_position(qpos, self._dofs, envs_idx=ids)
        cube_pos = np.concatenate([cubes, np.full((k, 1), task.CUBE_HALF_SIZE)], axis=1)
        self._place_cube(ids, cube_pos)

    def _place_cube(self, ids: np.ndarray, positions: np.ndarray) -> None:
        quat = np.tile([1.0, 0.0, 0.0, 0.0], (len(ids), 1))
        self.cube.set_pos(positions, envs_idx=ids, zero_velocity=True)
        self.cube.set_quat(quat, envs_idx=ids, zero_velocity=True)

    def _apply_targets(self, action: np.ndarray) -> None:
        targets = np.concatenate([self.joint_targets, self.joint_targets[:, 7:8]], axis=1)
        self.robot.control_dofs_position(targets, self._dofs)
        for _ in range(self.substeps):
            self.scene.step(update_visualizer=False, refresh_visualizer=False)

    def _task_state(self) -> dict[str, np.ndarray]:
        return self.task_state()

    # ----------------------------------------------------------------- state
    @staticmethod
    def _np(value) -> np.ndarray:
        return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

    def task_state(self) -> dict[str, np.ndarray]:
        """success, is_grasped, cube_height and gripper_to_cube_dist, each (N,)."""
        cube = self._np(self.cube.get_pos()).reshape(self.num_envs, 3).astype(np.float64)
        gripper = (
            self._np(self._gripper_link.get_pos()).reshape(self.num_envs, 3).astype(np.float64)
        )
        dist = np.linalg.norm(gripper - cube, axis=1).astype(np.float32)
        height = cube[:, 2].astype(np.float32)
        return {
            "success": task.is_success(height, dist),
            "is_grasped": self._pads_touch_cube(),
            "cube_height": height,
            "gripper_to_cube_dist": dist,
        }

    def _pads_touch_cube(self) -> np.ndarray:
        contacts = self.robot.get_contacts(with_entity=self.cube)
        link_a = self._np(contacts["link_a"]).reshape(self.num_envs, -1)
        link_b = self._np(contacts["link_b"]).reshape(self.num_envs, -1)
        valid = contacts.get("valid_mask")
        valid = (
            np.ones_like(link_a, dtype=bool)
            if valid is None
            else self._np(valid).reshape(self.num_envs, -1)
        )
        grasped = np.zeros(self.num_envs, dtype=bool)
        for i in range(self.num_envs):
            touching = set(link_a[i][valid[i]].tolist()) | set(link_b[i][valid[i]].tolist())
            grasped[i] = self._finger_links <= touching
        return grasped

    def cube_pose(self) -> np.ndarray:
        """(N, 7): cube centre position and orientation quaternion (w, x, y, z)."""
        pos = self._np(self.cube.get_pos()).reshape(self.num_envs, 3)
        quat = self._np(self.cube.get_quat()).reshape(self.num_envs, 4)
        return np.concatenate([pos, quat], axis=1).astype(np.float64)

    def set_cube_pose(self, env_id: int, position: np.ndarray) -> None:
        """Teleport the cube centre of one env (orientation reset, velocity zeroed)."""
        ids = validate_env_ids([env_id], self.num_envs)
        self._place_cube(ids, np.asarray(position, dtype=np.float64).reshape(1, 3))

    def _observe(self, env_ids: np.ndarray | None = None) -> Observation:
        ids = np.arange(self.num_envs) if env_ids is None else env_ids
        qpos = self._np(self.robot.get_dofs_position(self._dofs)).reshape(self.num_envs, -1)
        qvel = self._np(self.robot.get_dofs_velocity(self._dofs)).reshape(self.num_envs, -1)
        image = None
        if self.config.obs_mode == "rgb":
            image = self.render(self.config.camera, ids)
        return Observation(
            image=image, qpos=qpos[ids].astype(np.float32), qvel=qvel[ids].astype(np.float32)
        )

    # ----------------------------------------------------------------- rendering
    def _render(self, camera: str, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        cam = self.cameras[camera]
        if camera == "hand_camera":
            cam.move_to_attach()
        rgb = cam.render(rgb=True, force_render=True)[0]
        frames = self._np(rgb).reshape(self.num_envs, *self.config.image_size, 3)[ids]
        return _scene.resize_frames(frames.astype(np.uint8), size)

    def close(self) -> None:
        scene = getattr(self, "scene", None)
        if scene is not None and hasattr(scene, "destroy"):
            scene.destroy()
        self.scene = None
