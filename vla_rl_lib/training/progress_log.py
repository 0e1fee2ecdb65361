"""Plain progress lines for training whose output goes to a file, a pipe, a scheduler or CI.

A progress bar redraws one line with carriage returns: in a log file that is either nothing
(tqdm stays silent without a terminal) or thousands of fragments. Instead, one line every
``log_interval`` updates, and on the last one (env steps/s counts since the previous line,
rollouts, updates and evaluations included; ETA = updates left at the mean pace so far,
capped by ``max_minutes``)::

    [vla-rl] update 20/100 | env steps 4812 | train success 0.45 (mean of 10) | held-out 0.50 [0.30, 0.70] @20 | approx KL 0.0123 | 312 env steps/s | elapsed 1m05s | ETA 4m20s
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TextIO

SMOOTHING_WINDOW = 10  # updates in the train-success rolling mean


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m20s`` or ``35s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressLog:
    """Writes the progress line of an update to ``stream`` every ``interval`` updates.

    ``update(record)`` takes the trainer's per-update record (``update``, ``env_steps``,
    ``train/success_rate``, ``ppo/approx_kl``); ``evaluated(record)`` an evaluation record
    (``val/success`` and ``test/success`` with their intervals). The clock is injected so tests need not wait.
    """

    def __init__(
        self,
        stream: TextIO,
        total: int,
        interval: int,
        *,
        first_update: int = 0,
        first_env_steps: int = 0,
        max_minutes: float | None = None,
        elapsed_before_s: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream = stream
        self.total = total
        self.interval = interval
        self.max_minutes = max_minutes
        self._clock = clock
        self._start = clock()
        self._first_update = first_update
        self._elapsed_before_s = elapsed_before_s
        self._success: deque[float] = deque(maxlen=SMOOTHING_WINDOW)
        self._eval: Mapping[str, Any] | None = None
        self._mark = (self._start, first_env_steps)  # (time, env steps) at the last line

    def evaluated(self, record: Mapping[str, Any]) -> None:
        self._eval = record

    def update(self, record: Mapping[str, Any], last: bool = False) -> str | None:
        """Record an update; return (and write) its line when one is due (always when ``last``)."""
        update = int(record["update"])
        if record.get("train/success_rate") is not None:
            self._success.append(float(record["train/success_rate"]))
        if update % self.interval and update != self.total and not last:
            return None
        now = self._clock()
        line = self.line(record, now)
        self._mark = (now, int(record.get("env_steps", 0)))
        self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def line(self, record: Mapping[str, Any], now: float) -> str:
        update, steps = int(record["update"]), int(record.get("env_steps", 0))
        parts = [f"[vla-rl] update {update}/{self.total}", f"env steps {steps}"]
        if self._success:
            mean = sum(self._success) / len(self._success)
            parts.append(f"train success {mean:.2f} (mean of {len(self._success)})")
        for split in ("val", "test"):
            if self._eval is not None and self._eval.get(f"{split}/success") is not None:
                e, low, high = self._eval, f"{split}/success_low", f"{split}/success_high"
                parts.append(
                    f"{split} {e[f'{split}/success']:.2f} [{e[low]:.2f}, {e[high]:.2f}] @{e['update']}"
                )
            else:
                parts.append(f"{split} -")
        kl = record.get("ppo/approx_kl")
        parts.append(f"approx KL {kl:.4f}" if isinstance(kl, (int, float)) else "approx KL -")
        since, steps_then = self._mark
        rate = (steps - steps_then) / max(now - since, 1e-9)
        parts.append(f"{rate:.0f} env steps/s")
        run_s = now - self._start
        parts.append(f"elapsed {format_duration(self._elapsed_before_s + run_s)}")
        done_here = update - self._first_update
        eta = (self.total - update) * run_s / done_here if done_here > 0 else None
        if self.max_minutes is not None:
            left = 60 * self.max_minutes - self._elapsed_before_s - run_s
            eta = max(left, 0.0) if eta is None else min(eta, max(left, 0.0))
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
        return " | ".join(parts)
