"""Kill a child process with SIGKILL once a condition holds (the kill -9 resume tests)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest


def sigkill_when(
    child: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float
) -> None:
    """Wait until ``ready()``, then SIGKILL ``child``; fail naming ``what`` if the child exits
    first (with the tail of its stderr) or ``timeout_s`` passes. The child is reaped either way."""
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if child.poll() is not None:
                pytest.fail(f"training exited ({child.returncode}) before {what}: "
                            f"{child.stderr.read().decode()[-2000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"training never reached {what}")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stderr.close()
