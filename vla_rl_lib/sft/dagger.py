"""DAgger (Ross et al. 2011): the policy drives, the scripted expert labels every state it visits.

Behaviour cloning fits the expert's states only; a cloned policy drifts to states
no demonstration shows and has no label there. DAgger plays the *policy*, records
at every step the image, instruction and joint state it saw with the *expert's*
action for that state as the label, adds those frames to the demonstrations and
trains again. The expert (``lift.expert.ScriptedExpert``) reads the simulator's
state, so it labels any state the policy reaches. In ``pd_ee_delta_pos`` the label
is, by default, the expert's step toward its phase's goal from the end-effector
target the policy left (``ScriptedExpert(follow_target=True)``): from its own
script's waypoint instead, a drifted arm gets a jump back cut to [-1, 1] axis by
axis, saturated and bent in direction (nearly every policy-driven label of a
barely trained policy: benchmarks/dagger.py prints the share as label_saturated).

``collect_dagger`` writes a folder in the demonstration format (``demos.py``:
``load_demonstrations`` reads it) whose ``meta.json["dagger"]`` says what played it;
every episode is kept, failed ones included. ``concatenate_demonstrations`` joins
the original demonstrations and the DAgger rounds into one ``DemoDataset`` for
``run_sft``, with the first dataset's action statistics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from vla_rl_lib.rollout.collector import RolloutCollector
from vla_rl_lib.sft.demos import (
    DATA_FILE,
    META_FILE,
    SCHEMA,
    Attempt,
    DemoDataset,
    check_start_range,
    dataset_meta,
    episode_table,
    play_attempts,
    share_like_umask,
    write_statistics,
)
from vla_rl_lib.utils import atomic_directory

DAGGER_COLUMN_DOCS = {
    "episode_index": "0..num_episodes-1: every episode played, failed ones included",
    "action": "float32: the expert's action for the state of this row (the label), whoever drove",
    "success": "bool: the task was solved after the executed action",
}


@dataclasses.dataclass
class _Disagreement:
    """Running sums of |policy action - expert action| over the steps the policy drove."""

    abs_error: np.ndarray
    steps: int = 0

    def mean(self) -> list[float]:
        return (self.abs_error / max(self.steps, 1)).round(4).tolist()


def expert_driven_episodes(seed: int, num_episodes: int, beta: float) -> np.ndarray:
    """Which episodes the expert drives: each with probability ``beta``, drawn from ``seed``
    alone (episode k's draw does not depend on ``num_episodes``)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} is invalid: it is a probability, give a value in [0, 1]")
    return np.random.default_rng([seed, 0xDA66E5]).random(num_episodes) < beta


def collect_dagger(
    collector: RolloutCollector,
    num_episodes: int,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    beta: float = 0.0,
    greedy: bool = True,
    temperature: float = 1.0,
    follow_target: bool = True,
    policy_checkpoint: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Play ``num_episodes`` episodes (start seeds ``seed .. seed + num_episodes - 1`` of the
    collector's env) with ``collector``'s policy, label every step with the scripted expert's
    action, and write them as a demonstration folder at ``out_dir``.

    Each episode is driven by the expert instead of the policy with probability ``beta``
    (``expert_driven_episodes``; 0 = pure policy). The policy acts through
    ``collector.act``, the call evaluation makes, greedily or sampled at ``temperature``
    (sampling draws from ``seed``; the global torch RNG is left as it was).
    ``follow_target``: the expert steps from where the arm's target is
    (``ScriptedExpert(follow_target=True)``), else from its own script's waypoint. The env must
    be one MuJoCo simulator (``make_rollout_env`` with ``rollout.env_groups: 1``), playing
    the split the data should come from (``train``). ``policy_checkpoint`` is recorded in
    ``meta.json``.
    Returns ``out_dir``.
    """
    from lift.expert import ScriptedExpert

    out_dir = Path(out_dir)
    _check_request(num_episodes, seed, out_dir, overwrite)
    env = collector.env
    driven_by_expert = expert_driven_episodes(seed, num_episodes, beta)
    disagreement = _Disagreement(np.zeros(env.action_dim))

    def drive(observation: Any, labels: np.ndarray, running: dict[int, Attempt]) -> np.ndarray:
        rows = np.array(sorted(i for i, a in running.items() if not driven_by_expert[a.index]))
        executed = labels.copy()
        if rows.size:
            out = collector.act(env, observation, rows, temperature, greedy)
            executed[rows] = out.actions
            disagreement.abs_error += np.abs(out.actions - labels[rows]).sum(axis=0)
            disagreement.steps += rows.size
        return executed

    episodes: list[Attempt] = []
    actions: list[np.ndarray] = []
    bar = tqdm(total=num_episodes, desc="DAgger", unit="episode", disable=not progress)
    try:
        with (
            atomic_directory(out_dir) as tmp,
            torch.random.fork_rng(devices=_cuda_devices(collector)),
        ):
            torch.manual_seed(seed)
            (tmp / DATA_FILE).parent.mkdir(parents=True)
            with pq.ParquetWriter(tmp / DATA_FILE, SCHEMA, compression="zstd") as writer:
                expert = ScriptedExpert(env, follow_target=follow_target)
                attempts = play_attempts(
                    env, expert, num_episodes, seed, num_episodes, bar, collector.instruction, drive
                )
                for attempt in attempts:
                    writer.write_table(episode_table(len(episodes), attempt))
                    actions.extend(attempt.actions)
                    episodes.append(attempt)
                    bar.update(1)
            write_statistics(tmp, np.stack(actions), num_trajectories=len(episodes))
            meta = _dagger_meta(env, collector.instruction, seed, episodes)
            meta["dagger"] = {
                "beta": beta,
                "greedy": greedy,
                "temperature": temperature,
                "follow_target": follow_target,
                "policy_checkpoint": policy_checkpoint,
                "expert_driven": driven_by_expert.tolist(),
                "episode_success": [bool(a.successes[-1]) for a in episodes],
                "policy_steps": disagreement.steps,
                "policy_abs_error": disagreement.mean(),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            share_like_umask(tmp)
    finally:
        bar.close()
    return out_dir


def _check_request(num_episodes: int, seed: int, out_dir: Path, overwrite: bool) -> None:
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes} is invalid: play at least 1 episode")
    check_start_range(seed, num_episodes, f"{num_episodes} episodes", out_dir, overwrite)


def _cuda_devices(collector: RolloutCollector) -> list[int]:
    device = next(collector.policy.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


def _dagger_meta(
    env: Any, instruction: str | None, seed: int, episodes: Sequence[Attempt]
) -> dict[str, Any]:
    lengths = [len(a.actions) for a in episodes]
    meta = dataset_meta(
        env, "mujoco", instruction or env.instruction, seed, [a.seed for a in episodes],
        lengths, attempted=len(episodes),
    )  # fmt: skip
    meta["env"]["split"] = env.config.split
    meta["columns"] = {**meta["columns"], **DAGGER_COLUMN_DOCS}
    meta["seeding"] = (
        "episode k starts from env.reset(seed=seed + k); every episode is kept; "
        "dagger.expert_driven[k] says who drove it (the expert's actions are the labels either way)"
    )
    return meta


def concatenate_demonstrations(datasets: Sequence[DemoDataset]) -> DemoDataset:
    """One dataset of every step of ``datasets``, in order (episode indices renumbered so that
    they stay distinct). ``path`` is the first dataset's, so its action statistics are the
    union's ``statistics``: train on DAgger rounds with the original demonstrations'
    normalization. ``meta["sources"]`` lists each part's path, episodes and steps.
    """
    if not datasets:
        raise ValueError("concatenate_demonstrations needs at least one dataset")
    first = datasets[0]
    for other in datasets[1:]:
        if (
            other.images.shape[1:] != first.images.shape[1:]
            or other.actions.shape[1] != first.actions.shape[1]
        ):
            raise ValueError(
                f"{other.path} holds {other.images.shape[1:]} images and {other.actions.shape[1]}-D "
                f"actions but {first.path} holds {first.images.shape[1:]} and "
                f"{first.actions.shape[1]}-D; join datasets of the same env settings"
            )
    offsets = np.cumsum([0] + [int(d.episode_index.max()) + 1 if len(d) else 0 for d in datasets])
    return DemoDataset(
        path=first.path,
        images=np.concatenate([d.images for d in datasets]),
        actions=np.concatenate([d.actions for d in datasets]),
        states=np.concatenate([d.states for d in datasets]),
        instructions=[text for d in datasets for text in d.instructions],
        episode_index=np.concatenate(
            [d.episode_index + o for d, o in zip(datasets, offsets, strict=False)]
        ),
        frame_index=np.concatenate([d.frame_index for d in datasets]),
        rewards=np.concatenate([d.rewards for d in datasets]),
        success=np.concatenate([d.success for d in datasets]),
        meta={
            **first.meta,
            "sources": [
                {"path": str(d.path), "num_episodes": d.num_episodes, "num_transitions": len(d)}
                for d in datasets
            ],
            "num_episodes": int(offsets[-1]),
            "num_transitions": sum(len(d) for d in datasets),
        },
    )
