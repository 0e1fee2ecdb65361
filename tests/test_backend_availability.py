"""The backend contract tests cannot pass in CI having run nothing."""

from __future__ import annotations

import backend_availability
import pytest
from backend_availability import require_package


@pytest.fixture
def missing_backend(monkeypatch):
    monkeypatch.setitem(backend_availability.PACKAGES, "ghost", "no_such_simulator_package")
    monkeypatch.delenv("REQUIRE_BACKENDS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return "ghost"


@pytest.mark.parametrize("variable, value", [("REQUIRE_BACKENDS", "1"), ("CI", "true")])
def test_an_unavailable_backend_fails_in_ci(missing_backend, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(pytest.fail.Exception, match="'no_such_simulator_package' is not installed"):
        require_package(missing_backend)


def test_an_unavailable_backend_skips_locally_with_the_reason(missing_backend):
    with pytest.raises(pytest.skip.Exception, match="ghost: package 'no_such_simulator_package'"):
        require_package(missing_backend)


def test_an_installed_backend_runs(monkeypatch):
    monkeypatch.setenv("REQUIRE_BACKENDS", "1")
    require_package("mujoco")  # neither skips nor fails
