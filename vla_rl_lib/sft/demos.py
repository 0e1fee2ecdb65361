"""Scripted-expert demonstrations, stored as Parquet, for the supervised warm start.

Dataset format (``format_version`` 1), one directory::

    <dataset>/
      data/train.parquet       one row per control step, episodes in order
      meta.json                what produced the data and how to read it
      dataset_statistics.json  action statistics in OpenVLA's layout

``data/train.parquet`` columns (row t of an episode: the camera image the
expert saw, the action it took, and what that action earned):

=============  ====================  ==========================================
column         Arrow type            meaning
=============  ====================  ==========================================
episode_index  int64                 0..num_episodes-1, kept episodes only
frame_index    int64                 step within the episode, from 0
image          binary                PNG of the (H, W, 3) uint8 RGB observation
action         list<float32> (8)     7 joint commands then the gripper, [-1, 1]
state          list<float32> (9)     joint positions: 7 arm joints, 2 fingers
instruction    string                the language instruction
reward         float32               reward of the step (the env's reward_mode)
success        bool                  the task was solved after this action
=============  ====================  ==========================================

Each episode is one Parquet row group, so a reader can fetch single episodes.
The meaning of the action dimensions (control mode, joint names, gripper
sign) is in ``meta.json["action"]``; ``dataset_statistics.json`` holds
``{"crane_x7_pickplace": {"action": {"q01", "q99", "mean", "std", "min",
"max", "mask"}, "num_transitions", "num_trajectories"}}`` with the gripper
dimension masked out of normalization, as OpenVLA does.

Why Parquet: it is columnar and compressed, and pandas, pyarrow, Hugging Face
``datasets`` (``load_dataset("parquet", data_dir=...)`` or the directory
itself) and LeRobot-style tooling read it without this library. Storing frames
as PNG bytes keeps a 64x64 dataset at a few kilobytes per step, losslessly::

    import io, pandas as pd, numpy as np
    from PIL import Image
    df = pd.read_parquet("outputs/demos/data/train.parquet")
    frame = np.asarray(Image.open(io.BytesIO(df.image[0])))

Reproducibility: attempt k plays the episode start that ``env.reset(seed=seed
+ k)`` draws, and the kept episodes are the first ``num_demos`` successful
attempts in attempt order, whatever ``num_envs`` is. The same seed gives the
same Parquet bytes and the same ``meta.json`` except for ``created_at``.

Noise-injected demonstrations (DART, Laskey et al. 2017): with ``action_noise``
above 0 the env executes the expert's arm action plus AR(1) noise, while the
``action`` column keeps the expert's clean action for the state actually visited,
so the data show how the expert pulls a deviating arm back to its path.

Reuse: ``meta.json["recipe"]`` records every setting that shapes the data (each
content parameter of ``collect_demonstrations`` and the simulator defaults).
``ensure_demonstrations`` keeps one folder per recipe and reuses a dataset only
when its recorded recipe matches the one asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from vla_rl_lib.policy.action_tokenizer import (
    DATASET_STATISTICS_FILE,
    ActionStatistics,
    load_action_statistics,
    write_dataset_statistics,
)
from vla_rl_lib.rollout.collector import policy_prompts, reset_episodes
from vla_rl_lib.rollout.episode_queue import EpisodeQueue
from vla_rl_lib.seed_ranges import TRAIN_SEED_FLOOR, demo_attempts
from vla_rl_lib.utils import atomic_directory

FORMAT_NAME = "vla-rl-demonstrations"
FORMAT_VERSION = 1
DATA_FILE = "data/train.parquet"
META_FILE = "meta.json"
STATISTICS_KEY = "crane_x7_pickplace"
# What load_demonstrations reads from meta.json.
REQUIRED_META_KEYS = (
    ("env", "image_size"),
    ("action", "dim"),
    ("state", "dim"),
    ("num_episodes",),
    ("num_transitions",),
)
# Mixed into each episode seed for the execution-noise generator, apart from the env's own streams.
NOISE_STREAM = 0xDA27
# PNG compression level is fixed so that the same frames always give the same bytes.
PNG_COMPRESS_LEVEL = 6

SCHEMA = pa.schema(
    [
        pa.field("episode_index", pa.int64()),
        pa.field("frame_index", pa.int64()),
        pa.field("image", pa.binary()),
        pa.field("action", pa.list_(pa.float32())),
        pa.field("state", pa.list_(pa.float32())),
        pa.field("instruction", pa.string()),
        pa.field("reward", pa.float32()),
        pa.field("success", pa.bool_()),
    ]
)
COLUMN_DOCS = {
    "episode_index": "0..num_episodes-1 over kept (successful) episodes",
    "frame_index": "control step within the episode, from 0",
    "image": "PNG bytes of the (H, W, 3) uint8 RGB observation the action was chosen from",
    "action": "float32 (8,): the expert's action in the environment's action space",
    "state": "float32 (9,): joint positions at the observation (7 arm joints, 2 fingers)",
    "instruction": "the language instruction",
    "reward": "float32 reward the action earned (the env's reward_mode)",
    "success": "bool: the task was solved after this action (true on the last row of every episode)",
}


class DemoDatasetError(ValueError):
    """A demonstration dataset on disk is corrupt or does not match this format."""


@dataclass
class DemoDataset:
    """A loaded dataset: M steps from ``num_episodes`` successful episodes."""

    path: Path
    images: np.ndarray  # (M, H, W, 3) uint8
    actions: np.ndarray  # (M, action_dim) float32: 8 in the joint modes, 4 in pd_ee_delta_pos
    states: np.ndarray  # (M, 9) float32
    instructions: list[str]  # (M,)
    episode_index: np.ndarray  # (M,) int64
    frame_index: np.ndarray  # (M,) int64
    rewards: np.ndarray  # (M,) float32
    success: np.ndarray  # (M,) bool
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(np.unique(self.episode_index).size)

    @property
    def statistics(self) -> ActionStatistics:
        """The action statistics saved with the dataset (OpenVLA's q01/q99/mask)."""
        return load_action_statistics(self.path / DATASET_STATISTICS_FILE, STATISTICS_KEY)


# --------------------------------------------------------------------------- collection


@dataclass
class Attempt:
    """One episode in progress on one environment."""

    index: int
    seed: int
    images: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)  # the prompt at each step


