"""The Lift-CRANE-X7 scene read from the project's MJCF, for engines other than MuJoCo.

The MJCF files in ``lift/assets/crane_x7`` are the single source of truth. Other
backends (ManiSkill/SAPIEN, Genesis) take every number from them through MuJoCo's
compiler: camera poses and fields of view, the table, the robot's bodies, joints,
geoms and inertias. Nothing here is a second copy of the model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from lift import task

ASSETS = task.ASSETS_DIR
ROBOT_MJCF = ASSETS / "crane_x7.xml"
SCENE_MJCF = ASSETS / "scene_lift.xml"
ROBOT_ROOT_BODY = "base"
GRIPPER_BODY = "gripper_base"
FINGER_BODIES = ("gripper_finger_a", "gripper_finger_b")


@dataclass(frozen=True)
class CameraSpec:
    """A MuJoCo camera: position and rotation (columns: camera x right, y up, looking along -z)."""

    name: str
    body: str  # "world" for fixed cameras, else the body it is mounted on
    pos: np.ndarray  # (3,) in the body's frame
    rotation: np.ndarray  # (3, 3) in the body's frame
    fovy_deg: float

    def forward_left_up(self) -> np.ndarray:
        """The rotation with columns (forward, left, up): SAPIEN's camera convention."""
        x, y, z = self.rotation.T
        return np.stack([-z, -x, y], axis=1)


@dataclass(frozen=True)
class BoxSpec:
    name: str
    pos: np.ndarray
    half_size: np.ndarray
    rgba: np.ndarray


def _quat_to_mat(quat: np.ndarray) -> np.ndarray:
    out = np.zeros(9)
    mujoco.mju_quat2Mat(out, np.asarray(quat, dtype=np.float64))
    return out.reshape(3, 3)


def mat_to_quat(mat: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z)."""
    out = np.zeros(4)
    mujoco.mju_mat2Quat(out, np.asarray(mat, dtype=np.float64).reshape(-1))
    return out


def scene_model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(SCENE_MJCF))


def cameras(model: mujoco.MjModel | None = None) -> dict[str, CameraSpec]:
    m = scene_model() if model is None else model
    specs = {}
    for cam_id in range(m.ncam):
        cam = m.camera(cam_id)
        body = m.body(int(m.cam_bodyid[cam_id])).name or "world"
        specs[cam.name] = CameraSpec(
            name=cam.name,
            body="world" if int(m.cam_bodyid[cam_id]) == 0 else body,
            pos=m.cam_pos[cam_id].copy(),
            rotation=_quat_to_mat(m.cam_quat[cam_id]),
            fovy_deg=float(m.cam_fovy[cam_id]),
        )
    return specs


def table(model: mujoco.MjModel | None = None) -> BoxSpec:
    m = scene_model() if model is None else model
    geom = m.geom("table")
    return BoxSpec("table", geom.pos.copy(), geom.size.copy(), geom_color(m, geom.id))


def floor(model: mujoco.MjModel | None = None, half_extent: float = 5.0) -> BoxSpec | None:
    """The MJCF's floor plane (if it has one) as a thin, wide box whose top face is the plane."""
    m = scene_model() if model is None else model
    if mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "floor") < 0:
        return None
    geom = m.geom("floor")
    thickness = 0.005
    pos = geom.pos.copy() - np.array([0.0, 0.0, thickness])
    half = np.array([half_extent, half_extent, thickness])
    return BoxSpec("floor", pos, half, geom_color(m, geom.id))


def geom_color(m: mujoco.MjModel, geom_id: int) -> np.ndarray:
    """A geom's RGBA; a textured material gives its texture's mean colour (engines without
    MuJoCo's builtin textures draw it flat)."""
    mat = int(m.geom_matid[geom_id])
    if mat < 0:
        return m.geom_rgba[geom_id].astype(np.float64)
    rgba = m.mat_rgba[mat].astype(np.float64)
    tex = int(m.mat_texid[mat, mujoco.mjtTextureRole.mjTEXROLE_RGB])
    if tex >= 0:
        adr, channels = int(m.tex_adr[tex]), int(m.tex_nchannel[tex])
        size = int(m.tex_height[tex]) * int(m.tex_width[tex]) * channels
        pixels = m.tex_data[adr : adr + size].reshape(-1, channels)[:, :3]
        rgba[:3] *= pixels.mean(axis=0) / 255.0
    return rgba


