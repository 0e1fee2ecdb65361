"""The container files: compose.yaml is valid Compose, its profiles run real commands, and the
Dockerfile installs exactly what the Makefile installs.

No container engine runs here, so nothing is built or started. What is checked: the Compose
Specification's own JSON schema (``tests/data/compose-spec.json``, from
github.com/compose-spec/compose-spec ``schema/compose-spec.json`` at commit 170098ba, Apache-2.0),
``docker-compose config`` / ``docker compose config`` where one is installed, and the
commands and install lines against the Makefile and the CLI.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from vla_rl_lib.training.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _services_by_profile(compose: dict) -> dict[str, dict]:
    return {profile: service for service in compose["services"].values()
            for profile in service.get("profiles", [])}  # fmt: skip


def _validate(compose: dict) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(compose)


def test_compose_file_follows_the_compose_specification() -> None:
    _validate(_compose())
    broken = copy.deepcopy(_compose())
    broken["services"]["vla-rl"]["profile"] = ["vla-rl"]  # a typo of "profiles"
    with pytest.raises(jsonschema.ValidationError, match="profile"):
        _validate(broken)


def test_the_seed_profiles_run_make_train_and_jupyterlab_on_localhost_with_a_token() -> None:
    services = _services_by_profile(_compose())
    assert {"vla-rl", "vla-rl-dev", "vla-rl-gpu"} <= set(services)
    make_targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
    assert services["vla-rl"]["command"] == ["make", "train"] and "train" in make_targets

    dev = services["vla-rl-dev"]
    assert dev["stdin_open"] and dev["tty"]  # `run --rm vla-rl-dev bash` is a shell
    assert dev["command"][:2] == [".venv/bin/jupyter", "lab"] and "notebooks/" in dev["command"]
    assert dev["ports"] == ["127.0.0.1:8888:8888"]  # published on the loopback interface only
    assert not [arg for arg in dev["command"] if "token" in arg.lower()]  # token stays on
    assert "/app/.venv" in dev["volumes"]  # the source mount does not hide the image's venv


def test_the_gpu_variant_reserves_nvidia_devices_and_runs_a_valid_train_command() -> None:
    gpu = _services_by_profile(_compose())["vla-rl-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["args"]["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    python, module, *argv = gpu["command"]
    assert (python, module) == (".venv/bin/python", "-m") and argv[0] == "vla_rl_lib"
    args = build_parser().parse_args(argv[1:])  # exits 2 on a flag the CLI does not have
    assert args.command == "train" and (ROOT / args.config).is_file()


def _makefile_install_steps() -> list[str]:
    """The venv recipe of the Makefile, with its variables expanded as in the image."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.split(r"^\$\(STAMP\):.*\n", text, maxsplit=1, flags=re.M)[1].split("\n\n", 1)[0]
    names = {"$(PY)": ".venv/bin/python", "$(PYTHON)": "python3", "$(VENV)": ".venv",
             "$(STAMP)": ".venv/.installed"}  # fmt: skip
    steps = []
    for line in recipe.splitlines():
        for name, value in names.items():
            line = line.replace(name, value)
        steps.append(line.strip())
    return steps


def _dockerfile_runs() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


def test_dockerfile_installs_what_the_makefile_installs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11[-\w.]*$", text, flags=re.M)  # CPU, Python 3.11
    steps = _makefile_install_steps()
    assert steps[0] == "test -x .venv/bin/python || python3 -m venv .venv"
    runs = _dockerfile_runs()
    # The Makefile's steps before the project install run on their own cached layers...
    assert runs.index("python3 -m venv .venv") < runs.index(
        ".venv/bin/python -m pip install -q --upgrade pip"
    )
    assert steps[1] == ".venv/bin/python -m pip install -q --upgrade pip"
    torch = [step for step in steps if "torch==" in step]
    assert len(torch) == 1  # torch first, the exact version
    torch_runs = [i for i, run in enumerate(runs) if run.endswith(torch[0])]
    assert len(torch_runs) == 1
    # ...then `make venv` itself does the rest (pip install -e '.[dev,ray]', the kernel, the stamp)
    make_venv = [i for i, run in enumerate(runs) if shlex.split(run)[-2:] == ["make", "venv"]]
    assert len(make_venv) == 1 and torch_runs[0] < make_venv[0]
    assert any("-e '.[dev,ray]'" in step for step in steps)
    assert any("-e ./sim -e '.[dev,ray]'" in step for step in steps)  # lift-sim beside it
    assert re.search(r"^COPY \. \.$", text, flags=re.M)


COMPOSE_CLIS = [cli for cli in (["docker-compose"], ["docker", "compose"])
                if shutil.which(cli[0]) and subprocess.run(
                    [*cli, "version"], capture_output=True).returncode == 0]  # fmt: skip


@pytest.mark.parametrize("profile", ["vla-rl", "vla-rl-dev", "vla-rl-gpu"])
def test_compose_config_accepts_each_profile(profile: str, tmp_path: Path) -> None:
    if not COMPOSE_CLIS:
        reason = "neither docker-compose nor docker compose installed (apt-get install docker-compose)"
        if os.environ.get("REQUIRE_COMPOSE") == "1" or os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} [REQUIRE_COMPOSE=1 or CI=true: .ci/run installs it]")
        pytest.skip(reason)
    cli = COMPOSE_CLIS[0]
    result = subprocess.run([*cli, "-f", "compose.yaml", "--profile", profile, "config"],
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert profile in yaml.safe_load(result.stdout)["services"]
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("ports:", "portz:"))
    result = subprocess.run([*cli, "-f", str(broken), "config"], capture_output=True, text=True)
    assert result.returncode != 0 and "portz" in result.stderr
