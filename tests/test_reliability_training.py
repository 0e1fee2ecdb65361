"""Training under fire: non-finite losses and gradients, unusable output directories, a full disk.

* A PPO step whose loss or gradient is not finite is skipped and counted
  (``ppo/skipped_steps``; an update with no step left counts in
  ``perf/skipped_updates``); training goes on, and ``max_consecutive_skips``
  such updates in a row stop it with a ``TrainingError``. No file on disk ever
  holds a non-finite number.
* An output directory that cannot be written, or has too little free space,
  is refused in preflight, before anything is written, with a one-line error.
* A disk that fills up while a checkpoint is written leaves the previous
  checkpoint intact.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from vla_rl_lib.config import apply_overrides, save_config
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training import trainer as trainer_module
from vla_rl_lib.training.cli import main
from vla_rl_lib.training.runs import latest_run
from vla_rl_lib.training.trainer import MIN_FREE_BYTES, PreflightError, Trainer, TrainingError


class NanGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward (the loss itself stays finite)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def poison_updates(monkeypatch, trainer: Trainer, updates: set[int], kind: str) -> None:
    """Make the PPO updates numbered in ``updates`` (0-based) see NaN log-probs or gradients."""
    poisoned = {"on": False}
    counter = itertools.count()
    real_update, real_evaluate = trainer_module.ppo_update, trainer.policy.evaluate_actions

    def ppo_update(*args, **kwargs):
        poisoned["on"] = next(counter) in updates
        try:
            return real_update(*args, **kwargs)
        finally:
            poisoned["on"] = False

    def evaluate(*args, **kwargs):
        out = real_evaluate(*args, **kwargs)
        if poisoned["on"]:
            if kind == "loss":
                out.log_probs = out.log_probs * float("nan")
            else:
                out.log_probs = NanGradient.apply(out.log_probs)
        return out

    monkeypatch.setattr(trainer_module, "ppo_update", ppo_update)
    monkeypatch.setattr(trainer.policy, "evaluate_actions", evaluate)


def non_finite_on_disk(run_dir: Path) -> list[str]:
    """Every floating tensor in every .pt file under run_dir that holds NaN or inf."""
    bad = []

    def walk(value, where):
        if isinstance(value, torch.Tensor):
            if torch.is_floating_point(value) and not torch.isfinite(value).all():
                bad.append(where)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    for path in run_dir.rglob("*.pt"):
        walk(torch.load(path, weights_only=True), str(path.relative_to(run_dir)))
    return bad


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_update_is_skipped_and_training_goes_on(tiny_config, monkeypatch, kind):
    cfg = apply_overrides(tiny_config, {"num_updates": 3})
    snapshots = []
    trainer = Trainer(cfg, progress=False)
    trainer.on_update = lambda record: snapshots.append(
        {k: v.detach().clone() for k, v in trainer.policy.trainable_state_dict().items()}
    )
    poison_updates(monkeypatch, trainer, {1}, kind)
    try:
        trainer.train()
    finally:
        trainer.close()

    train = [r for r in load_metrics(trainer.run_dir) if "train/success_rate" in r]
    assert [r["update"] for r in train] == [1, 2, 3]
    assert [r["ppo/num_minibatch_steps"] > 0 for r in train] == [True, False, True]
    assert train[1]["ppo/skipped_steps"] > 0 and train[0]["ppo/skipped_steps"] == 0
    assert [r["perf/skipped_updates"] for r in train] == [0, 1, 1]
    # The skipped update left every weight exactly where it was.
    assert all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1])
    assert non_finite_on_disk(trainer.run_dir) == []
    state = ckpt.load_checkpoint(trainer.run_dir / "checkpoint_latest")["trainer_state"]
    assert state["update"] == 3 and state["skipped_updates"] == 1


def test_consecutive_non_finite_updates_stop_training(tiny_config, monkeypatch):
    cfg = apply_overrides(tiny_config, {"num_updates": 5, "max_consecutive_skips": 2})
    trainer = Trainer(cfg, progress=False)
    poison_updates(monkeypatch, trainer, {1, 2, 3, 4}, "loss")
    try:
        with pytest.raises(TrainingError, match=r"2 consecutive updates .* update 3") as info:
            trainer.train()
    finally:
        trainer.close()
    assert "checkpoint_latest" in str(info.value)
    # What was saved (update 2, the first skipped one) is intact and finite.
    assert ckpt.load_checkpoint(trainer.run_dir / "checkpoint_latest")["trainer_state"]["update"] == 2
    assert non_finite_on_disk(trainer.run_dir) == []


# ------------------------------------------------------------------ output directory


def _assert_nothing_written(path: Path) -> None:
    assert not path.exists() or list(path.iterdir()) == []


def test_output_dir_under_a_file_is_refused_in_preflight(tiny_config, tmp_path, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output folder should be")
    cfg = apply_overrides(tiny_config, {"output_dir": str(blocker / "outputs")})
    config = tmp_path / "cfg.yaml"
    save_config(cfg, config)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not writable" in err and "--output-dir" in err, err
    assert blocker.read_text() == "a file where the output folder should be"


def test_unwritable_output_dir_is_refused_before_anything_is_written(tiny_config, monkeypatch):
    run_dir = Path(tiny_config.output_dir) / tiny_config.experiment_name
    if os.geteuid() != 0:  # root writes through any mode bits: simulate EACCES instead
        run_dir.mkdir(parents=True)
        run_dir.chmod(0o500)
    else:
        real_write = Path.write_bytes

        def write_bytes(self, data):
            if self.name == ".write_probe":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_write(self, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
    try:
        with pytest.raises(PreflightError, match="not writable .*Permission denied"):
            Trainer(tiny_config, progress=False)
        _assert_nothing_written(run_dir)
    finally:
        if run_dir.exists():
            run_dir.chmod(0o700)


def test_full_disk_is_refused_before_anything_is_written(tiny_config, monkeypatch, tmp_path, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        trainer_module.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 10 * 2**20, 10 * 2**20)
    )
    config = tmp_path / "cfg.yaml"
    save_config(tiny_config, config)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "only 10 MiB free" in err and f"{MIN_FREE_BYTES // 2**20} MiB" in err, err
    _assert_nothing_written(Path(tiny_config.output_dir) / tiny_config.experiment_name)


def test_disk_full_while_saving_keeps_the_last_checkpoint(tiny_config, monkeypatch, tmp_path, capsys):
    cfg = apply_overrides(tiny_config, {"num_updates": 3, "eval_interval": 10})
    config = tmp_path / "cfg.yaml"
    save_config(cfg, config)
    saves = itertools.count()
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        latest = "checkpoint_latest" in Path(f).parent.name  # checkpoint_best is also saved at update 0
        if Path(f).name == ckpt.OPTIMIZER_FILE and latest and next(saves) == 1:  # the second one
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and "checkpoint_latest" in err, err
    run_dir = latest_run(Path(cfg.output_dir) / cfg.experiment_name)
    assert ckpt.load_checkpoint(run_dir / "checkpoint_latest")["trainer_state"]["update"] == 1
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".checkpoint_latest")]