# (observation, the expert's actions (N, D), running attempts by env id) -> the executed actions (N, D)
Drive = Callable[[Any, np.ndarray, dict[int, Attempt]], np.ndarray]


class ExecutionNoise:
    """A ``Drive`` for DART: the expert's action plus AR(1) noise on the arm dims (never
    the gripper), clipped to [-1, 1].

    ``n_t = rho * n_{t-1} + sqrt(1 - rho^2) * sigma * eps_t`` with ``n_0 = sigma * eps_0``,
    so every step's noise has standard deviation ``sigma`` (normalized action units)
    and stays correlated for about ``1 / (1 - rho)`` steps. Each attempt draws from its
    own generator, seeded by its start seed, so the data do not depend on which env
    played it.
    """

    def __init__(self, sigma: float, rho: float) -> None:
        self.sigma, self.rho = sigma, rho
        # env id -> (the running attempt's generator, its noise n_t for the next step)
        self._streams: dict[int, tuple[np.random.Generator, np.ndarray]] = {}

    def __call__(
        self, observation: Any, actions: np.ndarray, running: dict[int, Attempt]
    ) -> np.ndarray:
        executed = actions.copy()
        innovation = self.sigma * np.sqrt(1.0 - self.rho**2)
        arm_dims = actions.shape[1] - 1
        for env_id, attempt in running.items():
            # play_attempts records the step's action before driving: one action = a new attempt.
            if len(attempt.actions) == 1:
                rng = np.random.default_rng([attempt.seed, NOISE_STREAM])
                self._streams[env_id] = rng, self.sigma * rng.standard_normal(arm_dims)
            rng, noise = self._streams[env_id]
            executed[env_id, :-1] = np.clip(actions[env_id, :-1] + noise, -1.0, 1.0)
            noise = self.rho * noise + innovation * rng.standard_normal(arm_dims)
            self._streams[env_id] = rng, noise
        return executed


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (deterministic: fixed compression level)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def episode_table(episode_index: int, attempt: Attempt) -> pa.Table:
    length = len(attempt.actions)
    return pa.Table.from_pydict(
        {
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "frame_index": np.arange(length, dtype=np.int64),
            "image": [encode_png(image) for image in attempt.images],
            "action": [a.astype(np.float32) for a in attempt.actions],
            "state": [s.astype(np.float32) for s in attempt.states],
            "instruction": attempt.instructions,
            "reward": np.asarray(attempt.rewards, dtype=np.float32),
            "success": np.asarray(attempt.successes, dtype=bool),
        },
        schema=SCHEMA,
    )


