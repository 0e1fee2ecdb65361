"""The command line: override semantics, templates, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vla_rl_lib.config import load_config, load_template, template_text
from vla_rl_lib.training.cli import build_parser, main, resolve_config


def _resolve(argv):
    return resolve_config(build_parser().parse_args(argv))


def test_only_passed_flags_override_the_file(tmp_path):
    base = load_template("fast")
    cfg = _resolve(["train", "--config", "params/fast.yaml"])
    assert cfg == base
    cfg = _resolve(["train", "--config", "params/fast.yaml", "--seed", "7", "--learning-rate", "3e-4"])
    assert cfg.seed == 7 and cfg.ppo.learning_rate == 3e-4
    assert cfg.rollout == base.rollout and cfg.num_updates == base.num_updates
    cfg = _resolve(["train", "--template", "full", "--num-rollouts", "16", "--algorithm", "grpo"])
    assert cfg.rollout.num_rollouts_per_update == 16 and cfg.ppo.algorithm == "grpo"
    assert cfg.num_updates == load_template("full").num_updates


def test_flag_equal_to_default_still_overrides_file(tmp_path):
    custom = tmp_path / "c.yaml"
    data = yaml.safe_load(open("params/fast.yaml"))
    data["seed"] = 5
    custom.write_text(yaml.safe_dump(data))
    assert _resolve(["train", "--config", str(custom)]).seed == 5
    assert _resolve(["train", "--config", str(custom), "--seed", "0"]).seed == 0


def test_config_command_writes_template_with_comments(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    assert main(["config", "--template", "fast", "-o", str(out)]) == 0
    assert out.read_text() == template_text("fast")  # the whole file: fast.yaml over default.yaml
    assert load_config(out) == load_template("fast")
    assert main(["config"]) == 0
    assert "num_updates" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--config", "params/fast.yaml", "--learning-rate", "-1"], "learning_rate"),
        (["train", "--config", "nope.yaml"], "does not exist"),
        (["train", "--config", "params/fast.yaml", "--simulator", "bullet"], "simulator"),
        (["evaluate", "--checkpoint", "/nonexistent/ckpt"], "does not exist"),
        (["train", "--config", "params/fast.yaml", "--template", "fast"], "not both"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--num-episodes", "-3"], "--num-episodes=-3"),
        (["--num-episodes", "ten"], "--num-episodes=ten is invalid"),
        (["--num-episodes", "100,test=0"], "--num-episodes=100,test=0 is invalid"),
        (["--num-episodes", "100,200"], "--num-episodes=100,200 is invalid"),
        (["--num-episodes", "test=200"], "add --splits"),
        (["--splits", "val", "--num-episodes", "100,test=200"], "test is not among --splits (val)"),
        (["--seed", "-1"], "--seed=-1"),
        (["--seed", str(2**31 - 2), "--num-episodes", "5"], "--seed=2147483646"),
        (["--simulator", "bullet"], "--simulator='bullet'"),
        (["--env-id", " "], "--env-id"),
        (["--config", "nope.yaml"], "does not exist"),
        (["--splits", "val,vall"], "available splits: train, val, test (or all)"),
        (["--splits", "ood_position", "--env-id", "Lift-CRANE-X7"], "'ood_position'"),
    ],
)
def test_evaluate_rejects_bad_arguments_before_loading_the_model(
    flags, needle, tmp_path, monkeypatch, capsys
):
    from vla_rl_lib.training import evaluate, policy_factory

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(policy_factory, "load_any_checkpoint", must_not_load)
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", must_not_load)
    checkpoint = tmp_path / "checkpoint_latest"
    checkpoint.mkdir()
    assert main(["evaluate", "--checkpoint", str(checkpoint), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_argparse_errors_exit_2():
    for argv in (["train", "--bogus"], ["train", "--sft-checkpoint", "a", "--pretrained", "b"],
                 ["config", "--template", "huge"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_module_entry_points():
    for module in ("vla_rl_lib", "vla_rl_lib.training.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "train" in out.stdout


def test_unknown_key_in_file_suggests_nearest(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_update: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "num_updates" in capsys.readouterr().err


def test_evaluate_splits_all_prints_one_row_per_split(tiny_config, capsys):
    from vla_rl_lib.config import apply_overrides
    from vla_rl_lib.training.trainer import Trainer

    trainer = Trainer(apply_overrides(tiny_config, {"num_updates": 1, "eval_interval": 0}), progress=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    capsys.readouterr()
    checkpoint = str(trainer.run_dir / "checkpoint_latest")
    argv = ["evaluate", "--checkpoint", checkpoint, "--num-episodes", "2,test=3", "--splits", "all"]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["split", "episodes", "successes"] and "wilson95_high" in table[0]
    assert [line.split()[:2] for line in table[2:]] == [["train", "2"], ["val", "2"], ["test", "3"]]


def test_every_config_key_is_a_flag_and_the_old_names_are_aliases():
    from vla_rl_lib.config import all_keys

    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    assert {f"--{key.replace('_', '-')}" for key in all_keys()} <= flags
    old = ["--experiment-name", "--output-dir", "--seed", "--device", "--sft-checkpoint", "--pretrained",
           "--simulator", "--env-id", "--backend", "--num-parallel-envs", "--num-updates", "--num-rollouts",
           "--learning-rate", "--num-epochs", "--algorithm", "--temperature", "--instruction", "--use-wandb",
           "--wandb-project", "--num-demos", "--sft-epochs", "--executor", "--ray-address", "--num-workers"]  # fmt: skip
    assert set(old) <= flags
    short = _resolve(["train", "--template", "fast", "--num-rollouts", "2", "--instruction", "lift it"])
    long = _resolve(["train", "--template", "fast", "--rollout.num-rollouts-per-update", "2",
                     "--language-instruction", "lift it"])  # fmt: skip
    assert short == long and short.rollout.num_rollouts_per_update == 2


def test_schema_flags_parse_by_the_key_type():
    cfg = _resolve([
        "train", "--template", "fast", "--ppo.clip-ratio", "0.1", "--max-minutes", "null",
        "--eval-splits", "val", "--no-rollout.use-binary-reward", "--use-wandb",
        "--lora.target-modules", "[q_proj, v_proj]", "--ppo.target-kl", "0.02",
    ])  # fmt: skip
    assert (cfg.ppo.clip_ratio, cfg.max_minutes, cfg.eval_splits) == (0.1, None, ["val"])
    assert cfg.rollout.use_binary_reward is False and cfg.use_wandb is True
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.ppo.target_kl == 0.02
    sft = _resolve(["sft", "--template", "fast", "--learning-rate", "5e-4"])
    assert sft.sft.learning_rate == 5e-4 and sft.ppo.learning_rate == load_template("fast").ppo.learning_rate


def test_bad_schema_flag_value_is_one_line(capsys):
    assert main(["train", "--template", "fast", "--ppo.gamma", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ppo.gamma=2.0 is invalid: must be <= 1" in err