def cube_rgba(model: mujoco.MjModel | None = None) -> np.ndarray:
    m = scene_model() if model is None else model
    return m.geom("cube").rgba.copy()


def cube_friction(model: mujoco.MjModel | None = None) -> float:
    m = scene_model() if model is None else model
    return float(m.geom("cube").friction[0])


def actuator_limits(model: mujoco.MjModel | None = None) -> tuple[np.ndarray, float]:
    """Force limits of the 7 arm actuators and of the gripper actuator, in joint order."""
    m = mujoco.MjModel.from_xml_path(str(ROBOT_MJCF)) if model is None else model
    by_joint = {}
    for a in range(m.nu):
        joint = m.joint(int(m.actuator_trnid[a, 0])).name
        by_joint[joint] = float(m.actuator_forcerange[a, 1])
    arm = np.array([by_joint[name] for name in task.ARM_JOINT_NAMES])
    return arm, by_joint[task.FINGER_JOINT_NAMES[0]]


def pd_gains(model: mujoco.MjModel | None = None) -> tuple[float, float]:
    """Stiffness and damping of the position actuators (kp, kv in crane_x7.xml)."""
    m = mujoco.MjModel.from_xml_path(str(ROBOT_MJCF)) if model is None else model
    kp = float(m.actuator_gainprm[0, 0])
    kv = float(-m.actuator_biasprm[0, 2])
    return kp, kv


# ---------------------------------------------------------------------- SAPIEN export
_GEOM_TYPES = {
    mujoco.mjtGeom.mjGEOM_BOX: "box",
    mujoco.mjtGeom.mjGEOM_CAPSULE: "capsule",
    mujoco.mjtGeom.mjGEOM_CYLINDER: "cylinder",
    mujoco.mjtGeom.mjGEOM_SPHERE: "sphere",
}


def _volume(kind: str, size: np.ndarray) -> float:
    if kind == "box":
        return float(8.0 * size[0] * size[1] * size[2])
    if kind == "sphere":
        return float(4.0 / 3.0 * np.pi * size[0] ** 3)
    if kind == "cylinder":
        return float(np.pi * size[0] ** 2 * 2.0 * size[1])
    return float(np.pi * size[0] ** 2 * 2.0 * size[1] + 4.0 / 3.0 * np.pi * size[0] ** 3)


def _vec(values: np.ndarray) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


