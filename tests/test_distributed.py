"""The data-parallel learner: 2 gloo ranks through the real ppo_update equal one process.

Each test spawns two CPU processes (gloo), runs the same PPO updates a single
process runs on the same global batch, and compares the resulting weights and
optimizer state. Checkpoints written by either side resume on the other.
"""

from __future__ import annotations

import os
import socket
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vla_rl_lib.algorithms.ppo import DataShard, PPOBatch, PPOSettings, ppo_update
from vla_rl_lib.config import PPOConfig
from vla_rl_lib.policy.hf_policy import build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.distributed import (
    DistributedError,
    Launch,
    check_world_size,
    full_optimizer_state,
    load_full_optimizer_state,
    wrap_policy,
)

BATCH = 8  # global batch B
CONFIG = PPOConfig(
    num_epochs=2, minibatch_size=4, micro_batch_size=1, max_grad_norm=0.5,
    learning_rate=1e-3, value_learning_rate=1e-3,
)
SETTINGS = PPOSettings.from_section(CONFIG)
SIZES = TinyVLAConfig(
    image_size=32, patch_size=16, vision_hidden_size=32, vision_intermediate_size=64,
    vision_layers=1, vision_heads=2, text_hidden_size=48, text_intermediate_size=96,
    text_layers=2, text_heads=2,
)


def make_policy(lora: bool):
    torch.manual_seed(0)
    policy = build_policy(SIZES, lora=LoRAConfig(enabled=lora, rank=4, alpha=8), seed=0)
    policy.train()
    return policy


def make_optimizer(policy):
    return torch.optim.AdamW(
        policy.optimizer_param_groups(CONFIG.learning_rate, CONFIG.value_learning_rate),
        eps=1e-5, weight_decay=0.0,
    )


def make_batch(policy, update: int) -> PPOBatch:
    g = np.random.default_rng(update)
    images = g.integers(0, 256, size=(BATCH, 32, 32, 3), dtype=np.uint8)
    instructions = ["pick up the blue cube"] * BATCH
    with torch.no_grad():
        out = policy.act(images, instructions, 1.0, False)
    return PPOBatch(
        images, instructions, out.token_ids, out.log_probs, out.values,
        torch.as_tensor(g.normal(size=BATCH), dtype=torch.float32),
        out.values + torch.as_tensor(g.normal(size=BATCH), dtype=torch.float32),
    )


def run_update(view, optimizer, policy, update: int, shard: DataShard | None = None) -> dict:
    torch.manual_seed(100 + update)  # action sampling: identical on every rank and after a resume
    batch = make_batch(policy, update)
    generator = torch.Generator().manual_seed(200 + update)
    return ppo_update(view, optimizer, batch, SETTINGS, 1.0, generator, shard=shard)


def save(path: Path, state: dict, optimizer_state: dict, update: int) -> None:
    ckpt.save_checkpoint(
        path, config_yaml="{}\n", policy_state=state, optimizer_state=optimizer_state,
        trainer_state={"update": update},
    )


def _rank_main(rank: int, world: int, port: int, out: str, strategy: str, lora: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        launch = Launch.from_environment()
        out_dir = Path(out)
        # (a) from the initial weights: one distributed update, saved for a one-process resume.
        policy = make_policy(lora)
        learner = wrap_policy(policy, launch, strategy)
        optimizer = make_optimizer(policy)
        stats = run_update(learner.trainer_view, optimizer, policy, 1, learner.shard)
        state, opt_state = learner.full_trainable_state(), full_optimizer_state(optimizer)
        if launch.is_main:
            save(out_dir / "dist_update1", state, opt_state, 1)
            torch.save(stats, out_dir / "dist_stats1.pt")
        # (b) resume the one-process checkpoint here and take the second update.
        saved = ckpt.load_checkpoint(out_dir / "single_update1")
        policy = make_policy(lora)
        policy.load_trainable_state_dict(saved["policy_state"])
        learner = wrap_policy(policy, launch, strategy)
        optimizer = make_optimizer(policy)
        load_full_optimizer_state(optimizer, saved["optimizer_state"])
        run_update(learner.trainer_view, optimizer, policy, 2, learner.shard)
        state = learner.full_trainable_state()
        if launch.is_main:
            torch.save(state, out_dir / "dist_resumed_update2.pt")
        # The wrapper must be gone before the group, or gloo's teardown can hang this rank.
        wrapper = weakref.ref(learner.trainer_view)
        learner.release()
        if strategy == "ddp":
            assert wrapper() is None, "DDP wrapper still alive after release()"
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{what}: {key}")


@pytest.mark.parametrize(
    ("strategy", "lora"),
    [
        ("ddp", True),
        pytest.param("ddp", False, marks=pytest.mark.slow),
        pytest.param("fsdp", True, marks=pytest.mark.slow),
    ],
)
# A rank hung at exit when DDP's reducer outlived the process group (see
# DataParallelLearner.release); the timeout turns any such hang into a failure, not a stalled CI.
@pytest.mark.timeout(600)
def test_two_gloo_ranks_equal_one_process_and_resume_across(tmp_path, strategy, lora):
    torch.set_num_threads(1)
    # One process: update 1 (saved), then update 2 straight on.
    policy = make_policy(lora)
    initial = {k: v.clone() for k, v in policy.trainable_state_dict().items()}
    optimizer = make_optimizer(policy)
    single_stats = run_update(policy, optimizer, policy, 1)
    after_one = {k: v.clone() for k, v in policy.trainable_state_dict().items()}
    save(tmp_path / "single_update1", after_one, optimizer.state_dict(), 1)
    run_update(policy, optimizer, policy, 2)
    after_two = policy.trainable_state_dict()

    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path), strategy, lora), nprocs=2, join=True)

    dist_one = ckpt.load_checkpoint(tmp_path / "dist_update1")
    assert single_stats["num_minibatch_steps"] == 4
    assert max(float((after_one[k] - initial[k]).abs().max()) for k in initial) > 1e-4
    assert_close(dist_one["policy_state"], after_one, "2 ranks vs 1 process after one update")
    dist_stats = torch.load(tmp_path / "dist_stats1.pt")
    for key in ("policy_loss", "value_loss", "approx_kl", "grad_norm"):
        assert dist_stats[key] == pytest.approx(single_stats[key], rel=1e-4, abs=1e-6)
    single_moments = optimizer.state_dict()  # the format matches: same indices, same keys
    assert dist_one["optimizer_state"]["state"].keys() == single_moments["state"].keys()

    # The distributed checkpoint resumes in one process, and continues the same curve.
    policy = make_policy(lora)
    policy.load_trainable_state_dict(dist_one["policy_state"])
    optimizer = make_optimizer(policy)
    optimizer.load_state_dict(dist_one["optimizer_state"])
    run_update(policy, optimizer, policy, 2)
    assert_close(policy.trainable_state_dict(), after_two, "distributed checkpoint resumed in 1 process")
    # ... and the one-process checkpoint resumed on 2 ranks.
    assert_close(torch.load(tmp_path / "dist_resumed_update2.pt"), after_two,
                 "1-process checkpoint resumed on 2 ranks")


