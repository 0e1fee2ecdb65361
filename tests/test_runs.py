"""Run folders: a new one per run, in start order, with `latest` and the seed's paths as links."""

from __future__ import annotations

import json
from pathlib import Path

from vla_rl_lib.training import runs


def test_same_second_runs_get_suffixes_in_order(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    made = [runs.create_run_dir(exp, clock=lambda: 1_790_000_000.0) for _ in range(11)]
    assert len({p.name for p in made}) == 11
    assert made[1].name == made[0].name + "-2" and made[10].name == made[0].name + "-11"
    assert runs.run_folders(exp) == made  # -11 sorts after -2
    assert runs.latest_run(exp) == made[-1]
    assert not (exp / "latest").exists()  # TensorBoard would show a linked run twice
    assert (exp / "checkpoint_best").readlink() == Path(made[-1].name) / "checkpoint_best"


def test_seed_paths_follow_latest_but_never_replace_a_real_folder(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    (exp / "checkpoint_best").mkdir(parents=True)  # an experiment folder from before run folders
    run = runs.create_run_dir(exp)
    assert not (exp / "checkpoint_best").is_symlink()
    assert (exp / "checkpoint_latest").is_symlink()
    (run / "checkpoint_latest").mkdir()
    assert (exp / "checkpoint_latest").resolve() == (run / "checkpoint_latest").resolve()


def test_newest_resumable_skips_a_run_without_checkpoint(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    first = runs.create_run_dir(exp, clock=lambda: 1_790_000_000.0)
    (first / "checkpoint_latest").mkdir()
    (first / "checkpoint_latest" / "trainer_state.json").write_text(json.dumps({"update": 7}))
    runs.create_run_dir(exp, clock=lambda: 1_790_000_100.0)  # crashed before its first save
    found = runs.newest_resumable(exp)
    assert found == first / "checkpoint_latest"
    assert runs.checkpoint_update(found) == 7
    assert runs.newest_resumable(tmp_path / "nothing") is None


def test_a_shared_sft_result_is_reused_only_for_the_settings_it_was_trained_with(tmp_path):
    from vla_rl_lib.config import apply_overrides, load_template, save_config
    from vla_rl_lib.training.trainer import with_shared_sft

    cfg = apply_overrides(load_template("fast"), {"output_dir": str(tmp_path)})
    shared = tmp_path / cfg.experiment_name / "sft"
    shared.mkdir(parents=True)
    (shared / "policy_config.json").write_text("{}")
    save_config(cfg, shared / "config.yaml")

    reused = with_shared_sft(cfg, shared.parent, None)
    assert reused.sft_checkpoint == str(shared.absolute())

    other = apply_overrides(cfg, {"sft": {"epochs": cfg.sft.epochs + 1}})
    assert with_shared_sft(other, shared.parent, None).sft_checkpoint is None
    # settings that do not shape the SFT result (how RL runs) do not stop the reuse
    rl_only = apply_overrides(cfg, {"ppo": {"learning_rate": 3e-5}, "num_updates": 7})
    assert with_shared_sft(rl_only, shared.parent, None).sft_checkpoint == str(shared.absolute())