def play_attempts(
    env: Any,
    expert: Any,
    num_demos: int,
    seed: int,
    max_attempts: int,
    bar: Any,
    instruction: str | None = None,
    drive: Drive | None = None,
) -> Iterator[Attempt]:
    """Yield finished attempts (successful or not) in attempt order.

    New attempts start only while the successes so far plus the attempts still
    running could fall short of ``num_demos``; so the attempts played are
    exactly 0..K-1, where K is the first index at which ``num_demos`` of them
    have succeeded, however many environments run at once (with ``num_demos ==
    max_attempts``: every attempt).

    Every step records the expert's action as the attempt's action. ``drive``
    (default: the expert itself) chooses the actions the envs execute, from the
    observation, the expert's actions and the running attempts by env id: DAgger
    lets the policy drive and keeps the expert's actions as labels.
    """
    queue = EpisodeQueue(range(seed, seed + max_attempts), env.num_envs)
    running: dict[int, Attempt] = {}  # env id -> attempt
    finished: dict[int, Attempt] = {}  # attempt index -> attempt, until yielded
    next_to_yield = successes = 0

    def launch(env_ids: list[int]) -> Any:
        started = queue.assign(env_ids, limit=num_demos - successes - len(running))
        for env_id, index, start_seed in started:
            running[env_id] = Attempt(index=index, seed=start_seed)
        # The same start-state rule as evaluation, so demo and evaluation seeds compare.
        chosen, seeds = [env_id for env_id, _, _ in started], [s for _, _, s in started]
        return reset_episodes(env, chosen, seeds) if started else None

    observation = launch(list(range(env.num_envs)))
    while running:
        actions = np.asarray(expert.act(), dtype=np.float32)
        prompts = policy_prompts(observation, env, instruction)
        for env_id, attempt in running.items():
            attempt.instructions.append(prompts[env_id])
            attempt.images.append(observation.image[env_id].copy())
            attempt.states.append(observation.qpos[env_id].copy())
            attempt.actions.append(actions[env_id].copy())
        result = env.step(actions if drive is None else drive(observation, actions, running))
        observation = result.observation
        success = np.asarray(result.info["success"], dtype=bool)
        done = np.asarray(result.done, dtype=bool)
        ended = []
        for env_id, attempt in list(running.items()):
            attempt.rewards.append(float(result.reward[env_id]))
            attempt.successes.append(bool(success[env_id]))
            if done[env_id]:
                ended.append(env_id)
                del running[env_id]
                queue.finish(env_id)
                finished[attempt.index] = attempt
                successes += int(success[env_id])
                bar.set_postfix(attempts=len(queue.seeds), refresh=False)
        if ended:
            restarted = launch(ended)
            if restarted is not None:
                observation = restarted
        while next_to_yield in finished:
            yield finished.pop(next_to_yield)
            next_to_yield += 1


def check_start_range(seed: int, count: int, what: str, out_dir: Path, overwrite: bool) -> None:
    """Refuse start seeds ``[seed, seed + count)`` outside the held-out range, or an ``out_dir``
    that exists (unless ``overwrite``); ``what`` names the count in the message."""
    if seed < 0 or seed + count > TRAIN_SEED_FLOOR:
        raise ValueError(
            f"seed={seed} with {what} leaves the held-out start range "
            f"[0, {TRAIN_SEED_FLOOR}) that RL training never draws from; pick a smaller seed"
        )
    if out_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists; load it with load_demonstrations({str(out_dir)!r}), "
            "pass overwrite=True, or choose another out_dir"
        )


