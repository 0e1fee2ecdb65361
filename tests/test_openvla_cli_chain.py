"""OpenVLA through the same commands as the tiny VLA: sft -> train -> evaluate -> resume, and bf16.

The chain runs the real CLI (``python -m vla_rl_lib ...`` in a subprocess)
with ``pretrained_checkpoint`` pointed at a small checkpoint in OpenVLA's
on-disk format (remote code included, built by ``make_openvla_checkpoint``).
Like the real ``openvla/openvla-7b``, its ``norm_stats`` hold only 7-D
end-effector statistics, so CRANE-X7's 8-D statistics must come from SFT.
Nothing in the library knows it is a stand-in: the settings are
``params/full.yaml`` with smaller sizes and a CPU device.

The bad-input tests run in-process and need no model weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.kill_child import sigkill_when
from tests.test_openvla_loading import _action_stats, make_openvla_checkpoint
from vla_rl_lib.config import ConfigError, apply_overrides, load_template, save_config
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.policy.openvla import allowlist_with_saved_policy
from vla_rl_lib.sft.demos import load_demonstrations
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.cli import build_parser, main, resolve_config
from vla_rl_lib.training.policy_factory import policy_from_run_checkpoint
from vla_rl_lib.training.runs import latest_run

ROOT = Path(__file__).resolve().parent.parent
UNNORM_KEY = "crane_x7_pickplace"


def _write_config(root: Path, checkpoint: Path, name: str, **overrides: Any) -> Path:
    """params/full.yaml shrunk to CPU size, starting from ``checkpoint``."""
    settings: dict[str, Any] = {
        "pretrained_checkpoint": str(checkpoint),
        "trust_remote_code": [str(checkpoint)],
        "device": "cpu",
        "output_dir": str(root / "outputs"),
        "experiment_name": name,
        "num_updates": 2,
        "eval_interval": 1,
        "save_interval": 1,
        "num_eval_episodes": 2,
        # The scripted expert needs about 40 steps: demonstrations are collected with 60.
        "rollout": {"num_parallel_envs": 2, "num_rollouts_per_update": 2, "max_steps": 60,
                    "image_size": 32},
        "ppo": {"minibatch_size": 8, "micro_batch_size": 4, "num_epochs": 1, "group_size": 2},
        "lora_rank": 4, "lora_alpha": 8.0, "lora": {"rank": 4, "alpha": 8.0},
        "model": {"dtype": "float32"},
        "sft": {"num_demos": 2, "epochs": 2, "batch_size": 16, "dataset_dir": str(root / "demos")},
    }  # fmt: skip
    for key, value in overrides.items():
        if isinstance(value, dict):
            settings[key] = {**settings.get(key, {}), **value}
        else:
            settings[key] = value
    cfg = apply_overrides(load_template("full"), settings)
    path = root / f"{name}.yaml"
    save_config(cfg, path)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, MUJOCO_GL="egl", HF_HUB_OFFLINE="1", PYTHONPATH=f"{ROOT / 'sim'}{os.pathsep}{ROOT}")
    env.pop("VLA_RL_DEBUG", None)
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "vla_rl_lib", *args], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, f"{args[0]} exited {out.returncode}: {out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def base_openvla(tmp_path_factory) -> Path:
    """OpenVLA-format checkpoint whose only statistics are 7-D (like openvla-7b's bridge_orig)."""
    return make_openvla_checkpoint(
        tmp_path_factory.mktemp("base"), norm_stats={"bridge_orig": _action_stats(7)}
    )


def _lora_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "lora_" in k}


