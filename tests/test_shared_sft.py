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
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "policy_config.json").write_text("{}")
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr(sft_trainer, "run_sft", half_written)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        save_shared_sft(cfg, progress=False)
    experiment = shared_sft_dir(cfg).parent
    assert runs.shared_sft_dir(experiment) is None
    assert sorted(p.name for p in experiment.iterdir()) == []