def flattened_robot_mjcf(source: Path = ROBOT_MJCF) -> str:
    """The robot as plain MJCF that SAPIEN's MJCF loader reads correctly.

    SAPIEN's loader ignores ``<frame>``, per-geom ``mass``, equality constraints and
    geom groups other than 0/2. This writes MuJoCo's *compiled* model back out: every
    geom pose already resolved in its body's frame, ``density`` chosen so each body
    keeps its mass (exact masses and inertias are set again after loading), all
    MuJoCo-visible geoms in group 0, collision geoms with ``condim=3`` and their
    sliding friction. The finger mirror constraint becomes a mimic controller.
    """
    m = mujoco.MjModel.from_xml_path(str(source))
    root = ET.Element("mujoco", model="crane_x7_sapien")
    ET.SubElement(root, "compiler", angle="radian", autolimits="true")
    world = ET.SubElement(root, "worldbody")
    elements: dict[int, ET.Element] = {0: world}
    for b in range(1, m.nbody):
        parent = elements[int(m.body_parentid[b])]
        body = ET.SubElement(
            parent,
            "body",
            name=m.body(b).name,
            pos=_vec(m.body_pos[b]),
            quat=_vec(m.body_quat[b]),
        )
        elements[b] = body
        for j in range(int(m.body_jntadr[b]), int(m.body_jntadr[b]) + int(m.body_jntnum[b])):
            if m.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE:
                raise ValueError(
                    f"{source}: joint {m.joint(j).name!r} is not a hinge; the SAPIEN export supports hinges only"
                )
            attrs = {
                "name": m.joint(j).name,
                "type": "hinge",
                "pos": _vec(m.jnt_pos[j]),
                "axis": _vec(m.jnt_axis[j]),
            }
            if m.jnt_limited[j]:
                attrs["range"] = _vec(m.jnt_range[j])
            ET.SubElement(body, "joint", attrs)
        geoms = range(int(m.body_geomadr[b]), int(m.body_geomadr[b]) + int(m.body_geomnum[b]))
        solid = [g for g in geoms if m.geom_contype[g] != 0 or m.geom_conaffinity[g] != 0]
        volume = sum(_volume(_GEOM_TYPES[int(m.geom_type[g])], m.geom_size[g]) for g in solid)
        density = float(m.body_mass[b]) / volume if volume > 0 else 0.0
        for g in geoms:
            kind = _GEOM_TYPES.get(int(m.geom_type[g]))
            if kind is None:
                raise ValueError(
                    f"{source}: geom {g} of body {m.body(b).name!r} has type {int(m.geom_type[g])}; "
                    "the SAPIEN export supports box, capsule, cylinder and sphere"
                )
            if m.geom_group[g] > 2:  # hidden in MuJoCo's default view too
                continue
            is_solid = g in solid
            size = m.geom_size[g][: {"box": 3, "sphere": 1}.get(kind, 2)]
            attrs = {
                "type": kind,
                "size": _vec(size),
                "pos": _vec(m.geom_pos[g]),
                "quat": _vec(m.geom_quat[g]),
                "rgba": _vec(m.geom_rgba[g]),
                "group": "0",
                "contype": "1" if is_solid else "0",
                "conaffinity": "1" if is_solid else "0",
                "density": f"{density:.9g}" if is_solid else "0",
                "condim": "3",
                "friction": _vec(m.geom_friction[g]),
            }
            if m.geom(g).name:
                attrs["name"] = m.geom(g).name
            ET.SubElement(body, "geom", attrs)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def exported_robot_path(source: Path = ROBOT_MJCF) -> Path:
    """Write :func:`flattened_robot_mjcf` once per source content; return its path.

    The file lives in ``$XDG_CACHE_HOME/lift`` (default ``~/.cache/lift``), named by a
    hash of the source, and is written to a temp name then renamed.
    """
    text = flattened_robot_mjcf(source)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lift"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"crane_x7_sapien_{digest}.xml"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".xml.tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def joint_armature(source: Path = ROBOT_MJCF) -> dict[str, float]:
    """Armature (reflected rotor inertia, kg m^2) of every hinge joint, by name."""
    m = mujoco.MjModel.from_xml_path(str(source))
    return {m.joint(j).name: float(m.dof_armature[int(m.jnt_dofadr[j])]) for j in range(m.njnt)}


@dataclass(frozen=True)
class LinkInertia:
    mass: float
    inertia: np.ndarray  # (3,) principal moments
    com_pos: np.ndarray  # (3,) in the body frame
    com_quat: np.ndarray  # (4,) wxyz, principal axes in the body frame


def body_inertias(source: Path = ROBOT_MJCF) -> dict[str, LinkInertia]:
    """MuJoCo's compiled mass, principal inertia and inertial frame of every robot body."""
    m = mujoco.MjModel.from_xml_path(str(source))
    return {
        m.body(b).name: LinkInertia(
            mass=float(m.body_mass[b]),
            inertia=m.body_inertia[b].copy(),
            com_pos=m.body_ipos[b].copy(),
            com_quat=m.body_iquat[b].copy(),
        )
        for b in range(1, m.nbody)
    }


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (n, H, W, 3) uint8 frames to ``size`` = (height, width)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    from PIL import Image

    height, width = size
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames]
    ).reshape(len(frames), height, width, 3)
