"""Whether an unavailable simulator backend skips a test (locally) or fails it (in CI).

``make test-backends`` in CI must not go green having run nothing: with
``REQUIRE_BACKENDS=1`` (``.ci/run`` sets it) or ``CI=true``, a missing package
or renderer is a failure. Elsewhere the test skips, and ``-rs`` prints why.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NoReturn

import pytest

PACKAGES = {"mujoco": "mujoco", "maniskill": "mani_skill", "genesis": "genesis"}


def backends_required() -> bool:
    return os.environ.get("REQUIRE_BACKENDS") == "1" or os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; fail instead where every backend is required."""
    if backends_required():
        pytest.fail(f"{reason} [REQUIRE_BACKENDS=1 or CI=true: every backend must run]",
                    pytrace=False)
    pytest.skip(reason)


def require_package(name: str) -> None:
    """Skip or fail (see ``unavailable``) when backend ``name``'s package is not installed."""
    if importlib.util.find_spec(PACKAGES[name]) is None:
        unavailable(f"{name}: package {PACKAGES[name]!r} is not installed (run `make sims`)")
