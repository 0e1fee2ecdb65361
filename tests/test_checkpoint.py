"""Checkpoint round trips, atomic replacement and clear errors for damaged files."""

from __future__ import annotations

import json

import pytest
import torch

from vla_rl_lib.training import checkpoint as ckpt


class NotATensor:
    """Stands in for an arbitrary pickled object."""


def _save(path, value: float = 1.0, update: int = 3):
    return ckpt.save_checkpoint(
        path,
        config_yaml="seed: 0\n",
        policy_state={"w": torch.full((3,), value), "step": torch.tensor(update)},
        optimizer_state={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        trainer_state={"update": update, "best_eval_success": 0.5},
    )


def test_round_trip(tmp_path):
    path = _save(tmp_path / "checkpoint_latest")
    out = ckpt.load_checkpoint(path)
    assert torch.equal(out["policy_state"]["w"], torch.ones(3))
    assert out["trainer_state"]["update"] == 3
    assert out["optimizer_state"]["param_groups"][0]["lr"] == 0.1
    assert out["config_yaml"] == "seed: 0\n"
    assert sorted(p.name for p in path.iterdir()) == sorted(ckpt.CHECKPOINT_FILES)


def test_replace_leaves_no_temporaries(tmp_path):
    _save(tmp_path / "c", 1.0, 1)
    _save(tmp_path / "c", 2.0, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert ckpt.load_checkpoint(tmp_path / "c")["trainer_state"]["update"] == 2


def test_refuses_non_finite_weights_and_keeps_the_old(tmp_path):
    _save(tmp_path / "c", 1.0, 1)
    with pytest.raises(ckpt.CheckpointError, match="non-finite"):
        _save(tmp_path / "c", float("nan"), 2)
    assert ckpt.load_checkpoint(tmp_path / "c")["trainer_state"]["update"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_recover_interrupted_swap(tmp_path):
    _save(tmp_path / "c", 1.0, 1)
    # A writer killed after moving the old checkpoint aside and before the rename.
    (tmp_path / "c").rename(tmp_path / ".c.old")
    (tmp_path / ".c.tmp-dead").mkdir()
    assert ckpt.recover_checkpoint(tmp_path / "c") == tmp_path / "c"
    assert ckpt.load_checkpoint(tmp_path / "c")["trainer_state"]["update"] == 1
    assert not (tmp_path / ".c.tmp-dead").exists()


@pytest.mark.parametrize("name", [ckpt.POLICY_FILE, ckpt.OPTIMIZER_FILE])
def test_truncated_file_names_the_file(tmp_path, name):
    path = _save(tmp_path / "c")
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=name):
        ckpt.load_checkpoint(path)


def test_corrupt_trainer_state(tmp_path):
    path = _save(tmp_path / "c")
    (path / ckpt.TRAINER_STATE_FILE).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=ckpt.TRAINER_STATE_FILE):
        ckpt.load_checkpoint(path)


def test_missing_file_and_missing_dir(tmp_path):
    path = _save(tmp_path / "c")
    (path / ckpt.OPTIMIZER_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing optimizer_state_dict.pt"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a checkpoint smuggling arbitrary objects does not load."""
    path = _save(tmp_path / "c")
    torch.save({"w": NotATensor()}, path / ckpt.POLICY_FILE)
    with pytest.raises(ckpt.CheckpointError, match=ckpt.POLICY_FILE):
        ckpt.load_checkpoint(path)
    json.loads((path / ckpt.TRAINER_STATE_FILE).read_text())
