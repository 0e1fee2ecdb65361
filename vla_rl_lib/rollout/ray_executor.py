"""Rollouts on Ray: M worker actors, each with its own batched simulator and policy replica.

The learner stays on the driver. Before every collect the driver puts the
policy's trainable weights (LoRA or trained weights plus the value head, never
the frozen base) into the object store once and hands the same reference to
every worker; each worker plays its shard of the start seeds and returns a
``Rollout``, and the driver merges the shards (see ``executor.py`` for why the
episodes equal the local executor's). A worker that dies mid-rollout is
replaced by a fresh actor that plays its shard again, with the same sampling
seed, so the update goes ahead with the same episodes.

``submit`` and ``result`` split a collect in two, so that with
``rollout.collect_ahead`` the workers play the next update's episodes while the
driver runs this update (``collect`` is both, with the current weights).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vla_rl_lib.policy.loading import PolicySettings
from vla_rl_lib.rollout.collector import Episode, Rollout
from vla_rl_lib.rollout.executor import (
    CollectOptions,
    merge_shards,
    play_shard,
    relabel,
    shard_options,
    shard_sampling_seeds,
    shard_seeds,
)
from vla_rl_lib.rollout.replica import base_location, policy_load_settings, replica_collector

try:
    import ray
    from ray.exceptions import RayActorError
except ImportError as exc:  # ray is the optional `ray` extra
    raise ImportError(
        "rollout.executor='ray' needs Ray: `pip install 'vla-rl[ray]'` (or "
        "`pip install 'ray[default]>=2.40'`), or set rollout.executor: local"
    ) from exc

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from vla_rl_lib.config import VLARLConfig
    from vla_rl_lib.policy.base import VLAPolicy

# Environment variables a worker on another node needs to render and load models like the driver.
FORWARDED_ENV_VARS = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "HF_HUB_OFFLINE", "HF_HOME")


class RolloutWorkerError(RuntimeError):
    """Rollout workers keep failing; the message says which and what to do."""


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data in a state dict (what the weight broadcast moves)."""
    return sum(t.numel() * t.element_size() for t in state.values())


class RolloutWorker:
    """One Ray actor: a batched simulator and a replica of the policy's base."""

    def __init__(
        self,
        config: VLARLConfig,
        settings: PolicySettings,
        base_kind: str,
        base_path: str,
        device: str,
    ) -> None:
        # One intra-op thread per CPU granted: torch's spinning workers starve the renderer.
        torch.set_num_threads(max(1, int(config.rollout.worker_num_cpus)))
        if Path(base_path).is_absolute() and not Path(base_path).exists():
            raise FileNotFoundError(
                f"rollout worker on {socket.gethostname()} cannot see the base model {base_path}; "
                "put output_dir (and any sft/pretrained checkpoint) on a filesystem that every "
                "Ray node mounts at the same path"
            )
        self.collector = replica_collector(config, settings, base_kind, base_path, device)
        self.device = device
        self._exit_after: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": self.device,
            "num_envs": self.collector.env.num_envs,
        }

    def collect(
        self,
        weights: dict[str, torch.Tensor],
        seeds: list[int],
        sampling_seed: int,
        options: CollectOptions,
    ) -> Rollout:
        self.collector.policy.load_trainable_state_dict(weights)
        injected = self._fault_injection()
        return play_shard(self.collector, seeds, sampling_seed, **options, on_episode=injected)

    def exit_after_episodes(self, count: int) -> None:
        """Fault drill: this process exits abruptly once ``count`` more episodes have finished."""
        self._exit_after = count

    def _fault_injection(self) -> Callable[[Episode], None] | None:
        if self._exit_after is None:
            return None
        finished = 0

        def maybe_exit(_: Episode) -> None:
            nonlocal finished
            finished += 1
            if finished >= self._exit_after:
                os._exit(1)

        return maybe_exit

    def close(self) -> None:
        self.collector.env.close()


