"""The executor a run names: the one module that knows both executors.

``executor.py`` (local play, shared sharding helpers) and ``ray_executor.py``
(which builds on those helpers) do not import each other's way round; this
module sits above both, and imports Ray's only when a run asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vla_rl_lib.rollout.executor import LocalExecutor, RolloutExecutor, make_collector

if TYPE_CHECKING:
    from lift import Simulator
    from vla_rl_lib.config import VLARLConfig
    from vla_rl_lib.policy.base import VLAPolicy


def make_executor(
    config: VLARLConfig,
    env: Simulator,
    policy: VLAPolicy,
    base: dict[str, Any],
    run_dir: Path,
) -> RolloutExecutor:
    """The executor ``config.rollout.executor`` names (a worker process that plays ahead of the
    learner with ``rollout.collect_ahead``); ``base`` is the factory's base record."""
    r = config.rollout
    if r.collect_ahead and r.executor == "local":  # Ray's workers play ahead as they are
        from vla_rl_lib.rollout.ahead import AheadExecutor

        return AheadExecutor(config, policy, base, run_dir)
    if r.executor == "local":
        return LocalExecutor(make_collector(config, env, policy), num_shards=r.num_workers)
    if r.executor == "ray":
        from vla_rl_lib.rollout.ray_executor import RayExecutor

        return RayExecutor(config, policy, base, run_dir)
    raise ValueError(f"rollout.executor={r.executor!r} is not one of 'local', 'ray'")