def _checked_attempts(
    num_demos: int, seed: int, max_attempts: int | None, out_dir: Path, overwrite: bool,
    action_noise: float, noise_correlation: float,
) -> int:  # fmt: skip
    """``max_attempts`` (its default filled in) once the request is known to be valid."""
    if not action_noise >= 0:
        raise ValueError(f"action_noise={action_noise} is invalid: use 0 (none) or a positive std")
    if not 0 <= noise_correlation < 1:
        raise ValueError(f"noise_correlation={noise_correlation} is invalid: use a value in [0, 1)")
    if num_demos < 1:
        raise ValueError(f"num_demos={num_demos} is invalid: ask for at least 1 demonstration")
    if max_attempts is None:
        max_attempts = demo_attempts(num_demos)
    if max_attempts < num_demos:
        raise ValueError(f"max_attempts={max_attempts} is smaller than num_demos={num_demos}")
    check_start_range(seed, max_attempts, f"up to {max_attempts} attempts", out_dir, overwrite)
    return max_attempts


def _shortfall(
    kept: int, attempted: int, out_of_steps: int, seed: int, num_demos: int, max_episode_steps: int
) -> RuntimeError:
    """The error for an expert that solved fewer than ``num_demos`` attempts, with the fix."""
    failed = attempted - kept
    fix = (
        f"{out_of_steps} of the {failed} failed attempts ran out of steps at "
        f"max_episode_steps={max_episode_steps}: raise the step limit (rollout.max_steps; "
        "the README lists the expert's episode lengths per task)"
        if out_of_steps * 2 >= failed
        else "raise max_attempts, or check the expert on this simulator and control mode"
    )
    return RuntimeError(
        f"the scripted expert solved only {kept} of {attempted} attempts "
        f"(seeds {seed}..{seed + attempted - 1}), short of num_demos={num_demos}; {fix}"
    )


def write_statistics(directory: Path, actions: np.ndarray, num_trajectories: int) -> None:
    """The action statistics of the kept demonstrations (gripper left unnormalized)."""
    statistics = ActionStatistics.from_actions(
        actions, mask=np.arange(actions.shape[1]) < actions.shape[1] - 1
    )
    write_dataset_statistics(
        directory / DATASET_STATISTICS_FILE,
        STATISTICS_KEY,
        statistics,
        num_transitions=len(actions),
        num_trajectories=num_trajectories,
    )