def connect(address: str | None, num_cpus: float, num_gpus: float) -> bool:
    """Join ``address`` ("auto", "ray://host:port", "host:port") or start a small local Ray.

    Returns whether this call connected (so ``close`` disconnects again); a Ray
    that a notebook already initialized is used as it is.
    """
    if ray.is_initialized():
        return False
    if address is None:  # local workers inherit this process's environment
        ray.init(
            address="local",  # a new private Ray, never a cluster that `ray start` left running
            num_cpus=math.ceil(num_cpus),
            num_gpus=math.ceil(num_gpus) if num_gpus else None,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    else:
        env_vars = {k: os.environ[k] for k in FORWARDED_ENV_VARS if k in os.environ}
        try:
            ray.init(
                address=address, logging_level=logging.WARNING, runtime_env={"env_vars": env_vars}
            )
        except ConnectionError as exc:
            raise ConnectionError(
                f"could not join the Ray cluster at rollout.ray_address={address!r} ({exc}); "
                "check the address and `ray status` on the head. A cluster started with "
                "`ray start` uses token authentication (Ray >= 2.59): set RAY_AUTH_MODE=token "
                "here, with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            ) from exc
    return True


def check_cluster_resources(num_cpus: float, num_gpus: float) -> None:
    total = ray.cluster_resources()
    for name, needed, key in (
        ("CPU", num_cpus, "worker_num_cpus"),
        ("GPU", num_gpus, "worker_num_gpus"),
    ):
        have = total.get(name, 0.0)
        if needed > have:
            raise RolloutWorkerError(
                f"the Ray cluster has {have:g} {name}s but the rollout workers need {needed:g} "
                f"(rollout.num_workers x rollout.{key}); lower them or add nodes"
            )


@dataclass
class _Flight:
    """A rollout submitted to the workers and not yet taken (``RayExecutor.submit``)."""

    key: int
    shards: list[tuple[int, list[int]]]
    sampling: list[int]
    options: CollectOptions
    on_episode: Callable[[Episode], None] | None
    weights_ref: Any
    weight_bytes: int
    started: float
    broadcast_s: float = 0.0
    refs: dict[Any, int] = field(default_factory=dict)  # shard result -> shard index


class RayExecutor:
    """Plays each collect's shards in parallel on ``rollout.num_workers`` Ray actors."""

    def __init__(
        self,
        config: VLARLConfig,
        policy: VLAPolicy,
        base: dict[str, Any],
        run_dir: Path,
        max_restarts_per_collect: int | None = None,
    ) -> None:
        r = config.rollout
        self.config = config
        self.policy = policy
        self.settings = policy_load_settings(policy)
        self.base_kind = base["kind"]
        self.base_path = base_location(base, Path(run_dir))
        # Every worker may die once per collect before the collect gives up.
        self.max_restarts_per_collect = (
            r.num_workers if max_restarts_per_collect is None else max_restarts_per_collect
        )
        self.worker_restarts = 0
        self.metrics: dict[str, float] = {}
        self._flight: _Flight | None = None
        cpus, gpus = r.num_workers * r.worker_num_cpus, r.num_workers * r.worker_num_gpus
        self.workers: list[Any] = []
        self._connected = connect(r.ray_address, cpus, gpus)
        try:
            check_cluster_resources(cpus, gpus)
            self._actor_class = ray.remote(RolloutWorker).options(
                num_cpus=r.worker_num_cpus, num_gpus=r.worker_num_gpus, max_restarts=0
            )
            self.workers = [self._spawn() for _ in range(r.num_workers)]
            # A worker that cannot build its simulator or policy fails here, with its traceback.
            self.worker_info = ray.get([w.describe.remote() for w in self.workers])
        except BaseException:
            self.close()  # no half-started workers or private Ray left behind
            raise

    def _spawn(self) -> Any:
        device = "cuda" if self.config.rollout.worker_num_gpus > 0 else "cpu"
        return self._actor_class.remote(
            self.config, self.settings, self.base_kind, self.base_path, device
        )

    def _replace(self, index: int) -> None:
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._spawn()

    def collect(self, seeds: Sequence[int], **options: Unpack[CollectOptions]) -> Rollout:
        """Same contract as ``RolloutCollector.collect``; ``on_episode`` runs as shards arrive."""
        weights = {k: v.detach().cpu() for k, v in self.policy.trainable_state_dict().items()}
        self.submit(-1, seeds, weights, **options)
        return self.result(-1)

    def submit(
        self, key: int, seeds: Sequence[int], weights: dict[str, torch.Tensor],
        **options: Unpack[CollectOptions],
    ) -> None:  # fmt: skip
        """Start playing ``seeds`` with ``weights`` on the workers and return at once
        (``rollout.collect_ahead``); ``result(key)`` takes the rollout. The weights are copied
        into the object store before this returns."""
        if self._flight is not None:
            raise RolloutWorkerError(
                f"rollout {self._flight.key} is still in flight; take it with result() first"
            )
        t_start = time.perf_counter()
        on_episode = options.pop("on_episode", None)  # called here, not on the workers
        shards = shard_seeds(seeds, len(self.workers))
        flight = _Flight(
            key, shards, shard_sampling_seeds(len(shards)), options, on_episode,
            ray.put(weights), state_nbytes(weights), t_start,
        )  # fmt: skip
        flight.broadcast_s = time.perf_counter() - t_start
        flight.refs = {self._submit_shard(flight, shard): shard for shard in range(len(shards))}
        self._flight = flight

    @property
    def pending(self) -> int | None:
        """The key of the rollout in flight, if any."""
        return None if self._flight is None else self._flight.key

    def _submit_shard(self, flight: _Flight, shard: int) -> Any:
        offset, seeds = flight.shards[shard]
        mine = shard_options(flight.options, offset, column=0)  # on_episode was taken out
        return self.workers[shard].collect.remote(flight.weights_ref, seeds, flight.sampling[shard], mine)

    def result(self, key: int) -> Rollout:
        """The rollout submitted as ``key``, once every shard is back (a dead worker's shard
        is played again on a fresh one)."""
        flight = self._flight
        if flight is None or flight.key != key:
            raise RolloutWorkerError(
                f"rollout {key} was never submitted (in flight: {self.pending}); submit it first"
            )
        self._flight = None
        t_wait = time.perf_counter()
        pending, shards, on_episode = flight.refs, flight.shards, flight.on_episode
        results: dict[int, Rollout] = {}
        restarts = 0
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ready)
            try:
                results[shard] = ray.get(ready)
            except RayActorError as exc:
                restarts += 1
                self.worker_restarts += 1
                if restarts > self.max_restarts_per_collect:
                    raise RolloutWorkerError(
                        f"rollout workers died {restarts} times in one collect (last: worker "
                        f"{shard}: {exc}); check the nodes' memory and logs "
                        "(`ray logs`), or use rollout.executor: local"
                    ) from exc
                self._replace(shard)
                pending[self._submit_shard(flight, shard)] = shard
                continue
            if on_episode is not None:
                column = shard * self.config.rollout.num_parallel_envs
                for ep in results[shard].episodes:
                    on_episode(relabel(ep, shards[shard][0], column))
        waited = time.perf_counter() - t_wait
        played = [results[s] for s in range(len(shards))]
        rollout = merge_shards(
            [(shards[s][0], played[s]) for s in range(len(shards))],
            seconds_total=time.perf_counter() - flight.started,
        )
        slowest = max(r.seconds_total for r in played)
        self.metrics = {
            "perf/worker_env_steps_per_s": sum(r.env_steps / r.seconds_total for r in played)
            / len(played),
            # Wall-clock beyond the slowest shard: broadcast, dispatch, result transfer, merge
            # (and, with collect_ahead, the time the rollout waited to be taken).
            "perf/executor_overhead_s": rollout.seconds_total - slowest,
            "rollout/workers": len(self.workers),
            "rollout/weight_broadcast_bytes": flight.weight_bytes,
            "perf/weight_broadcast_s": flight.broadcast_s,
            "rollout/worker_restarts": restarts,
            "rollout/worker_restarts_total": self.worker_restarts,
            # the learner blocked this long for the rollout; the rest ran beside its own work
            "perf/rollout_wait_s": waited,
            "perf/rollout_overlap": max(0.0, 1.0 - waited / max(rollout.seconds_total, 1e-9)),
        }
        return rollout

    def close(self) -> None:
        """Stop the workers; disconnect from (or stop) the Ray this executor connected to."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        if self._connected:
            ray.shutdown()
            self._connected = False