@pytest.mark.slow
def test_sft_train_evaluate_and_resume_after_kill_through_the_cli(base_openvla, tmp_path):
    config = _write_config(tmp_path, base_openvla, "openvla_sft")
    # RL episodes need not succeed here: shorter ones keep the chain quick.
    rl_config = _write_config(tmp_path, base_openvla, "rl", rollout={"max_steps": 12})
    outputs = tmp_path / "outputs"

    # sft: demonstrations -> LoRA fine-tuning of the OpenVLA-format base.
    _cli("sft", "--config", str(config))
    sft_dir = outputs / "openvla_sft" / "sft"
    policy_config = json.loads((sft_dir / "policy_config.json").read_text())
    assert policy_config["lora"]["enabled"] and policy_config["lora"]["rank"] == 4
    assert policy_config["base_model"] == str(base_openvla)  # referenced, not copied
    assert policy_config["unnorm_key"] == UNNORM_KEY
    assert not list(sft_dir.glob("model*.safetensors"))
    assert (sft_dir / "adapter_model.safetensors").is_file()
    assert (sft_dir / "processor_config.json").is_file() and (sft_dir / "tokenizer.json").is_file()
    saved = json.loads((sft_dir / "dataset_statistics.json").read_text())
    assert list(saved) == [UNNORM_KEY]  # OpenVLA's norm_stats layout, CRANE-X7's 8 dims
    demos = load_demonstrations(json.loads((sft_dir / "sft_metrics.json").read_text())["dataset"])
    assert np.allclose(saved[UNNORM_KEY]["action"]["q01"], demos.statistics.q01)
    assert len(saved[UNNORM_KEY]["action"]["q99"]) == 8
    sft_adapter = _lora_tensors(load_file(str(sft_dir / "adapter_model.safetensors")))
    assert sft_adapter and any(v.abs().sum() > 0 for k, v in sft_adapter.items() if "lora_B" in k)

    # train --sft-checkpoint: the file's pretrained_checkpoint gives way to the flag.
    _cli("train", "--config", str(rl_config), "--sft-checkpoint", str(sft_dir))
    latest = outputs / "rl" / "checkpoint_latest"
    state = ckpt.load_checkpoint(latest)
    assert state["trainer_state"]["update"] == 2
    assert state["trainer_state"]["base"] == {"kind": "sft", "path": str(sft_dir)}
    trained = _lora_tensors(state["policy_state"])
    assert trained and len(trained) == len(sft_adapter)
    moved = [k for k in sft_adapter if not torch.equal(sft_adapter[k], trained[f"model.{k}"])]
    assert moved, "PPO left every LoRA weight of the SFT adapter unchanged"

    # evaluate: the run checkpoint and the SFT folder itself.
    for checkpoint in (latest, sft_dir):
        out = _cli("evaluate", "--checkpoint", str(checkpoint), "--num-episodes", "2")
        assert "episodes=2" in out.stdout.splitlines()[-1]

    # Killed (SIGKILL) after its first checkpoint, then --resume to the end.
    argv = ["train", "--config", str(rl_config), "--experiment-name", "killed", "--sft-checkpoint",
            str(sft_dir), "--num-updates", "3"]  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "vla_rl_lib", *argv], cwd=ROOT, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    killed_latest = outputs / "killed" / "checkpoint_latest"
    sigkill_when(child, lambda: (killed_latest / ckpt.TRAINER_STATE_FILE).is_file(),
                 "its first checkpoint", timeout_s=600)
    assert child.returncode == -signal.SIGKILL
    killed_run = latest_run(outputs / "killed")  # the run folder the links point into
    stopped_at = ckpt.load_checkpoint(ckpt.recover_checkpoint(killed_run / "checkpoint_latest"))
    stopped_at = stopped_at["trainer_state"]
    assert stopped_at["update"] < 3
    _cli(*argv, "--resume")
    assert ckpt.load_checkpoint(killed_latest)["trainer_state"]["update"] == 3
    assert latest_run(outputs / "killed") == killed_run  # resumed in its own run folder
    updates = sorted({r["update"] for r in load_metrics(killed_run) if "train/success_rate" in r})
    assert updates == [1, 2, 3]


@pytest.mark.slow
def test_bf16_on_cpu_warm_start_inside_train_then_evaluate(base_openvla, tmp_path):
    """No SFT checkpoint and a base without 8-D statistics: train runs SFT first (the full.yaml path)."""
    config = _write_config(tmp_path, base_openvla, "bf16", num_updates=1,
                           model={"dtype": "bfloat16"})  # fmt: skip
    _cli("train", "--config", str(config))
    run_dir = latest_run(tmp_path / "outputs" / "bf16")
    state = ckpt.load_checkpoint(run_dir / "checkpoint_latest")
    assert state["trainer_state"]["base"] == {"kind": "warm_start", "path": "sft"}
    assert list(json.loads((run_dir / "sft" / "dataset_statistics.json").read_text())) == [UNNORM_KEY]
    # The frozen base runs in bf16; PEFT keeps the LoRA weights in fp32 (autocast_adapter_dtype).
    policy, _, _ = policy_from_run_checkpoint(run_dir / "checkpoint_latest")
    frozen = {p.dtype for n, p in policy.model.named_parameters() if "lora_" not in n}
    assert frozen == {torch.bfloat16}
    assert {v.dtype for v in _lora_tensors(state["policy_state"]).values()} == {torch.float32}
    metrics = [r for r in load_metrics(run_dir) if "train/success_rate" in r]
    assert metrics and all(np.isfinite(r["ppo/policy_loss"]) for r in metrics)
    out = _cli("evaluate", "--checkpoint", str(run_dir / "checkpoint_latest"), "--num-episodes", "2")
    assert "episodes=2" in out.stdout.splitlines()[-1]


# ---------------------------------------------------------------- bad input (no weights loaded)


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_pretrained_folder_that_is_not_openvla_names_the_missing_file(tmp_path, capsys):
    empty = tmp_path / "not_openvla"
    empty.mkdir()
    (empty / "README.md").write_text("weights go here")
    config = _write_config(tmp_path, empty, "bad")
    for command in ("train", "sft"):
        err = _one_line_error([command, "--config", str(config)], capsys)
        assert "config.json is missing" in err and str(empty) in err
    no_weights = make_openvla_checkpoint(tmp_path, with_weights=False)
    config = _write_config(tmp_path, no_weights, "bad_weights")
    err = _one_line_error(["train", "--config", str(config)], capsys)
    assert "model.safetensors" in err and "is missing" in err
    assert not (tmp_path / "demos").exists()  # refused before any demonstration was collected