def collect_demonstrations(
    num_demos: int,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    simulator: str = "mujoco",
    env_id: str = "Lift-CRANE-X7",
    num_envs: int = 4,
    image_size: int | tuple[int, int] = 64,
    camera: str = "third_person",
    control_mode: str = "pd_joint_delta_pos",
    max_episode_steps: int = 200,
    instruction: str | None = None,
    action_noise: float = 0.0,
    noise_correlation: float = 0.9,
    max_attempts: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Record ``num_demos`` successful scripted-expert episodes as a Parquet dataset.

    Failed attempts are dropped (``meta.json`` counts them). Each row records the
    instruction of its episode (PickPlace: a different one per episode);
    ``instruction`` overrides it for every episode. ``action_noise`` > 0 executes the
    expert's arm action plus AR(1) noise of that std (normalized units) and step
    correlation ``noise_correlation`` (:class:`ExecutionNoise`), recording the clean
    action. Gives up with RuntimeError after ``max_attempts`` attempts (default
    ``demo_attempts(num_demos)``). The dataset is
    written to a temporary sibling directory and renamed to ``out_dir`` only
    when complete; an existing ``out_dir`` is replaced only with ``overwrite``.
    Returns ``out_dir``.
    """
    arguments = dict(locals())  # every parameter, taken before any other local exists
    import lift
    from lift.expert import ScriptedExpert

    out_dir = Path(out_dir)
    max_attempts = _checked_attempts(
        num_demos, seed, max_attempts, out_dir, overwrite, action_noise, noise_correlation
    )

    env = lift.make_env(
        simulator, env_id, num_envs=num_envs, image_size=image_size, camera=camera,
        control_mode=control_mode, max_episode_steps=max_episode_steps, obs_mode="rgb",
        auto_reset=True, seed=seed,
    )  # fmt: skip
    kept_seeds: list[int] = []
    kept_lengths: list[int] = []
    attempted = out_of_steps = 0
    actions: list[np.ndarray] = []
    bar = tqdm(total=num_demos, desc="demonstrations", unit="demo", disable=not progress)
    try:
        with atomic_directory(out_dir) as tmp:
            (tmp / DATA_FILE).parent.mkdir(parents=True)
            with pq.ParquetWriter(tmp / DATA_FILE, SCHEMA, compression="zstd") as writer:
                expert = ScriptedExpert(env)
                noise = ExecutionNoise(action_noise, noise_correlation) if action_noise else None
                attempts = play_attempts(
                    env, expert, num_demos, seed, max_attempts, bar, instruction, noise
                )
                for attempt in attempts:
                    attempted += 1
                    if not attempt.successes[-1]:
                        out_of_steps += len(attempt.actions) >= max_episode_steps
                        continue
                    writer.write_table(episode_table(len(kept_seeds), attempt))
                    actions.extend(attempt.actions)
                    kept_seeds.append(attempt.seed)
                    kept_lengths.append(len(attempt.actions))
                    bar.update(1)
            if len(kept_seeds) < num_demos:
                raise _shortfall(
                    len(kept_seeds), attempted, out_of_steps, seed, num_demos, max_episode_steps
                )
            write_statistics(tmp, np.stack(actions), num_trajectories=len(kept_seeds))
            meta = dataset_meta(
                env, simulator, instruction or env.instruction, seed, kept_seeds, kept_lengths, attempted
            )
            meta["recipe"] = _recipe(arguments)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            share_like_umask(tmp)
    finally:
        bar.close()
        env.close()
    return out_dir


# Parameters of collect_demonstrations that do not change what a dataset holds: the
# same seed gives the same bytes whatever num_envs is. Every other parameter, present
# or added later, is part of the recipe a cached dataset must match.
RECIPE_EXCLUDED = ("out_dir", "num_envs", "overwrite", "progress")
# Execution-noise parameters, left out of a noise-free recipe so that noise-free datasets
# keep the recipe (and cache folder) they had before noise existed.
NOISE_PARAMETERS = ("action_noise", "noise_correlation")


def _recipe(arguments: dict[str, Any]) -> dict[str, Any]:
    """What determines a dataset's contents, as plain JSON values.

    ``arguments``: the call's content parameters; ``simulator_defaults``: the
    simulator settings no parameter sets (reward mode, control rate, ...), so a
    change of those defaults does not pass for the same data; ``scene``: the digest of
    the scene's MJCF files (a camera moved in the XML is another dataset).
    """
    from lift.task import scene_digest
    from lift.types import SimulatorConfig

    defaults = dataclasses.asdict(SimulatorConfig(env_id=arguments["env_id"]))
    excluded = RECIPE_EXCLUDED + (NOISE_PARAMETERS if arguments["action_noise"] == 0 else ())
    recipe = {
        "format_version": FORMAT_VERSION,
        "arguments": {k: v for k, v in arguments.items() if k not in excluded},
        "simulator_defaults": {k: v for k, v in defaults.items() if k not in arguments},
        "scene": scene_digest(),
    }
    return json.loads(json.dumps(recipe))  # tuples -> lists, as meta.json reads back


def demo_recipe(num_demos: int, seed: int, **settings: Any) -> dict[str, Any]:
    """The recipe ``collect_demonstrations(num_demos, seed, out_dir, **settings)`` records."""
    try:
        bound = inspect.signature(collect_demonstrations).bind(num_demos, seed, None, **settings)
    except TypeError as error:
        raise TypeError(f"collect_demonstrations settings {sorted(settings)}: {error}") from None
    bound.apply_defaults()
    return _recipe(dict(bound.arguments))


def demo_dataset_dir(root: str | os.PathLike, recipe: dict[str, Any]) -> Path:
    """The cache folder of a recipe: readable settings, then a digest of the whole recipe."""
    args = recipe["arguments"]
    size = args["image_size"]
    size = "x".join(map(str, size)) if isinstance(size, list) else str(size)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    name = f"demos_{args['num_demos']}_seed{args['seed']}_{args['camera']}_{size}px_{digest}"
    return Path(root) / name


def recipe_mismatch(recorded: Any, wanted: Any, prefix: str = "") -> str | None:
    """The first dotted key where two recipes differ, as ``key=recorded (wanted ...)``."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in sorted(set(recorded) | set(wanted)):
            missing = "<absent>"
            found = recipe_mismatch(
                recorded.get(key, missing), wanted.get(key, missing), f"{prefix}{key}."
            )
            if found:
                return found
        return None
    if recorded != wanted:
        return f"{prefix.rstrip('.')}={recorded!r} (this run wants {wanted!r})"
    return None


def ensure_demonstrations(
    root: str | os.PathLike, num_demos: int, seed: int, **settings: Any
) -> Path:
    """The dataset ``collect_demonstrations(num_demos, seed, ..., **settings)`` would write,
    reused from ``root`` when its recorded recipe matches, collected into its own folder
    otherwise.

    Each recipe has its own folder (``demo_dataset_dir``); a folder there whose
    ``meta.json`` records another recipe (edited, copied, or older than recipes) is
    refused with a DemoDatasetError naming the first differing field.
    """
    recipe = demo_recipe(num_demos, seed, **settings)
    out_dir = demo_dataset_dir(root, recipe)
    if not out_dir.exists():
        return collect_demonstrations(num_demos, seed, out_dir, **settings)
    recorded = read_meta(out_dir).get("recipe", "<absent: written before recipes were recorded>")
    mismatch = recipe_mismatch(recorded, recipe, "recipe.")
    if mismatch:
        raise DemoDatasetError(
            f"{out_dir / META_FILE} records {mismatch}: the folder holds other demonstrations; "
            "delete it to collect again, or set sft.dataset_dir to another folder"
        )
    return out_dir


def share_like_umask(root: Path) -> None:
    """Give a finished dataset the permissions a plain mkdir/open would (temp files are private)."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _action_meta(control_mode: str) -> dict[str, Any]:
    """meta.json's description of the action columns in ``control_mode``."""
    from lift import task

    if control_mode == task.EE_CONTROL_MODE:
        names = ["dx", "dy", "dz", "gripper"]
        semantics = (
            f"dims 0-2: the gripper-base target moves by {task.EE_MAX_DELTA} * a m along world "
            "x, y, z (pointing down; IK gives the joints). dim 3: gripper, -1 open, +1 closed. "
            "All dims in [-1, 1]."
        )
    else:
        names = [*task.ARM_JOINT_NAMES, "gripper"]
        semantics = (
            f"dims 0-6: arm joints; pd_joint_delta_pos moves each joint target by "
            f"{task.MAX_JOINT_DELTA} * a rad, pd_joint_pos maps [-1, 1] onto the joint range. "
            "dim 7: gripper, -1 open, +1 closed. All dims in [-1, 1]."
        )
    return {
        "dim": task.action_dim(control_mode),
        "names": names,
        "control_mode": control_mode,
        "semantics": semantics,
    }


def dataset_meta(
    env: Any,
    simulator: str,
    instruction: str | None,
    seed: int,
    episode_seeds: list[int],
    episode_lengths: list[int],
    attempted: int,
) -> dict[str, Any]:
    from lift import task

    config = env.config
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_file": DATA_FILE,
        "statistics_file": DATASET_STATISTICS_FILE,
        "statistics_key": STATISTICS_KEY,
        "columns": COLUMN_DOCS,
        "env": {
            "simulator": simulator,
            "simulator_class": f"{type(env).__module__}.{type(env).__name__}",
            "env_id": config.env_id,
            "control_mode": config.control_mode,
            "camera": config.camera,
            "image_size": list(config.image_size),
            "max_episode_steps": config.max_episode_steps,
            "reward_mode": config.reward_mode,
        },
        "fps": config.control_freq,
        "instruction": instruction,  # None: one per episode, in the instruction column
        "action": _action_meta(config.control_mode),
        "state": {
            "dim": task.STATE_DIM,
            "names": [*task.ARM_JOINT_NAMES, *task.FINGER_JOINT_NAMES],
        },
        "seed": seed,
        "seeding": "attempt k starts from env.reset(seed=seed + k); kept episodes are the "
        "first num_episodes successful attempts",
        "episode_seeds": episode_seeds,
        "num_episodes": len(episode_seeds),
        "num_episodes_attempted": attempted,
        "num_transitions": sum(episode_lengths),
        "episode_lengths": episode_lengths,
    }


