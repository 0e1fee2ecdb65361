"""Trust: checkpoints never run code, and the documented JupyterLab never serves without a token.

Remote code in model repositories (``trust_remote_code``) is covered where it
is decided, in ``tests/test_openvla_loading.py`` (off-allowlist ids and paths
are refused; the same directory spelled differently matches).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.cli import main

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _checkpoint_with_payload(run_dir: Path, file: str, marker: Path) -> Path:
    path = ckpt.save_checkpoint(
        run_dir / "checkpoint_latest",
        config_yaml="seed: 0\n",
        policy_state={"value_head.weight": torch.zeros(1, 2)},
        optimizer_state={"state": {}, "param_groups": []},
        trainer_state={"update": 1, "env_steps": 6, "best_eval_success": 0.0, "elapsed_s": 1.0},
    )
    torch.save({"value_head.weight": Payload(marker)}, path / file)
    # A forger rewrites the recorded digest too, so the load gets as far as unpickling.
    state = json.loads((path / ckpt.TRAINER_STATE_FILE).read_text())
    state["files"][file] = ckpt.file_digest(path / file)
    (path / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state))
    return path


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "ran"
    path = _checkpoint_with_payload(tmp_path, ckpt.POLICY_FILE, marker)
    torch.load(path / ckpt.POLICY_FILE, weights_only=False)
    assert marker.exists()  # so the tests below would notice it running


@pytest.mark.parametrize("file", [ckpt.POLICY_FILE, ckpt.OPTIMIZER_FILE])
def test_resume_and_evaluate_refuse_pickled_code(tiny_config, tmp_path, capsys, file):
    from vla_rl_lib.config import save_config

    marker = tmp_path / "ran"
    run_dir = Path(tiny_config.output_dir) / tiny_config.experiment_name
    checkpoint = _checkpoint_with_payload(run_dir, file, marker)
    config = tmp_path / "cfg.yaml"
    save_config(tiny_config, config)

    assert main(["train", "--config", str(config), "--resume"]) == 2
    assert main(["evaluate", "--checkpoint", str(checkpoint)]) == 2
    errors = capsys.readouterr().err.strip().split("\n")
    assert len(errors) == 2 and all(file in line and "corrupt" in line for line in errors), errors
    assert not marker.exists()


# ------------------------------------------------------------------ JupyterLab instructions

JUPYTER = re.compile(r"\bjupyter[- ](lab|notebook|server)\b")
NO_AUTH = re.compile(
    r"(token|password)\s*=\s*(''|\"\"|\s|$)"  # --ServerApp.token='' and friends
    r"|--no-token|disable_check_xsrf|allow_unauthenticated_access\s*=\s*True",
    re.IGNORECASE,
)


def _documented_commands() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]
    commands = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():  # join continued shell lines
            if JUPYTER.search(line):
                commands.append((path.name, line.strip()))
    return commands


def test_documented_jupyterlab_keeps_its_token():
    for name, command in _documented_commands():
        assert not NO_AUTH.search(command), f"{name}: {command!r} serves JupyterLab without a token"
        if re.search(r"--ip[= ]?(0\.0\.0\.0|\*|::)", command):
            pytest.fail(f"{name}: {command!r} listens on every interface; bind 127.0.0.1 and tunnel")


def test_the_check_catches_a_tokenless_command():
    bad = "jupyter lab --no-browser --ServerApp.token='' --port 8888"
    assert JUPYTER.search(bad) and NO_AUTH.search(bad)
    good = "jupyter lab --no-browser --ip=127.0.0.1 --port=8888"
    assert JUPYTER.search(good) and not NO_AUTH.search(good)
