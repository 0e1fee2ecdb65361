"""lift-sim on its own: a bare venv with only ``sim/`` installed runs the gymnasium env, without torch.

Builds a fresh venv (``python -m venv``) and ``pip install``s a copy of ``sim/`` into it
(non-editable, so the wheel's package data must carry the scene XMLs), then steps
``gymnasium.make("lift/Lift-CRANE-X7-v0")`` there. pip fetches mujoco, gymnasium and numpy
from the configured index. Slow: about 2 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "sim"

CHECK = """
import importlib.util, json, sys
import gymnasium
import lift
env = gymnasium.make("lift/Lift-CRANE-X7-v0", image_size=(32, 32))
obs, info = env.reset(seed=0)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
print(json.dumps({
    "lift": lift.__file__,
    "image": list(obs["image"].shape),
    "qpos": list(obs["qpos"].shape),
    "reward": float(reward),
    "torch_installed": importlib.util.find_spec("torch") is not None,
    "torch_imported": "torch" in sys.modules,
}))
"""


def test_sim_pyproject_names_only_the_simulator_dependencies() -> None:
    project = tomllib.loads((SIM / "pyproject.toml").read_text())["project"]
    assert project["name"] == "lift-sim"
    names = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]}
    assert names == {"numpy", "mujoco", "gymnasium"}
    assert {"maniskill", "genesis"} <= set(project["optional-dependencies"])


@pytest.mark.slow
def test_lift_sim_alone_steps_the_gymnasium_env_without_torch(tmp_path: Path) -> None:
    source = tmp_path / "sim"  # a copy: setuptools writes build/ and *.egg-info beside the code
    shutil.copytree(SIM, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", "egl")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]

    ran = subprocess.run(
        [str(python), "-c", CHECK], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert Path(result["lift"]).is_relative_to(venv)  # the installed copy, not this checkout
    assert result["image"] == [32, 32, 3] and result["qpos"] == [9]
    assert result["reward"] in (0.0, 1.0)
    assert not result["torch_installed"] and not result["torch_imported"]
