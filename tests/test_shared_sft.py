"""The experiment's SFT result (``python -m vla_rl_lib sft``, notebook 01_setup): written once,
atomically, and never over an earlier one, which later runs start from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_rl_lib.config import apply_overrides, save_config
from vla_rl_lib.sft import trainer as sft_trainer
from vla_rl_lib.training import cli, runs
from vla_rl_lib.training.policy_factory import save_shared_sft, shared_sft_dir


def _sft_config(tiny_config):
    outputs = Path(tiny_config.output_dir)
    return apply_overrides(tiny_config, {"sft.num_demos": 1, "sft.epochs": 1, "sft.batch_size": 16,
                                         "sft.dataset_dir": str(outputs / "demos"),
                                         "rollout.max_steps": 60})  # fmt: skip


def test_the_sft_command_refuses_an_existing_result_before_any_work(tiny_config, tmp_path, capsys):
    cfg = _sft_config(tiny_config)
    config_file = tmp_path / "sft.yaml"
    save_config(cfg, config_file)
    earlier = shared_sft_dir(cfg)
    earlier.mkdir(parents=True)
    (earlier / "policy_config.json").write_text('{"earlier": true}')

    assert cli.main(["sft", "--config", str(config_file)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"python -m vla_rl_lib sft: error: {earlier} already exists and is kept")
    assert "--experiment-name" in line and "delete that folder" in line
    assert (earlier / "policy_config.json").read_text() == '{"earlier": true}'
    assert not Path(cfg.sft.dataset_dir).exists()  # refused before the demonstrations


def test_sft_is_renamed_into_place_whole_and_train_finds_it(tiny_config):
    cfg = apply_overrides(_sft_config(tiny_config), {"sft.augment_shift": 2})
    shared_sft_dir(cfg).mkdir(parents=True)  # an empty folder takes the result
    result = save_shared_sft(cfg, progress=False)

    out = shared_sft_dir(cfg)
    assert result["sft_checkpoint"] == result["checkpoint"] == str(out)
    assert runs.shared_sft_dir(out.parent) == out  # where train looks for it
    metrics = json.loads((out / sft_trainer.SFT_METRICS_FILE).read_text())
    assert metrics["checkpoint"] == str(out)
    assert metrics["augment_shift"] == 2  # the config key reaches run_sft
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft"]  # no partial folder left
    written = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    with pytest.raises(FileExistsError, match="already exists and is kept"):
        save_shared_sft(cfg, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == written


def test_a_failed_sft_leaves_no_result_for_train_to_start_from(tiny_config, monkeypatch):
    cfg = _sft_config(tiny_config)

    def half_written(policy, dataset, *, out_dir, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "policy_config.json").write_text("{}")
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr(sft_trainer, "run_sft", half_written)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        save_shared_sft(cfg, progress=False)
    experiment = shared_sft_dir(cfg).parent
    assert runs.shared_sft_dir(experiment) is None
    assert sorted(p.name for p in experiment.iterdir()) == []


def test_a_killed_sft_is_kept_refused_without_resume_and_continued_with_it(tiny_config, capsys):
    """Killed after epoch 1 of 2: the partial folder and its state survive, ``sft`` without
    --resume refuses it in one line, ``sft --resume`` finishes only the missing epoch."""
    cfg = apply_overrides(_sft_config(tiny_config), {"sft.epochs": 2})
    config_file = Path(cfg.output_dir) / "sft.yaml"
    save_config(cfg, config_file)
    original = sft_trainer.run_sft

    def killed_after_epoch_1(*args, **kwargs):
        def stop(record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt
        return original(*args, **{**kwargs, "on_epoch": stop})

    sft_trainer.run_sft = killed_after_epoch_1
    try:
        with pytest.raises(KeyboardInterrupt):
            save_shared_sft(cfg, progress=False)
    finally:
        sft_trainer.run_sft = original
    partial = shared_sft_dir(cfg).with_name(".sft.partial")
    assert (partial / sft_trainer.SFT_STATE_FILE).is_file()
    assert runs.shared_sft_dir(partial.parent) is None  # train does not start from it

    assert cli.main(["sft", "--config", str(config_file)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "interrupted SFT" in line and "--resume" in line and str(partial) in line
    assert cli.main(["sft", "--config", str(config_file), "--resume"]) == 0
    out = shared_sft_dir(cfg)
    metrics = json.loads((out / sft_trainer.SFT_METRICS_FILE).read_text())
    assert metrics["resumed_after_epoch"] == 1 and len(metrics["epoch_losses"]) == 2
    assert not partial.exists() and not (out / sft_trainer.SFT_STATE_FILE).exists()
