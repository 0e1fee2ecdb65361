"""The memory/time planner: counts from the architecture, published OpenVLA figures, measured RSS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vla_rl_lib.config import apply_overrides, load_config, load_template
from vla_rl_lib.planner import GB, PlanError, build_plan, count_parameters, render
from vla_rl_lib.training.cli import main

LAST_LINE = re.compile(r"^learner_gb_per_device=(\S+) rollout_gb=(\S+) fits=(true|false)$")


def run_plan(capsys, *argv: str) -> list[str]:
    assert main(["plan", *argv]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_full_yaml_on_one_80gb_gpu_prints_the_breakdown(capsys):
    lines = run_plan(capsys, "--config", "params/full.yaml", "--gpus", "1", "--gpu-memory-gb", "80")
    text = "\n".join(lines)
    for term in ("weights", "optimizer (AdamW m, v)", "gradients", "activations (micro-batch 16)",
                 "with gradient checkpointing", "simulators", "KV cache", "seconds per update",
                 "PPO update"):
        assert term in text, term
    learner, rollout, fits = LAST_LINE.match(lines[-1]).groups()
    # RL4VLA runs LoRA PPO on OpenVLA-7B on one 80 GB GPU: so must this plan.
    assert fits == "true" and 15 < float(learner) < 72 and float(rollout) > 0


def test_openvla_counts_match_published_figures():
    model = count_parameters(load_config("params/full.yaml"))
    # openvla/openvla-7b: "7.5B parameters", ~15 GB of bf16 safetensors.
    assert 7.4e9 < model.total < 7.6e9
    assert 14.8 < 2 * model.total / GB < 15.2
    assert 6.7e9 < model.components["Llama-2-7B"] < 6.8e9
    # OpenVLA paper: LoRA trains ~1.4% of the parameters (our count: every linear layer, rank 32).
    assert 0.012 < model.lora_params(32, "all-linear") / model.total < 0.017


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_tiny_counts_equal_the_built_model(stem):
    from vla_rl_lib.policy.hf_policy import build_policy
    from vla_rl_lib.training.policy_factory import lora_settings, tiny_vla_config

    cfg = apply_overrides(load_template("default"), {"model.vision_stem": stem})
    policy = build_policy(tiny_vla_config(cfg), lora=None, seed=0)
    built = sum(p.numel() for p in policy.model.parameters())
    assert count_parameters(cfg).total == built
    lora_cfg = apply_overrides(cfg, {"lora": {"enabled": True, "rank": 4}})
    lora_policy = build_policy(tiny_vla_config(cfg), lora=lora_settings(lora_cfg), seed=0)
    lora_built = sum(p.numel() for n, p in lora_policy.model.named_parameters() if "lora_" in n)
    assert count_parameters(cfg).lora_params(4, "all-linear") == lora_built


def test_verbose_shows_every_formula(capsys):
    lines = run_plan(capsys, "--config", "params/full.yaml", "--gpus", "1", "--gpu-memory-gb", "80",
                     "--verbose")
    formulas = [line for line in lines if line.strip().startswith("= ")]
    assert len(formulas) >= 10
    assert any("7,541,239,232 base x 2 B" in f for f in formulas)
    assert any("arXiv:2406.09246" in line for line in lines)


@pytest.mark.parametrize(
    ("memory_gb", "overrides", "expected"),
    [
        (40, {}, "set ppo.micro_batch_size"),
        (40, {"lora": {"enabled": False}}, "set lora.enabled: true"),
        (16, {}, "use 2 GPUs with distributed_strategy: fsdp"),  # the bf16 weights alone fill a 16 GB card
    ],
)
def test_a_plan_that_does_not_fit_names_the_cheapest_change(memory_gb, overrides, expected):
    cfg = apply_overrides(load_config("params/full.yaml"), overrides) if overrides else load_config(
        "params/full.yaml")
    plan = build_plan(cfg, gpus=1, gpu_memory_gb=memory_gb)
    assert not plan.fits
    assert expected in plan.suggestion
    out = render(plan)
    assert "does not fit" in out and out.splitlines()[-1].endswith("fits=false")


def test_the_suggested_micro_batch_does_fit():
    plan = build_plan(load_config("params/full.yaml"), gpus=1, gpu_memory_gb=40)
    micro = int(re.search(r"micro_batch_size: (\d+)", plan.suggestion).group(1))
    fixed = apply_overrides(load_config("params/full.yaml"), {"ppo.micro_batch_size": micro})
    assert build_plan(fixed, gpus=1, gpu_memory_gb=40).fits


def test_unknown_model_lists_the_known_ones(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: pi0\n")
    assert main(["plan", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "tiny" in err and "openvla" in err and len(err.strip().splitlines()) == 1
    cfg = load_template("default")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "pi0"})})
    with pytest.raises(PlanError, match="known models: tiny, openvla"):
        count_parameters(cfg)


def test_gpu_plan_without_a_gpu_asks_for_its_memory(capsys):
    assert main(["plan", "--config", "params/full.yaml", "--gpus", "1"]) == 2
    assert "--gpu-memory-gb" in capsys.readouterr().err


def test_planned_learner_memory_matches_the_measured_peak_rss():
    """A real update of the tiny model in a fresh process: peak RSS within 25% of the plan."""
    from benchmarks.planner_memory import measure_in_subprocess

    result = measure_in_subprocess("params/default.yaml", {})
    assert 0.75 <= result["ratio"] <= 1.25, result


def test_trainer_preflight_refuses_a_run_that_cannot_fit(tiny_config, monkeypatch):
    from vla_rl_lib import planner
    from vla_rl_lib.training.trainer import PreflightError, Trainer

    monkeypatch.setattr(planner, "host_memory_bytes", lambda: 20e6)  # a 20 MB machine
    with pytest.raises(PreflightError, match=r"cannot fit; .*plan --config"):
        Trainer(tiny_config, progress=False)
    # Refused before anything was built.
    assert not (Path(tiny_config.output_dir) / "tiny" / "base_model").exists()


def test_gradient_checkpointing_the_planner_suggests_keeps_the_gradients():
    import numpy as np
    import torch

    from vla_rl_lib.policy.hf_policy import build_policy
    from vla_rl_lib.policy.lora import LoRAConfig
    from vla_rl_lib.training.policy_factory import tiny_vla_config

    sizes = tiny_vla_config(load_template("default"))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    instructions = ["pick up the blue cube"] * 3
    grads, saved_bytes = [], []
    for checkpointing in (False, True):
        policy = build_policy(sizes, lora=LoRAConfig(enabled=True, rank=4, alpha=8), seed=0)
        if checkpointing:
            assert policy.enable_gradient_checkpointing() == sizes.text_layers + sizes.vision_layers
        torch.manual_seed(0)
        tokens = policy.act(images, instructions, 1.0, False).token_ids
        storages: dict[int, int] = {}

        def keep(t: torch.Tensor, storages: dict[int, int] = storages) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = policy.evaluate_actions(images, instructions, tokens, 1.0)
        saved_bytes.append(sum(storages.values()))
        (out.log_probs.sum() + out.values.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert saved_bytes[1] < 0.6 * saved_bytes[0]  # the blocks' activations were not kept
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_preflight_does_not_judge_a_checkpoint_of_another_size_by_the_7b_plan(tmp_path):
    """An OpenVLA-format checkpoint whose weights on disk are not OpenVLA-7B's size is not
    refused by the 7B estimate; the parameter count is read from the safetensors headers."""
    import torch
    from safetensors.torch import save_file

    from vla_rl_lib.config import apply_overrides, load_template
    from vla_rl_lib.planner import check_fits_device, checkpoint_parameter_count

    folder = tmp_path / "small_openvla"
    folder.mkdir()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(folder / "model.safetensors"))
    assert checkpoint_parameter_count(str(folder)) == 17
    assert checkpoint_parameter_count(str(tmp_path / "absent")) is None
    full = load_template("full")
    assert check_fits_device(full, "cpu") is not None  # the 7B plan does not fit a laptop
    small = apply_overrides(full, {"pretrained_checkpoint": str(folder)})
    assert check_fits_device(small, "cpu") is None
