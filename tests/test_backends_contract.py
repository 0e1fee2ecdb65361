"""The same PickPlace-CRANE-X7 contract on every installed simulator backend.

MuJoCo always runs; ManiSkill3 and Genesis run where their packages are installed
(``make sims`` builds ``.venv-sims`` with them) and are skipped with the reason
otherwise; with ``REQUIRE_BACKENDS=1`` or ``CI=true`` (``.ci/run``) an unavailable
backend or renderer fails instead (``backend_availability``).
Run: ``.venv-sims/bin/python -m pytest -rs -m backends tests/test_backends_contract.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_availability import require_package, unavailable  # noqa: E402

import lift  # noqa: E402
from lift import task  # noqa: E402
from lift.backends.mirror import MujocoMirror  # noqa: E402
from lift.backends.mujoco_env import MujocoPickPlace  # noqa: E402
from lift.expert import ScriptedExpert, top_down_orientation  # noqa: E402

pytestmark = pytest.mark.backends

BACKENDS = ("mujoco", "maniskill", "genesis")
IMAGE_SIZE = (64, 64)
NUM_ENVS = 2
# Gripper base this far above the cube centre for a static grasp: the pad tips (62 mm
# below the base) then clear the table by 3 mm. (The expert closes 5 mm lower while rising.)
STATIC_GRASP_DEPTH = 0.045
INFO_KEYS = {"success", "is_grasped", "cube_height", "gripper_to_cube_dist", "elapsed_steps"}


def build(name: str, **overrides: object) -> lift.Simulator:
    """The backend, or a skip (a failure in CI) that says why it cannot run here."""
    require_package(name)
    settings = dict(num_envs=NUM_ENVS, image_size=IMAGE_SIZE, max_episode_steps=100)
    settings.update(overrides)
    try:
        return lift.make_env(name, task.ENV_ID, **settings)
    except ImportError as error:
        unavailable(f"{name}: {error}")
    except RuntimeError as error:
        if "render" in str(error).lower():
            unavailable(f"{name}: rendering is unavailable: {error}")
        raise


@pytest.fixture(scope="module", params=BACKENDS)
def sim(request):
    env = build(request.param)
    yield env
    env.close()


def mirror_of(env: lift.Simulator) -> MujocoPickPlace:
    return env if isinstance(env, MujocoPickPlace) else MujocoMirror(env)


def cube_positions(env: lift.Simulator) -> np.ndarray:
    if isinstance(env, MujocoPickPlace):
        return np.array([d.xpos[env.cube_body] for d in env.data])
    return env.cube_pose()[:, :3]


# ---------------------------------------------------------------------- spaces
def test_observation_and_step_spaces(sim):
    obs = sim.reset(seed=0)
    n, (h, w) = NUM_ENVS, IMAGE_SIZE
    assert obs.image.shape == (n, h, w, 3) and obs.image.dtype == np.uint8
    assert obs.qpos.shape == (n, task.STATE_DIM) and obs.qpos.dtype == np.float32
    assert obs.qvel.shape == (n, task.STATE_DIM) and obs.qvel.dtype == np.float32
    assert obs.image.std() > 1.0, "the camera image is blank"

    result = sim.step(np.zeros((n, task.ACTION_DIM)))
    assert result.reward.shape == (n,) and result.reward.dtype == np.float32
    assert result.terminated.dtype == bool and result.truncated.dtype == bool
    assert INFO_KEYS <= set(result.info)
    for key in INFO_KEYS:
        assert result.info[key].shape == (n,), key
    assert result.info["success"].dtype == bool and result.info["is_grasped"].dtype == bool
    assert result.observation.image.shape == (n, h, w, 3)

    with pytest.raises(ValueError, match="shape"):
        sim.step(np.zeros((n, task.ACTION_DIM - 1)))
    for camera in ("third_person", "hand_camera"):
        frames = sim.render(camera, env_ids=[1], size=(32, 48))
        assert frames.shape == (1, 32, 48, 3) and frames.dtype == np.uint8


def test_starts_follow_the_shared_task_sampler(sim):
    """A seed gives the same arm pose and cube position on every backend."""
    obs = sim.reset(seed=11)
    reference = MujocoPickPlace(lift.SimulatorConfig(num_envs=NUM_ENVS, obs_mode="state"))
    expected = reference.reset(seed=11)
    np.testing.assert_allclose(obs.qpos[:, :7], expected.qpos[:, :7], atol=2e-3)
    np.testing.assert_allclose(cube_positions(sim)[:, :2], cube_positions(reference)[:, :2], atol=1e-4)


def test_same_seed_same_rollout(sim):
    actions = np.random.default_rng(5).uniform(-1, 1, size=(6, NUM_ENVS, task.ACTION_DIM))

    def rollout() -> tuple[np.ndarray, np.ndarray]:
        obs = sim.reset(seed=3)
        first = obs.qpos.copy()
        for action in actions:
            obs = sim.step(action).observation
        return first, obs.qpos.copy()

    first_a, last_a = rollout()
    first_b, last_b = rollout()
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_allclose(last_a, last_b, atol=1e-5)


def test_seed_state_continues_the_sequence(sim):
    sim.reset(seed=21)
    state = sim.get_seed_state()
    after = sim.reset().qpos.copy()
    sim.set_seed_state(state)
    np.testing.assert_array_equal(sim.reset().qpos, after)


# ---------------------------------------------------------------------- success
def solve_ik(model: mujoco.MjModel, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Arm joints putting the gripper base at (position, rotation): damped least squares."""
    data = mujoco.MjData(model)
    body = model.body("gripper_base").id
    qadr = np.array([model.joint(n).qposadr[0] for n in task.ARM_JOINT_NAMES])
    dofs = np.array([model.joint(n).dofadr[0] for n in task.ARM_JOINT_NAMES])
    q = task.REST_ARM_QPOS.copy()
    jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    for _ in range(200):
        data.qpos[qadr] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        rot_err = np.zeros(3)
        q_target, q_cur, q_inv, q_err = (np.zeros(4) for _ in range(4))
        mujoco.mju_mat2Quat(q_target, rotation.reshape(-1))
        mujoco.mju_mat2Quat(q_cur, data.xmat[body])
        mujoco.mju_negQuat(q_inv, q_cur)
        mujoco.mju_mulQuat(q_err, q_target, q_inv)
        mujoco.mju_quat2Vel(rot_err, q_err if q_err[0] >= 0 else -q_err, 1.0)
        error = np.concatenate([position - data.xpos[body], rot_err])
        mujoco.mj_jacBody(model, data, jacp, jacr, body)
        jac = np.vstack([jacp[:, dofs], jacr[:, dofs]])
        step = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), error)
        q = np.clip(q + step, task.ARM_LOWER, task.ARM_UPPER)
    assert np.linalg.norm(error[:3]) < 1e-3, f"IK did not reach {position}"
    return q


