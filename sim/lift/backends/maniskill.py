"""Lift-CRANE-X7 on ManiSkill3 (SAPIEN/PhysX), CPU or GPU simulation: the batched Simulator.

:class:`ManiSkillPickPlace` is the batched :class:`lift.simulator.Simulator`. With
``backend="gpu"`` it runs one ManiSkill env holding ``num_envs`` parallel scenes
(PhysX GPU). With ``backend="cpu"`` ManiSkill allows one env per process, so it runs
``num_envs`` worker processes, one env each, stepped in parallel.

The ManiSkill task itself (agent ``crane_x7``, env ``Lift-CRANE-X7``) is
:mod:`lift.backends.maniskill_task`; it imports mani_skill and sapien, so it is
imported only when an env is built here. Rendering on a CPU needs the project's
lavapipe (:mod:`lift.backends._vulkan`).
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
from lift.backends._vulkan import render_error, use_project_vulkan
from lift.simulator import Simulator, check_supported, validate_env_ids
from lift.types import Observation, SimulatorConfig

# The folder that holds the ``lift`` package: worker processes import it from there.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
TASK_STATE_KEYS = ("success", "is_grasped", "cube_height", "gripper_to_cube_dist")


# ====================================================================== one ManiSkill env
class _EnvCore:
    """One ManiSkill env of ``k`` scenes, speaking numpy (used in-process or in a worker)."""

    def __init__(self, config: SimulatorConfig, num_scenes: int, sim_backend: str) -> None:
        import gymnasium as gym
        import torch

        from lift.backends import maniskill_task  # noqa: F401 - registers Lift-CRANE-X7 with ManiSkill

        self.torch = torch
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
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")])
        )
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
        for owned in (self._pool, self._core):
            if owned is not None:
                owned.close()
        self._pool = self._core = None
