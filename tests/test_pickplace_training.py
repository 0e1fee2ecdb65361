"""The training stack on PickPlace-CRANE-X7: demos -> SFT -> rollout + PPO -> evaluation, each
episode prompted with its own instruction from the observation."""

from __future__ import annotations

import pytest

import lift
from vla_rl_lib.config import ConfigError, apply_overrides
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.sft.demos import load_demonstrations
from vla_rl_lib.training.evaluate import evaluate_checkpoint
from vla_rl_lib.training.trainer import Trainer


def test_rollout_sft_and_evaluation_run_on_pickplace(tiny_config, tmp_path):
    cfg = apply_overrides(
        tiny_config,
        {
            "num_updates": 1,
            "rollout": {"env_id": "PickPlace-CRANE-X7", "max_steps": 80},
            "sft": {"num_demos": 2, "epochs": 1, "batch_size": 16,
                    "dataset_dir": str(tmp_path / "demos")},
        },
    )  # fmt: skip
    assert cfg.language_instruction is None  # from the env, per episode
    trainer = Trainer(cfg, progress=False)
    try:
        trainer.train()
        run_dir = trainer.run_dir
    finally:
        trainer.close()

    (dataset_dir,) = (tmp_path / "demos").iterdir()
    demos = load_demonstrations(dataset_dir)
    per_episode = {}
    for episode, text in zip(demos.episode_index.tolist(), demos.instructions, strict=True):
        per_episode.setdefault(episode, set()).add(text)
    assert all(len(texts) == 1 for texts in per_episode.values())  # constant within an episode
    assert len(set.union(*per_episode.values())) == 2  # and its own in each episode
    assert all(" plate" in text for text in demos.instructions)

    records = load_metrics(run_dir)
    assert any("train/success_rate" in r for r in records)
    evals = [r for r in records if "val/success" in r]
    held_out = [s for s in lift.list_splits("PickPlace-CRANE-X7") if s != "train"]
    ood = [s for s in held_out if s.startswith("ood_")]
    assert len(ood) == 4 and not any(f"{s}/success" in evals[0] for s in ood)  # OOD: at the end only
    final = evals[-1]
    table = evaluate_checkpoint(run_dir / "checkpoint_latest", num_episodes=2, splits="all")
    assert [row["split"] for row in table.rows()] == ["train", *held_out]
    for split in held_out:  # the trainer's last evaluation: same policy, seeds and splits
        assert final[f"{split}/episodes"] == 2
        assert final[f"{split}/success"] == table[split].success_rate


def test_one_instruction_for_every_pickplace_episode_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="language_instruction.*null"):
        apply_overrides(
            tiny_config,
            {"rollout": {"env_id": "PickPlace-CRANE-X7"}, "language_instruction": "pick up the cube"},
        )


def test_demos_cut_short_by_the_step_limit_name_the_step_limit(tmp_path):
    """The expert needs about 60 steps on PickPlace; at 30 every attempt runs out of steps, and
    the error says to raise the step limit rather than the number of attempts."""
    from vla_rl_lib.sft.demos import collect_demonstrations

    with pytest.raises(RuntimeError, match=r"2 of the 2 failed attempts ran out of steps at "
                                           r"max_episode_steps=30: raise the step limit"):  # fmt: skip
        collect_demonstrations(
            1, 12345, tmp_path / "demos", env_id="PickPlace-CRANE-X7", num_envs=2, image_size=32,
            max_episode_steps=30, max_attempts=2, progress=False,
        )
    assert not (tmp_path / "demos").exists()  # nothing half-written