# --------------------------------------------------------------------------- loading


def _read_json(file: Path, what: str) -> dict[str, Any]:
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing: {what}. The dataset is incomplete; collect it again with "
            "collect_demonstrations(..., overwrite=True)"
        )
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DemoDatasetError(
            f"{file} is not valid JSON ({error}); collect the dataset again with "
            "collect_demonstrations(..., overwrite=True)"
        ) from error
    if not isinstance(data, dict):
        raise DemoDatasetError(f"{file} should hold a JSON object, found {type(data).__name__}")
    return data


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a dataset directory, checked for this format and version."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"no demonstration dataset at {path}; create one with "
            f"collect_demonstrations(num_demos, seed, {str(path)!r})"
        )
    meta = _read_json(path / META_FILE, "it describes the dataset")
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise DemoDatasetError(
            f"{path / META_FILE} describes format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; this library reads {FORMAT_NAME!r} version "
            f"{FORMAT_VERSION}. Collect the dataset again."
        )
    missing = [".".join(keys) for keys in REQUIRED_META_KEYS if not _has_keys(meta, keys)]
    if missing:
        raise DemoDatasetError(
            f"{path / META_FILE} lacks {missing}; it was edited or truncated. Collect the "
            "dataset again."
        )
    return meta


def _has_keys(data: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def load_demonstrations(path: str | os.PathLike) -> DemoDataset:
    """Read a dataset written by :func:`collect_demonstrations` into numpy arrays.

    Raises FileNotFoundError naming the missing file, or DemoDatasetError naming
    the file that is corrupt or inconsistent.
    """
    path = Path(path)
    meta = read_meta(path)
    data_file = path / DATA_FILE
    if not data_file.is_file():
        raise FileNotFoundError(
            f"{data_file} is missing: it holds the steps. Collect the dataset again with "
            "collect_demonstrations(..., overwrite=True)"
        )
    try:
        table = pq.read_table(data_file)
    except (pa.ArrowException, OSError) as error:
        raise DemoDatasetError(
            f"{data_file} is not a readable Parquet file ({error}); collect the dataset again"
        ) from error
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise DemoDatasetError(f"{data_file} lacks column(s) {missing}; expected {SCHEMA.names}")
    wrong = [
        f"{name}: {table.schema.field(name).type} (expected {SCHEMA.field(name).type})"
        for name in SCHEMA.names
        if not table.schema.field(name).type.equals(SCHEMA.field(name).type)
    ]
    if wrong:
        raise DemoDatasetError(f"{data_file} has columns of the wrong type: {'; '.join(wrong)}")

    columns = table.to_pydict()
    actions = _fixed_rows(columns["action"], meta["action"]["dim"], "action", data_file)
    states = _fixed_rows(columns["state"], meta["state"]["dim"], "state", data_file)
    height, width = meta["env"]["image_size"]
    images = np.empty((len(actions), height, width, 3), dtype=np.uint8)
    for row, png in enumerate(columns["image"]):
        try:
            frame = decode_png(png)
        except (OSError, ValueError) as error:
            raise DemoDatasetError(
                f"{data_file}: row {row} holds an image that is not a readable PNG ({error})"
            ) from error
        if frame.shape != images.shape[1:]:
            raise DemoDatasetError(
                f"{data_file}: row {row} holds a {frame.shape} image, but {path / META_FILE} "
                f"says image_size {[height, width]}"
            )
        images[row] = frame

    dataset = DemoDataset(
        path=path,
        images=images,
        actions=actions,
        states=states,
        instructions=columns["instruction"],
        episode_index=np.asarray(columns["episode_index"], dtype=np.int64),
        frame_index=np.asarray(columns["frame_index"], dtype=np.int64),
        rewards=np.asarray(columns["reward"], dtype=np.float32),
        success=np.asarray(columns["success"], dtype=bool),
        meta=meta,
    )
    counts = (dataset.num_episodes, len(dataset))
    expected = (meta.get("num_episodes"), meta.get("num_transitions"))
    if counts != expected:
        raise DemoDatasetError(
            f"{data_file} holds {counts[0]} episodes / {counts[1]} steps but {path / META_FILE} "
            f"records {expected[0]} / {expected[1]}; the files come from different runs"
        )
    statistics_file = path / DATASET_STATISTICS_FILE
    try:
        load_action_statistics(statistics_file, STATISTICS_KEY)
    except (json.JSONDecodeError, KeyError, ValueError) as error:
        raise DemoDatasetError(
            f"{statistics_file} is unreadable ({error}); collect the dataset again"
        ) from error
    return dataset


def _fixed_rows(rows: list[Any], dim: int, name: str, file: Path) -> np.ndarray:
    lengths = {len(row) for row in rows}
    if lengths - {dim}:
        raise DemoDatasetError(
            f"{file}: column {name!r} should hold lists of {dim} floats, found lengths {sorted(lengths)}"
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