def test_base_without_statistics_and_no_demos_says_how_to_run_sft_first(tmp_path, capsys):
    base = make_openvla_checkpoint(tmp_path, norm_stats={"bridge_orig": _action_stats(7)},
                                   with_weights=False)  # fmt: skip
    (base / "model.safetensors").write_bytes(b"")  # never read: the statistics check comes first
    config = _write_config(tmp_path, base, "no_demos", sft={"num_demos": 0})
    err = _one_line_error(["train", "--config", str(config)], capsys)
    assert "python -m vla_rl_lib sft --config" in err and "--sft-checkpoint" in err
    assert "8-D" in err


def test_seed_command_fails_in_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    """`train --pretrained openvla/openvla-7b --simulator maniskill`, with no hub and no local copy."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    seed_command = ["train", "--pretrained", "openvla/openvla-7b", "--simulator", "maniskill",
                    "--output-dir", str(tmp_path / "outputs")]  # fmt: skip
    err = _one_line_error(seed_command, capsys)
    assert "model.name is 'tiny'" in err and "--template full" in err
    err = _one_line_error([*seed_command, "--template", "full", "--device", "cpu"], capsys)
    assert "huggingface-cli download openvla/openvla-7b" in err
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))


def test_sft_checkpoint_flag_replaces_the_files_pretrained_checkpoint():
    args = build_parser().parse_args(["train", "--template", "full", "--sft-checkpoint", "runs/sft"])
    cfg = resolve_config(args)
    assert cfg.sft_checkpoint == "runs/sft" and cfg.pretrained_checkpoint is None


def test_openvla_with_parallel_decoding_is_a_config_error():
    with pytest.raises(ConfigError, match="autoregressive"):
        apply_overrides(load_template("full"), {"model": {"decoding": "parallel"}})


def test_saved_policy_is_trusted_only_when_its_code_copies_an_allowlisted_base(tmp_path):
    base = make_openvla_checkpoint(tmp_path, with_weights=False)
    saved = tmp_path / "sft"
    saved.mkdir()
    (saved / "policy_config.json").write_text(json.dumps({"base_model": str(base)}))
    shutil.copy(base / "processing_prismatic.py", saved / "processing_prismatic.py")
    allow = (str(base),)
    assert allowlist_with_saved_policy(saved, allow) == (str(base), str(saved))
    assert allowlist_with_saved_policy(saved, ("someone/else",)) == ("someone/else",)
    code = saved / "processing_prismatic.py"
    code.write_text(code.read_text() + "\nimport os  # not the base's code any more\n")
    assert allowlist_with_saved_policy(saved, allow) == allow


def test_full_template_stores_sft_statistics_under_a_crane_x7_key():
    data = yaml.safe_load((ROOT / "params" / "full.yaml").read_text())
    assert data["model"]["unnorm_key"] == UNNORM_KEY and data["sft"]["num_demos"] > 0
    assert load_template("full").model.unnorm_key == UNNORM_KEY


def test_hub_id_on_the_allowlist_covers_its_local_cache_folder(tmp_path, monkeypatch):
    """A policy saved from `openvla/openvla-7b` names the cache snapshot folder as its base."""
    from vla_rl_lib.policy.openvla import check_trust_remote_code

    cache = tmp_path / "hub"
    snapshot = cache / "models--openvla--openvla-7b" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--openvla--openvla-7b" / "refs").mkdir()
    (cache / "models--openvla--openvla-7b" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    check_trust_remote_code(snapshot, ["openvla/openvla-7b"])
    with pytest.raises(PermissionError, match="trust_remote_code"):
        check_trust_remote_code(snapshot, ["someone/else"])


def test_base_with_joint_statistics_under_ee_control_needs_sft_first(tmp_path, capsys):
    """8-D CRANE-X7 statistics do not describe pd_ee_delta_pos's 4-D actions: SFT must come first."""
    base = make_openvla_checkpoint(tmp_path, norm_stats={"crane_x7": _action_stats(8)},
                                   with_weights=False)  # fmt: skip
    (base / "model.safetensors").write_bytes(b"")  # never read: the statistics check comes first
    config = _write_config(tmp_path, base, "ee", sft={"num_demos": 0},
                           rollout={"simulator": "mujoco", "control_mode": "pd_ee_delta_pos"})  # fmt: skip
    err = _one_line_error(["train", "--config", str(config)], capsys)
    assert "4-D" in err and "pd_ee_delta_pos" in err and "--sft-checkpoint" in err
