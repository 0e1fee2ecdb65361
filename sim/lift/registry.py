"""Simulator registry: names -> factories, with optional backends imported on first use."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields

from lift.simulator import JOINT_CONTROL_MODES, Simulator, check_control_mode
from lift.types import SimulatorConfig

Factory = Callable[[SimulatorConfig], Simulator]
# A factory, or "package.module:ClassName" imported lazily when the simulator is created.
FactorySpec = Factory | str


@dataclass(frozen=True)
class SimulatorEntry:
    name: str
    factory: FactorySpec
    env_ids: tuple[str, ...]
    extra: str | None = None  # the pip extra that installs the backend's packages
    requires: tuple[str, ...] = ()  # importable module names the backend needs
    control_modes: tuple[str, ...] = JOINT_CONTROL_MODES  # the SimulatorConfig.control_mode it runs


_REGISTRY: dict[str, SimulatorEntry] = {}


def register_simulator(
    name: str,
    factory: FactorySpec,
    extra: str | None = None,
    env_ids: tuple[str, ...] = ("Lift-CRANE-X7", "PickPlace-CRANE-X7"),
    requires: tuple[str, ...] = (),
    control_modes: tuple[str, ...] = JOINT_CONTROL_MODES,
) -> None:
    """Register ``factory`` (a callable or ``"module:attr"``) under ``name``.

    ``requires`` are checked before the factory is imported; a missing one raises
    ImportError telling the user to ``pip install -e .[extra]``. A config whose
    control mode is not in ``control_modes`` is refused before that.
    """
    _REGISTRY[name] = SimulatorEntry(
        name, factory, tuple(env_ids), extra, tuple(requires), tuple(control_modes)
    )


def list_simulators() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> SimulatorEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown simulator {name!r}; registered: {list_simulators()}")
    return _REGISTRY[name]


def _install_hint(entry: SimulatorEntry) -> str:
    if entry.extra is None:
        return ""
    return (
        f"; install it with `pip install -e .[{entry.extra}]` in the vla-rl checkout "
        f"(lift-sim alone: `pip install -e './sim[{entry.extra}]'`)"
    )


def _resolve(entry: SimulatorEntry) -> Factory:
    missing = [module for module in entry.requires if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(
            f"simulator {entry.name!r} needs the package(s) {missing}, which are not installed"
            + _install_hint(entry)
        )
    if callable(entry.factory):
        return entry.factory
    module_name, _, attr = entry.factory.partition(":")
    if importlib.util.find_spec(module_name) is None:
        raise ImportError(
            f"simulator {entry.name!r} is registered but its module {module_name} does not exist yet "
            f"(expected {module_name.replace('.', '/')}.py defining {attr})"
        )
    return getattr(importlib.import_module(module_name), attr)


def create_simulator(name: str, config: SimulatorConfig) -> Simulator:
    """Build simulator ``name`` for ``config``; unknown names or env ids raise ValueError."""
    entry = _entry(name)
    if config.env_id not in entry.env_ids:
        raise ValueError(
            f"simulator {name!r} has no env {config.env_id!r} (not supported there yet); "
            f"available: {list(entry.env_ids)}"
        )
    check_control_mode(config, f"simulator {name!r}", entry.control_modes)
    return _resolve(entry)(config)


def make_env(simulator: str, env_id: str, **overrides: object) -> Simulator:
    """``create_simulator(simulator, SimulatorConfig(env_id=env_id, **overrides))``."""
    entry = _entry(simulator)
    if env_id not in entry.env_ids:
        raise ValueError(
            f"simulator {simulator!r} has no env {env_id!r} (not supported there yet); "
            f"available: {list(entry.env_ids)}"
        )
    valid = [f.name for f in fields(SimulatorConfig) if f.name != "env_id"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown SimulatorConfig field(s) {unknown}; valid fields: {valid}")
    return create_simulator(simulator, SimulatorConfig(env_id=env_id, **overrides))


def isaacsim_unavailable(config: SimulatorConfig) -> Simulator:
    """Isaac Sim cannot run here; say what it takes."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    raise ImportError(
        "simulator 'isaacsim' needs Python 3.12 (this is Python "
        f"{version}), an NVIDIA RTX GPU and an Isaac Sim install (Isaac Sim 6.x via NVIDIA's "
        "package index); it is not available in this environment. Use 'mujoco' instead."
    )