def drive_to(env: lift.Simulator, arm: np.ndarray, gripper: float, steps: int):
    """Move every env's arm targets to ``arm`` (within the action limits) for ``steps`` steps."""
    result = None
    for _ in range(steps):
        action = task.action_from_joint_targets(
            np.broadcast_to(arm, (env.num_envs, 7)),
            np.full(env.num_envs, gripper),
            env.joint_targets[:, :7],
            env.config.control_mode,
        )
        result = env.step(action)
        if result.terminated.any():
            return result
    return result


def test_success_when_the_cube_is_grasped_and_lifted(sim):
    """Teleport the cube between the open fingers, close them, lift: success, reward 1, terminated."""
    model = mirror_of(sim).model
    down = top_down_orientation(np.array([0.0, 1.0, 0.0]))
    grasp_xy = np.array([0.22, 0.0])
    low = solve_ik(model, np.array([*grasp_xy, task.CUBE_HALF_SIZE + STATIC_GRASP_DEPTH]), down)
    high = solve_ik(model, np.array([*grasp_xy, task.SUCCESS_HEIGHT + 0.04 + STATIC_GRASP_DEPTH]), down)

    sim.reset(seed=1)
    for i in range(sim.num_envs):  # out of the way while the gripper comes down
        sim.set_cube_pose(i, np.array([-0.25, 0.3 * (i + 1), task.CUBE_HALF_SIZE]))
    result = drive_to(sim, low, gripper=-1.0, steps=25)
    assert not result.info["success"].any()
    for i in range(sim.num_envs):
        sim.set_cube_pose(i, np.array([*grasp_xy, task.CUBE_HALF_SIZE]))
    result = drive_to(sim, low, gripper=1.0, steps=5)
    assert result.info["is_grasped"].all(), result.info
    assert not result.terminated.any()

    # Each env must succeed while lifting; engines may finish the envs a step apart
    # (an env that finished has auto-reset, so it is checked on the step it finished).
    succeeded = np.zeros(sim.num_envs, dtype=bool)
    for fraction in np.linspace(0.1, 1.0, 10):
        result = drive_to(sim, low + fraction * (high - low), gripper=1.0, steps=2)
        finished = result.terminated & ~succeeded
        if finished.any():
            rows = np.flatnonzero(finished)
            assert (result.reward[rows] == 1.0).all(), result.reward
            assert result.info["success"][rows].all()
            assert (result.info["cube_height"][rows] >= task.SUCCESS_HEIGHT).all()
            assert not result.truncated[rows].any()
            # auto-reset: the finished episodes restarted, their last frame is kept apart
            assert result.final_observation is not None
            for i in rows:
                assert not np.array_equal(result.final_observation.qpos[i], result.observation.qpos[i])
            succeeded |= finished
        if succeeded.all():
            break
    assert succeeded.all(), f"never succeeded while lifting in envs {np.flatnonzero(~succeeded)}: {result.info}"


