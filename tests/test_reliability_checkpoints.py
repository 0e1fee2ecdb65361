"""Checkpoints under fire: kill -9 while one is written, damaged files, trust.

* A training process killed (SIGKILL) while it writes ``checkpoint_latest``
  leaves the previous checkpoint loadable, and ``train --resume`` continues
  from it to the end.
* A truncated or corrupt file in ``checkpoint_latest`` makes ``train --resume``
  and ``evaluate --checkpoint`` exit 2 with a one-line error naming that file;
  a resume never silently starts over.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES
from tests.kill_child import sigkill_when
from vla_rl_lib.config import apply_overrides, load_template, save_config
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.cli import main
from vla_rl_lib.training.runs import latest_run

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI in a child process that stops dead at a chosen point inside the
# second save of checkpoint_latest and says so through a marker file.
CRASHING_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import torch
    marker, where, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    count = {"saves": 0}

    def stop_here(detail):
        marker.write_text(detail)
        time.sleep(600)  # the parent kills us (SIGKILL) now

    if where == "writing":  # new files half written in the temporary directory
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            path = Path(f)
            if path.parent.name.startswith(".checkpoint_latest.tmp-") and path.name == "policy_state_dict.pt":
                count["saves"] += 1
                if count["saves"] == 2:
                    stop_here(str(path.parent))
        torch.save = save
    else:  # "swapping": the old checkpoint moved aside, the new one not yet renamed in
        real_replace = os.replace
        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if Path(dst).name == ".checkpoint_latest.old":
                stop_here(str(dst))
        os.replace = replace

    from vla_rl_lib.training.cli import main
    sys.exit(main(argv))
    """
)


def _write_config(tmp_path: Path, name: str = "tiny", **overrides) -> Path:
    cfg = apply_overrides(
        load_template("fast"),
        {**TINY_OVERRIDES, "output_dir": str(tmp_path / "outputs"), "experiment_name": name,
         **overrides},
    )
    path = tmp_path / f"{name}.yaml"
    save_config(cfg, path)
    return path


def _child_env() -> dict[str, str]:
    env = dict(os.environ, MUJOCO_GL="egl", HF_HUB_OFFLINE="1", PYTHONPATH=f"{ROOT / 'sim'}{os.pathsep}{ROOT}")
    env.pop("VLA_RL_DEBUG", None)
    return env


@pytest.mark.parametrize(("where", "resume"), [("writing", "PATH"), ("swapping", "bare")])
def test_kill_9_during_checkpoint_write_then_resume(tmp_path, where, resume, capsys):
    config = _write_config(tmp_path, num_updates=3, num_eval_episodes=1)
    marker = tmp_path / "stopped_inside_save"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CHILD, str(marker), where, "train", "--config", str(config)],
        cwd=ROOT, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    sigkill_when(child, marker.exists, "the second checkpoint save", timeout_s=300)
    assert child.returncode == -signal.SIGKILL

    run_dir = latest_run(tmp_path / "outputs" / "tiny")
    latest = run_dir / "checkpoint_latest"
    if where == "writing":  # the half-written new checkpoint sits beside the intact old one
        assert list(run_dir.glob(".checkpoint_latest.tmp-*"))
        assert ckpt.load_checkpoint(latest)["trainer_state"]["update"] == 1
    else:  # killed between the two renames: only the moved-aside old checkpoint exists
        assert not latest.exists() and (run_dir / ".checkpoint_latest.old").is_dir()
        assert ckpt.recover_checkpoint(latest) == latest
        assert ckpt.load_checkpoint(latest)["trainer_state"]["update"] == 1

    if resume == "PATH":  # the checkpoint directory alone: its own config.yaml is the base
        argv = ["train", "--resume", str(latest)]
    else:
        argv = ["train", "--config", str(config), "--resume"]
    assert main(argv) == 0
    assert f"run folder: {run_dir.resolve()}" in capsys.readouterr().err
    assert ckpt.load_checkpoint(latest)["trainer_state"]["update"] == 3
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".checkpoint_latest")]
    assert leftovers == []
    train = [r["update"] for r in load_metrics(run_dir) if "train/success_rate" in r]
    assert train == [1, 2, 3]  # update 2, logged before the kill, was replayed once


