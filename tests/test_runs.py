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