def test_indivisible_world_size_names_the_nearest_valid_sizes():
    with pytest.raises(DistributedError) as info:
        check_world_size(3, 64)
    message = str(info.value)
    assert "\n" not in message
    assert "use 2 or 4 processes" in message and "make it 63 or 66" in message
    check_world_size(4, 64)


def test_update_refuses_a_batch_that_does_not_split_over_the_ranks():
    policy = make_policy(lora=True)
    batch = make_batch(policy, 1)
    shard = DataShard(rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"the batch \(8\) does not split evenly over world size 3"):
        ppo_update(policy, make_optimizer(policy), batch, SETTINGS, shard=shard)


# ---------------------------------------------------------------- the trainer under torchrun

VOLATILE = ("perf/", "time_s", "ppo/dropped_samples")


def _curve(run_dir: Path) -> list[dict]:
    from vla_rl_lib.metrics import load_metrics

    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in load_metrics(run_dir)]


def _train_cli(config_path: Path, ranks: int, *flags: str) -> None:
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={ranks}", "-m"] if ranks > 1 else [sys.executable, "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(str(Path(__file__).parents[1] / d) for d in ("sim", "."))}
    done = subprocess.run(
        [*launcher, "vla_rl_lib", "train", "--config", str(config_path), *flags],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_checkpoints_resume_in_one_process_and_back(tiny_config, tmp_path):
    from vla_rl_lib.config import apply_overrides, save_config

    # Episodes of the tiny config run to max_steps: 2 x 6 = 12 samples split evenly over 2 ranks.
    cfg = apply_overrides(tiny_config, {"num_updates": 2, "device": "cpu"})
    paths = {}
    for name in ("single", "dist_then_single", "single_then_dist"):
        paths[name] = tmp_path / f"{name}.yaml"
        save_config(apply_overrides(cfg, {"experiment_name": name}), paths[name])
    _train_cli(paths["single"], 1)
    _train_cli(paths["dist_then_single"], 2, "--num-updates", "1")
    _train_cli(paths["dist_then_single"], 1, "--resume")
    _train_cli(paths["single_then_dist"], 1, "--num-updates", "1")
    _train_cli(paths["single_then_dist"], 2, "--resume")

    from vla_rl_lib.training.runs import latest_run

    outputs = Path(cfg.output_dir)  # each experiment ran (and resumed) in one run folder
    reference = _curve(latest_run(outputs / "single"))
    assert [r["update"] for r in reference if "train/success_rate" in r] == [1, 2]
    for name in ("dist_then_single", "single_then_dist"):
        assert len(list((outputs / name).glob("2*"))) == 1, name
        assert_same_curve(_curve(latest_run(outputs / name)), reference, name)


def assert_same_curve(curve: list[dict], reference: list[dict], what: str) -> None:
    assert [r.keys() for r in curve] == [r.keys() for r in reference], what
    for got, want in zip(curve, reference, strict=True):
        for key, value in want.items():
            if isinstance(value, float) and not isinstance(value, bool):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), (what, key)
            else:
                assert got[key] == value, (what, key)


def test_train_under_a_world_size_that_does_not_divide_the_minibatch_fails_in_one_line(
    tiny_config, tmp_path, monkeypatch, capsys
):
    from vla_rl_lib.config import save_config
    from vla_rl_lib.training.cli import main

    path = tmp_path / "tiny.yaml"
    save_config(tiny_config, path)  # ppo.minibatch_size 6
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ppo.minibatch_size (6) does not split evenly over world size 4" in err
    assert "use 3 or 6 processes, or make it 4 or 8" in err
    assert not (Path(tiny_config.output_dir) / "tiny").exists()  # refused before anything ran
