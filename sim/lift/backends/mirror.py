"""A MuJoCo mirror of another backend's state, so MuJoCo-based tools drive any backend.

The scripted expert (:mod:`lift.expert`) plans with MuJoCo's kinematics and Jacobians.
:class:`MujocoMirror` is a state-only :class:`MujocoPickPlace` built from the same MJCF
whose joint positions, cube pose, PD targets and step counters are copied from another
backend before each decision; nothing is simulated in it.

    mirror = MujocoMirror(env)
    expert = ScriptedExpert(mirror)
    obs = env.reset(seed=0)
    mirror.sync(obs)
    result = env.step(expert.act())
"""

from __future__ import annotations

from dataclasses import replace

import mujoco
import numpy as np

from lift.backends.mujoco_env import MujocoPickPlace
from lift.simulator import Simulator
from lift.types import Observation


class MujocoMirror(MujocoPickPlace):
    """Kinematic copy of ``source`` (a backend that implements :meth:`Simulator.cube_pose`)."""

    def __init__(self, source: Simulator) -> None:
        if type(source).cube_pose is Simulator.cube_pose:
            raise TypeError(
                f"{type(source).__name__} does not implement cube_pose(); a MujocoMirror copies "
                "the cube pose, joint_targets and elapsed_steps from its source"
            )
        config = replace(source.config, obs_mode="state", backend="cpu", auto_reset=False)
        super().__init__(config)
        self.source = source

    def sync(self, observation: Observation) -> None:
        """Copy the source's state as of ``observation`` (the latest reset/step result)."""
        cube = self.source.cube_pose()
        for i, d in enumerate(self.data):
            d.qpos[self._qpos_adr] = observation.qpos[i]
            d.qvel[:] = 0.0
            d.qpos[self._cube_qpos_adr : self._cube_qpos_adr + 7] = cube[i]
            mujoco.mj_forward(self.model, d)
        self.joint_targets[:] = self.source.joint_targets
        self.elapsed_steps[:] = self.source.elapsed_steps

    def step(self, actions: np.ndarray):  # noqa: D102 - a mirror never simulates
        raise RuntimeError("MujocoMirror only mirrors state; step the source backend instead")
