"""The training loop on a tiny configuration: it runs, resumes exactly, and checks itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from vla_rl_lib.config import apply_overrides
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.notebook import summary_rows
from vla_rl_lib.policy.hf_policy import HFVLAPolicy
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.evaluate import evaluate_checkpoint
from vla_rl_lib.training.runs import latest_run, run_folders
from vla_rl_lib.training.trainer import NO_EVALUATION, PreflightError, Trainer, TrainingError

VOLATILE = ("perf/", "time_s")  # wall-clock figures differ between any two runs


def _curve(run_dir):
    return [
        {k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in load_metrics(run_dir)
    ]


def _train(cfg, resume=False):
    trainer = Trainer(cfg, resume=resume, progress=False)
    try:
        return trainer.train(), trainer.run_dir
    finally:
        trainer.close()


def test_trains_writes_checkpoints_and_evaluates(tiny_config):
    summary, run_dir = _train(tiny_config)
    assert summary["updates"] == 2
    for name in ("metrics.jsonl", "learning_curve.png", "eval_episode.gif", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoint_latest" / "policy_state_dict.pt").is_file()
    # people see rollout.media_size frames; the policy saw 32x32 (tiny config)
    assert tiny_config.rollout.image_size == 32 and tiny_config.rollout.media_size == 256
    assert iio.imread(run_dir / "eval_episode.gif").shape[1:3] == (256, 256)
    records = load_metrics(run_dir)
    evals = [r for r in records if "val/success" in r]
    assert [r["update"] for r in evals] == [0, 1, 2]
    for r in evals:  # val chooses, test is reported; each with its Wilson interval
        for split in ("val", "test"):
            assert r[f"{split}/episodes"] == 2
            assert r[f"{split}/success_low"] <= r[f"{split}/success"] <= r[f"{split}/success_high"]
    assert not any(k.startswith(("eval_", "ood_")) for r in records for k in r)  # Lift has no OOD
    assert summary["selection_split"] == "val" and "test/success" in summary
    chosen = max(evals, key=lambda r: r["val/success"])  # the first val maximum, never test
    best_state = json.loads((run_dir / "checkpoint_best" / "trainer_state.json").read_text())
    assert best_state["update"] == chosen["update"]
    assert summary["best_eval_success"] == chosen["val/success"]
    train = [r for r in records if "train/success_rate" in r]
    assert [r["update"] for r in train] == [1, 2]
    assert all(r["ppo/num_minibatch_steps"] > 0 for r in train)
    assert train[0]["preflight_grad_norm"] > 0
    # The trained weights are finite and differ from the base they started from.
    state = torch.load(run_dir / "checkpoint_latest" / "policy_state_dict.pt", weights_only=True)
    assert state and all(torch.isfinite(v).all() for v in state.values())
    base = HFVLAPolicy.from_checkpoint(str(run_dir / "base_model")).trainable_state_dict()
    shared = [k for k in state if k in base and not k.startswith("value_head")]
    assert shared, f"no policy weight of the checkpoint is in the base model: {sorted(state)[:5]}"
    changed = [k for k in shared if not torch.equal(state[k].float(), base[k].float())]
    assert changed, "training left every policy weight equal to the base model's"

    table = evaluate_checkpoint(run_dir / "checkpoint_latest", num_episodes=2, splits="val,test")
    assert [row["split"] for row in table.rows()] == ["val", "test"]
    for split in ("val", "test"):  # same greedy policy, same seeds, same split
        assert table[split].episodes == 2
        assert table[split].success_rate == evals[-1][f"{split}/success"]


def test_checkpoint_best_is_written_at_update_0(tiny_config):
    """Evaluated before the first update, the starting policy is checkpoint_best until val improves."""
    cfg = apply_overrides(tiny_config, {"num_updates": 1})
    seen = []

    def on_update(record):  # after the first update, before its evaluation
        state = run_dir / "checkpoint_best" / "trainer_state.json"
        seen.append(json.loads(state.read_text())["update"] if state.is_file() else None)

    trainer = Trainer(cfg, progress=False, on_update=on_update)
    run_dir = trainer.run_dir
    try:
        trainer.train()
    finally:
        trainer.close()
    assert seen == [0]


def test_resume_continues_the_exact_curve(tiny_config, tmp_path):
    full_cfg = apply_overrides(tiny_config, {"num_updates": 3, "experiment_name": "full"})
    _, full_dir = _train(full_cfg)

    part_cfg = apply_overrides(full_cfg, {"experiment_name": "part", "num_updates": 1})
    _train(part_cfg)
    # Extra records written after the checkpoint (a crash later on) must be dropped.
    with open(latest_run(tmp_path / "outputs" / "part") / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"update": 2, "train/success_rate": 0.123}) + "\n")
    _, part_dir = _train(apply_overrides(part_cfg, {"num_updates": 3}), resume=True)
    assert _curve(part_dir) == _curve(full_dir)


def test_a_second_run_gets_its_own_folder_and_the_links_follow(tiny_config):
    cfg = apply_overrides(tiny_config, {"num_updates": 1})
    _, first = _train(cfg)
    _, second = _train(cfg)
    experiment = Path(cfg.output_dir) / cfg.experiment_name
    assert first != second and first.parent == second.parent == experiment
    assert [p.name for p in run_folders(experiment)] == [first.name, second.name]
    assert latest_run(experiment) == second
    for name in ("checkpoint_best", "checkpoint_latest"):  # the seed's paths: the latest run
        assert (experiment / name).resolve() == (second / name).resolve()
    assert len(load_metrics(first)) == len(load_metrics(second))  # nothing mixed or overwritten
    # the seed's evaluation path: the latest run, its videos beside that run's checkpoint
    result = evaluate_checkpoint(experiment / "checkpoint_latest", num_episodes=1, render=True)
    (video,) = result.videos
    assert Path(video).parent == (second / "videos").resolve()
    assert iio.imread(video, index=0).shape[:2] == (256, 256)


def test_resume_path_continues_that_checkpoint_and_refuses_an_older_one(tiny_config):
    _, run_dir = _train(apply_overrides(tiny_config, {"num_updates": 1}))
    shutil.copytree(run_dir / "checkpoint_latest", run_dir / "checkpoint_update1")
    link = Path(tiny_config.output_dir) / tiny_config.experiment_name / "checkpoint_latest"
    summary, resumed = _train(tiny_config, resume=str(link))
    assert resumed == run_dir and summary["updates"] == 2
    assert [r["update"] for r in load_metrics(run_dir) if "train/success_rate" in r] == [1, 2]
    # the run went on past the copy: resuming the copy would overwrite updates 2.. of the run
    with pytest.raises(TrainingError, match="went on to update 2"):
        Trainer(tiny_config, resume=run_dir / "checkpoint_update1", progress=False)


def test_resume_without_checkpoint(tiny_config):
    with pytest.raises(TrainingError, match="drop --resume"):
        Trainer(tiny_config, resume=True, progress=False)
    with pytest.raises(TrainingError, match="not a checkpoint directory"):
        Trainer(tiny_config, resume=Path(tiny_config.output_dir), progress=False)


def test_preflight_catches_frozen_weights(tiny_config):
    trainer = Trainer(tiny_config, progress=False)
    try:
        for p in trainer.policy.parameters():
            p.requires_grad_(False)
        with pytest.raises(PreflightError, match="gradient norm"):
            trainer.preflight()
    finally:
        trainer.close()


def test_preflight_catches_a_frozen_policy_with_a_trainable_value_head(tiny_config):
    """The value head alone has a gradient; pooled over all groups the norm would pass."""
    trainer = Trainer(tiny_config, progress=False)
    try:
        for p in trainer.policy.model.parameters():
            p.requires_grad_(False)
        assert any(p.requires_grad for p in trainer.policy.value_head.parameters())
        with pytest.raises(PreflightError, match="policy's trainable weights is 0.0"):
            trainer.preflight()
    finally:
        trainer.close()


def test_preflight_reports_the_policy_gradient_apart(tiny_config):
    trainer = Trainer(tiny_config, progress=False)
    try:
        figures = trainer.preflight()
    finally:
        trainer.close()
    assert 0 < figures["preflight_policy_grad_norm"] <= figures["preflight_grad_norm"]


def test_a_run_without_evaluation_reports_null_not_a_number(tiny_config):
    cfg = apply_overrides(tiny_config, {"num_updates": 1, "eval_interval": 0})
    summary, run_dir = _train(cfg)
    assert summary["best_eval_success"] is None
    state = ckpt.load_checkpoint(run_dir / "checkpoint_latest")["trainer_state"]
    assert state["best_eval_success"] is None
    rows = {row["metric"]: row["value"] for row in summary_rows(summary)}
    assert rows["best_eval_success"] == NO_EVALUATION
    # A resumed run keeps "none yet" rather than turning it into a number.
    trainer = Trainer(apply_overrides(cfg, {"num_updates": 2}), resume=True, progress=False)
    try:
        assert trainer.best_eval is None
    finally:
        trainer.close()


def test_preflight_catches_ratio_mismatch(tiny_config, monkeypatch):
    trainer = Trainer(tiny_config, progress=False)
    try:
        evaluate = trainer.policy.evaluate_actions

        def drifting(*args, **kwargs):
            out = evaluate(*args, **kwargs)
            out.log_probs = out.log_probs + 0.1
            return out

        monkeypatch.setattr(trainer.policy, "evaluate_actions", drifting)
        with pytest.raises(PreflightError, match="ratio"):
            trainer.preflight()
    finally:
        trainer.close()


def test_grpo_runs(tiny_config):
    cfg = apply_overrides(tiny_config, {"ppo": {"algorithm": "grpo"}, "num_updates": 1})
    summary, run_dir = _train(cfg)
    train = [r for r in load_metrics(run_dir) if "train/success_rate" in r]
    assert train and train[0]["ppo/num_minibatch_steps"] > 0


def test_time_budget_stops_after_the_update_that_crosses_it(tiny_config):
    cfg = apply_overrides(tiny_config, {"num_updates": 5, "max_minutes": 1e-6})
    summary, run_dir = _train(cfg)
    assert summary["stopped_by"] == "max_minutes" and summary["updates"] == 1
    assert (run_dir / "checkpoint_latest").is_dir()
    evals = [r["update"] for r in load_metrics(run_dir) if "val/success" in r]
    assert evals == [0, 1]  # the stop still evaluates and saves
