"""Building the project prints no warning of its own making (e.g. setuptools' deprecations)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_string() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def _build_wheel(source: Path, dist: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``pip wheel`` of ``source`` into ``dist``: the result and the warnings of our making."""
    # the venv's own setuptools (no download); pyproject.toml asks for >= 77
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    ours = [line for line in result.stderr.splitlines() if "warn" in line.lower()
            and "Location 'file:" not in line]  # fmt: skip  (pip's note about this machine's index)
    return result, ours


def test_wheel_builds_without_warnings(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info beside the code
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result, ours = _build_wheel(source, tmp_path / "dist")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ours == [], ours
    (wheel,) = (tmp_path / "dist").glob("vla_rl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA")))
    assert b"License-Expression: Apache-2.0" in metadata


def test_lift_sim_wheel_builds_without_warnings_and_carries_the_scenes(tmp_path: Path) -> None:
    """sim/ (distribution lift-sim) builds on its own; its wheel holds the MJCF scenes."""
    source = tmp_path / "sim"  # a copy: setuptools writes build/ and *.egg-info beside the code
    shutil.copytree(ROOT / "sim", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    result, ours = _build_wheel(source, tmp_path / "dist")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ours == [], ours
    (wheel,) = (tmp_path / "dist").glob("lift_sim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for scene in ("crane_x7.xml", "scene_lift.xml", "scene_pickplace.xml", "README.md"):
        assert f"lift/assets/crane_x7/{scene}" in names
    assert not any(name.startswith("vla_rl_lib/") for name in names)
