"""torch's intra-op thread count, set per training phase on CPU.

Rollouts run the policy on one thread: its matrices are too small to split,
and spinning OpenMP workers starve the simulator's software renderer
(llvmpipe). The PPO update multiplies micro-batches of a thousand or more
token rows and can use more cores (``ppo.update_threads``), but only on a
machine with idle cores: on a busy 2-core machine 2 threads made the update
13x slower (99 against 6.5 samples/s; the worker spins at every barrier while
its peer is descheduled; ``OMP_WAIT_POLICY=PASSIVE`` cut that to 1.6x slower).
``phase_threads`` switches the count for one block and restores it after, so
the rollout that follows runs on one thread again. ``OMP_NUM_THREADS`` set by
the user wins over both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def update_threads(requested: int, device: torch.device) -> int | None:
    """Threads for the update: ``requested``, or one per core for 0; None leaves torch's count."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return requested or available_cores()


@contextmanager
def phase_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
