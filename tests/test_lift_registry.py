"""Simulator registry: names, env ids, overrides, optional backends."""

from __future__ import annotations

import importlib.util

import pytest

import lift
from lift.types import SimulatorConfig


def test_lists_all_backends() -> None:
    assert {"mujoco", "maniskill", "genesis", "isaacsim"} <= set(lift.list_simulators())


def test_unknown_simulator_lists_registered() -> None:
    with pytest.raises(ValueError, match="mujoco"):
        lift.make_env("bullet", "Lift-CRANE-X7")
    with pytest.raises(ValueError, match="registered"):
        lift.create_simulator("bullet", SimulatorConfig())


def test_unknown_env_id_lists_available() -> None:
    with pytest.raises(ValueError, match="Lift-CRANE-X7"):
        lift.make_env("mujoco", "StackCube")
    with pytest.raises(ValueError, match="available"):
        lift.create_simulator("mujoco", SimulatorConfig(env_id="StackCube"))


def test_unknown_override_names_valid_fields() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        lift.make_env("mujoco", "Lift-CRANE-X7", n_envs=4)


def test_invalid_override_value() -> None:
    with pytest.raises(ValueError, match="control_mode"):
        lift.make_env("mujoco", "Lift-CRANE-X7", control_mode="torque")


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [("maniskill", "mani_skill", "maniskill"), ("genesis", "genesis", "genesis")],
)
def test_missing_optional_backend_names_pip_extra(name: str, module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ImportError, match=rf"pip install -e \.\[{extra}\]"):
        lift.make_env(name, "Lift-CRANE-X7")


def test_isaacsim_says_what_it_needs() -> None:
    with pytest.raises(ImportError, match="Python 3.12.*RTX GPU.*Isaac Sim"):
        lift.make_env("isaacsim", "Lift-CRANE-X7")


def test_register_custom_simulator() -> None:
    built = []
    lift.register_simulator("fake-for-test", lambda config: built.append(config) or config)
    config = lift.make_env("fake-for-test", "Lift-CRANE-X7", num_envs=3)
    assert built and config.num_envs == 3


def test_mujoco_gl_defaults_to_egl() -> None:
    import os

    assert os.environ.get("MUJOCO_GL")  # set by lift's MuJoCo backend when the user had not (test_import_layers)