# ---------------------------------------------------------------------- expert
def test_scripted_expert_succeeds(sim):
    """The MuJoCo-planned expert (through a mirror on other backends) lifts the cube >= 90%."""
    mirror = mirror_of(sim)
    expert = ScriptedExpert(mirror)
    obs = sim.reset(seed=0, seed_stream=1)
    episodes, successes = 0, 0
    while episodes < 10:
        if mirror is not sim:
            mirror.sync(obs)
        result = sim.step(expert.act())
        obs = result.observation
        finished = np.flatnonzero(result.done)
        episodes += finished.size
        successes += int(result.terminated[finished].sum())
    assert successes / episodes >= 0.9, f"{successes}/{episodes} episodes succeeded"


# ---------------------------------------------------------------------- errors
def test_isaacsim_says_what_it_needs():
    with pytest.raises(ImportError) as info:
        lift.make_env("isaacsim", task.ENV_ID)
    message = str(info.value)
    assert "Python 3.12" in message and "RTX" in message and "Isaac Sim" in message


@pytest.mark.parametrize("name", ["maniskill", "genesis"])
def test_gpu_backend_without_a_gpu_is_a_clear_error(name):
    import torch

    require_package(name)
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        lift.make_env(name, task.ENV_ID, backend="gpu")


@pytest.mark.parametrize("name", ["maniskill", "genesis"])
def test_short_training_run(name, tiny_config):
    """`train --simulator <name>` runs PPO end to end on the backend (tiny model, 1 update)."""
    require_package(name)
    from vla_rl_lib.config import apply_overrides
    from vla_rl_lib.training.trainer import Trainer

    cfg = apply_overrides(tiny_config, {"num_updates": 1, "rollout.simulator": name})
    trainer = Trainer(cfg, progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    assert summary["updates"] == 1 and summary["env_steps"] > 0
    assert (trainer.run_dir / "checkpoint_latest").is_dir()


# ------------------------------------------------------------------ PickPlace-CRANE-X7


@pytest.mark.parametrize("name", BACKENDS)
def test_pickplace_follows_the_contract_or_is_refused_clearly(name: str) -> None:
    """MuJoCo builds PickPlace; a backend that does not yet refuses it in one line, before
    importing anything, and never runs a Lift scene under the PickPlace name."""
    if name != "mujoco":
        with pytest.raises(ValueError, match=f"'{name}' has no env 'PickPlace-CRANE-X7' \\(not supported there yet\\)"):
            lift.make_env(name, task.PICKPLACE_ENV_ID)
        return
    env = lift.make_env(name, task.PICKPLACE_ENV_ID, num_envs=NUM_ENVS, image_size=IMAGE_SIZE)
    try:
        obs = env.reset(seed=0)
        assert obs.image.shape == (NUM_ENVS, *IMAGE_SIZE, 3)
        assert len(obs.instructions) == NUM_ENVS and all(" plate" in t for t in obs.instructions)
        assert obs.state.shape == (NUM_ENVS, env.state_dim)
        result = env.step(np.zeros((NUM_ENVS, task.ACTION_DIM)))
        assert INFO_KEYS <= set(result.info) and not result.info["success"].any()
        assert env.render(size=(256, 256)).shape == (NUM_ENVS, 256, 256, 3)
    finally:
        env.close()


def test_lift_prompts_are_its_one_instruction_on_every_backend(sim: lift.Simulator) -> None:
    from vla_rl_lib.rollout.collector import policy_prompts

    obs = sim.reset(seed=0)
    assert policy_prompts(obs, sim, None) == [lift.INSTRUCTION] * sim.num_envs
