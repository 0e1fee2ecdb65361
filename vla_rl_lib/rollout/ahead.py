"""Collect-ahead: the next update's episodes played in a worker process while the learner updates.

With ``rollout.collect_ahead`` the trainer hands this executor rollout k+1
(its start seeds, its sampling seeds and a frozen copy of the weights from
before update k) and then runs update k; one spawned worker process, with its
own simulator and policy replica (``replica.py``), plays the episodes
meanwhile. That is one update of policy lag, as in asynchronous PPO: update
k+1 learns from episodes of the policy before update k, and its PPO ratio and
clip are taken against the log-probs and values recorded with those episodes
(``algorithms.ppo.ppo_update``), so the objective stays the one PPO
optimizes.

Why a process and not a thread: the tiny VLA's forward pass is mostly Python,
and ``benchmarks/gil_release.py`` measured a policy loop beside a busy thread
at 0.32 of its rate alone; a thread would also share torch's global random
stream and thread count with the update (``benchmarks/collect_ahead_modes.py``
times both). Being spawned, the worker re-imports the script that started
training, which therefore needs an ``if __name__ == "__main__":`` guard (the
CLI and notebooks have one). The worker plays exactly what
``LocalExecutor.collect`` would (``play_shards`` with the same shards and
sampling seeds, one torch thread), so its rollout is the in-process one to the
bit (``tests/test_collect_ahead.py``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vla_rl_lib.rollout.collector import Episode, Rollout, RolloutCollector
from vla_rl_lib.rollout.executor import (
    CollectOptions,
    play_shards,
    shard_sampling_seeds,
    shard_seeds,
)
from vla_rl_lib.rollout.replica import base_location, policy_load_settings, replica_collector

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from vla_rl_lib.config import VLARLConfig
    from vla_rl_lib.policy.base import VLAPolicy
    from vla_rl_lib.policy.loading import PolicySettings

Weights = dict[str, torch.Tensor]

# The worker process's collector (one per process: the pool has a single worker).
_collector: RolloutCollector | None = None


def _start_worker(
    config: VLARLConfig, settings: PolicySettings, base_kind: str, base_path: str
) -> int:
    """In the worker: one torch thread (as the learner's rollouts), then the replica."""
    global _collector
    if "OMP_NUM_THREADS" not in os.environ:  # the user's setting wins, as in the trainer
        torch.set_num_threads(1)
    _collector = replica_collector(config, settings, base_kind, base_path, "cpu")
    return os.getpid()


def _play(
    weights: Weights, shards: list[tuple[int, list[int]]], sampling: list[int], options: CollectOptions
) -> tuple[Rollout, float]:
    """In the worker: the rollout with ``weights``, and the process CPU seconds it took."""
    if _collector is None:
        raise RuntimeError("the collect-ahead worker was not started (_start_worker)")
    cpu = time.process_time()
    _collector.policy.load_trainable_state_dict(weights)
    rollout = play_shards(_collector, shards, sampling, **options)
    return rollout, time.process_time() - cpu


class CollectAheadError(RuntimeError):
    """The collect-ahead worker failed or was asked for a rollout it was not given."""


def frozen_weights(policy: VLAPolicy) -> Weights:
    """A copy of the policy's trainable weights that later optimizer steps cannot change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in policy.trainable_state_dict().items()}


@dataclass
class _Pending:
    key: int
    future: Future
    on_episode: Callable[[Episode], None] | None


class AheadExecutor:
    """Plays rollouts in one spawned worker process, at most one at a time in flight.

    ``submit(key, seeds, weights)`` starts a rollout and returns at once;
    ``result(key)`` waits for it. ``collect`` (the ``RolloutExecutor``
    contract) is both, with the learner's current weights. Sampling seeds come
    from one draw of the caller's torch RNG at ``submit``, as
    ``LocalExecutor.collect`` draws them.
    """

    def __init__(
        self, config: VLARLConfig, policy: VLAPolicy, base: dict[str, Any], run_dir: Path
    ) -> None:
        self.policy = policy
        self.num_shards = config.rollout.num_workers
        self.metrics: dict[str, float] = {}
        self._pending: _Pending | None = None
        settings = policy_load_settings(policy)
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        start = self._pool.submit(
            _start_worker, config, settings, base["kind"], base_location(base, Path(run_dir))
        )
        try:  # a worker that cannot build its simulator or policy fails here, with its error
            self.worker_pid = self._wait(start)
        except BaseException:
            self.close()
            raise

    def submit(
        self, key: int, seeds: Sequence[int], weights: Weights, **options: Unpack[CollectOptions]
    ) -> None:
        """Start playing ``seeds`` with ``weights`` (use ``frozen_weights``: they are sent
        after this returns); ``key`` names the rollout for ``result``."""
        if self._pending is not None:
            raise CollectAheadError(
                f"rollout {self._pending.key} is still in flight; take it with result() first"
            )
        on_episode = options.pop("on_episode", None)  # called here, as episodes arrive
        shards = shard_seeds(seeds, self.num_shards)
        sampling = shard_sampling_seeds(len(shards))
        future = self._pool.submit(_play, weights, shards, sampling, options)
        self._pending = _Pending(key, future, on_episode)

    @property
    def pending(self) -> int | None:
        """The key of the rollout in flight, if any."""
        return None if self._pending is None else self._pending.key

    def result(self, key: int) -> Rollout:
        """The rollout submitted as ``key``, once the worker has played it."""
        pending = self._pending
        if pending is None or pending.key != key:
            raise CollectAheadError(
                f"rollout {key} was never submitted (in flight: {self.pending}); submit it first"
            )
        t_wait = time.perf_counter()
        try:
            rollout, worker_cpu_s = self._wait(pending.future)
        finally:
            self._pending = None
        waited = time.perf_counter() - t_wait
        if pending.on_episode is not None:  # the worker merged the shards: episodes as they sit
            for ep in rollout.episodes:
                pending.on_episode(ep)
        self.metrics = {
            # the learner blocked this long for the rollout: 0 when it was ready in time
            "perf/rollout_wait_s": waited,
            "perf/rollout_worker_cpu_s": worker_cpu_s,
            # the share of the rollout's wall-clock that ran beside the learner's own work
            "perf/rollout_overlap": max(0.0, 1.0 - waited / max(rollout.seconds_total, 1e-9)),
        }
        return rollout

    def collect(self, seeds: Sequence[int], **options: Unpack[CollectOptions]) -> Rollout:
        """Play ``seeds`` now with the policy's current weights, in the worker."""
        key = -1
        self.submit(key, seeds, frozen_weights(self.policy), **options)
        return self.result(key)

    def _wait(self, future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool as exc:
            raise CollectAheadError(
                f"the collect-ahead worker process died ({exc}); check the machine's memory and "
                "the log above, or set rollout.collect_ahead: false"
            ) from exc

    def close(self) -> None:
        """Stop the worker; a rollout in flight is waited for and dropped."""
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)
