"""The ``isaacsim`` backend name: registered, but it cannot run on this kind of machine.

Isaac Sim needs three things this project cannot install for you:

* Python 3.12 (Isaac Sim 6.x wheels; the 5.x ``isaacsim`` package for Python 3.11
  is a stub that downloads the real runtime from NVIDIA's own package index);
* an NVIDIA RTX GPU (its renderer and PhysX GPU pipeline need RTX cores);
* an Isaac Sim install (``pip install isaacsim[all]`` from NVIDIA's index, or the
  Omniverse launcher build).

There is deliberately no stand-in implementation: selecting the backend raises
:class:`IsaacSimUnavailableError`, which says which of the three is missing here.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys

from lift.types import SimulatorConfig

REQUIRED_PYTHON = (3, 12)


class IsaacSimUnavailableError(RuntimeError):
    """Raised when the ``isaacsim`` backend is selected."""


def missing_requirements() -> list[str]:
    """What this machine lacks for Isaac Sim, in words (empty when all three are present)."""
    missing = []
    if sys.version_info[:2] < REQUIRED_PYTHON:
        missing.append(
            f"Python {REQUIRED_PYTHON[0]}.{REQUIRED_PYTHON[1]} "
            f"(this interpreter is {sys.version_info.major}.{sys.version_info.minor})"
        )
    if shutil.which("nvidia-smi") is None:
        missing.append("an NVIDIA RTX GPU (no nvidia-smi on PATH)")
    if importlib.util.find_spec("isaacsim") is None:
        missing.append("an Isaac Sim install (the 'isaacsim' package is not importable)")
    return missing


def unavailable_message() -> str:
    missing = missing_requirements()
    found = "missing here: " + "; ".join(missing) if missing else "all three were found"
    return (
        "The 'isaacsim' simulator backend needs Python 3.12, an NVIDIA RTX GPU and an "
        f"Isaac Sim install ({found}). This project ships no Isaac Sim implementation of "
        "PickPlace-CRANE-X7 yet; use backend 'mujoco' (always installed), or 'maniskill' / "
        "'genesis' after `make sims`."
    )


def create_isaacsim_simulator(config: SimulatorConfig, *args: object, **kwargs: object) -> None:
    """Registry entry for ``isaacsim``: always raises :class:`IsaacSimUnavailableError`."""
    raise IsaacSimUnavailableError(unavailable_message())
