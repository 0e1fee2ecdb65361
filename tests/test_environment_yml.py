"""environment.yml's pip section must list exactly pyproject.toml's requirements."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def test_pip_section_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = _pip_section()
    # The exact CPU torch pin mirrors the Makefile's first install step.
    assert pip[0] == "torch==2.13.0"
    assert "-e .[dev,ray]" in pip
    listed = [p for p in pip[1:] if not p.startswith("-e ")]
    assert listed == project["dependencies"]
    # lift-sim is this checkout's sim/: installed editable before vla-rl, as the Makefile does.
    assert pip.index("-e ./sim") < pip.index("-e .[dev,ray]")
    sim = tomllib.loads((ROOT / "sim" / "pyproject.toml").read_text())["project"]
    assert f"{sim['name']}=={sim['version']}" in project["dependencies"]


def test_python_version_matches() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