# ------------------------------------------------------------------ damaged files


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished one-update run; each test damages its own copy."""
    tmp_path = tmp_path_factory.mktemp("trained")
    config = _write_config(tmp_path, num_updates=1)
    assert main(["train", "--config", str(config)]) == 0
    return tmp_path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[: min(64, len(data))] = b"\x00\xff{\x80garbage: [\n" * 4
    path.write_bytes(bytes(data))


def _cut_at_a_line(path: Path) -> None:
    """Still valid YAML (the first half of the keys): only the recorded digest can tell."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))


def _wrong_weights(path: Path) -> None:
    torch.save({"model.not_a_weight": torch.zeros(2)}, path)


def _without_update(path: Path) -> None:
    path.write_text('{"env_steps": 3}')


DAMAGE = [
    (ckpt.POLICY_FILE, _truncate),
    (ckpt.POLICY_FILE, _garble),
    (ckpt.POLICY_FILE, _wrong_weights),
    (ckpt.OPTIMIZER_FILE, _truncate),
    (ckpt.OPTIMIZER_FILE, _garble),
    (ckpt.TRAINER_STATE_FILE, _truncate),
    (ckpt.TRAINER_STATE_FILE, _garble),
    (ckpt.TRAINER_STATE_FILE, _without_update),
    (ckpt.CONFIG_FILE, _truncate),
    (ckpt.CONFIG_FILE, _garble),
    (ckpt.CONFIG_FILE, _cut_at_a_line),
]


@pytest.fixture(params=DAMAGE, ids=[f"{name}-{how.__name__[1:]}" for name, how in DAMAGE])
def damaged_run(request, trained_run, tmp_path):
    name, damage = request.param
    shutil.copytree(trained_run, tmp_path, dirs_exist_ok=True, symlinks=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(config.read_text().replace(str(trained_run), str(tmp_path)))
    run_dir = latest_run(tmp_path / "outputs" / "tiny")
    damage(run_dir / "checkpoint_latest" / name)
    return config, run_dir, name


def _one_line_error(capsys, name: str) -> str:
    """The CLI's error: one line, naming the file, after at most transformers' loading bar."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("python -m vla_rl_lib") and ": error: " in last, err
    assert name in last, err
    return last


def test_resume_from_a_damaged_checkpoint_names_the_file(damaged_run, capsys):
    config, run_dir, name = damaged_run
    before = sorted(p.name for p in run_dir.iterdir())
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    config.write_text(config.read_text().replace("num_updates: 1", "num_updates: 2"))

    assert main(["train", "--config", str(config), "--resume"]) == 2
    _one_line_error(capsys, name)
    # Nothing started over: no new update was logged, no checkpoint rewritten.
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_evaluate_a_damaged_checkpoint_names_the_file(damaged_run, capsys):
    _, run_dir, name = damaged_run
    code = main(["evaluate", "--checkpoint", str(run_dir / "checkpoint_latest"), "--num-episodes", "1"])
    assert code == 2  # the optimizer file is not needed to evaluate, but a bad one is refused
    _one_line_error(capsys, name)


def test_interval_zero_saves_only_at_the_end_and_never_evaluates(tmp_path, capsys):
    config = _write_config(
        tmp_path, num_updates=2, eval_interval=0, save_interval=0, num_eval_episodes=0
    )
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    run_dir = latest_run(tmp_path / "outputs" / "tiny")
    assert ckpt.load_checkpoint(run_dir / "checkpoint_latest")["trainer_state"]["update"] == 2
    records = load_metrics(run_dir)
    assert not [r for r in records if "val/success" in r or "test/success" in r]
    assert [r["update"] for r in records if "train/success_rate" in r] == [1, 2]
