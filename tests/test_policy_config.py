"""PolicyConfig: saved beside the weights, read back as saved, refused in one line when damaged."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.configuration import POLICY_CONFIG_FILE, PolicyConfig
from vla_rl_lib.policy.hf_policy import BASE_MODEL_DIR, HFVLAPolicy, build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SMALL = TinyVLAConfig(image_size=32, text_layers=1, text_hidden_size=64, text_intermediate_size=128)
INSTRUCTIONS = ["lift the red cube", "push"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A LoRA policy with statistics and a non-default prompt, saved; and the policy."""
    stats = ActionStatistics.from_actions(np.random.default_rng(0).normal(size=(100, 8)))
    policy = build_policy(
        SMALL, LoRAConfig(enabled=True, rank=4, alpha=8), seed=3, decoding="autoregressive",
        statistics=stats, unnorm_key="crane_x7",
        prompt_template="Robot, {instruction}! Action:",
    )  # fmt: skip
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("policy_config") / "ckpt"
    policy.save_pretrained(str(path))
    return path, policy


def _images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def _same_actions(a: HFVLAPolicy, b: HFVLAPolicy) -> None:
    out_a = a.act(_images(), INSTRUCTIONS, greedy=True)
    out_b = b.act(_images(), INSTRUCTIONS, greedy=True)
    assert torch.equal(out_a.token_ids, out_b.token_ids)
    torch.testing.assert_close(out_a.values, out_b.values, atol=1e-6, rtol=0)


def test_saved_policy_config_round_trips(saved) -> None:
    path, policy = saved
    on_disk = PolicyConfig.read(path / POLICY_CONFIG_FILE)
    assert on_disk == dataclasses.replace(policy.config, base_model=BASE_MODEL_DIR)
    assert on_disk.lora == LoRAConfig(enabled=True, rank=4, alpha=8.0)
    assert on_disk.prompt_template == "Robot, {instruction}! Action:"
    assert PolicyConfig(**json.loads(json.dumps(dataclasses.asdict(on_disk)))) == on_disk
    loaded = HFVLAPolicy.from_checkpoint(path)
    assert loaded.config == policy.config  # the base inside the checkpoint is not an outside path
    _same_actions(policy, loaded)


def test_previous_format_checkpoints_still_load(saved, tmp_path) -> None:
    """A policy_config.json written before PolicyConfig (format 1: use_lora beside the LoRA settings)."""
    path, policy = saved
    old = tmp_path / "v1"
    old.mkdir()
    for item in path.iterdir():
        target = old / item.name
        if item.is_dir():
            target.symlink_to(item)
        else:
            target.write_bytes(item.read_bytes())
    config = policy.config
    v1 = {
        "format": "vla_rl_policy/1", "decoding": config.decoding, "action_dim": config.action_dim,
        "prompt_template": config.prompt_template, "action_token_end": config.action_token_end,
        "n_action_bins": config.n_action_bins, "placeholder_token_ids": config.placeholder_token_ids,
        "use_lora": True,
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "exclude_modules": None},
        "unnorm_key": "crane_x7", "value_head_width": 256, "base_model": BASE_MODEL_DIR,
    }  # fmt: skip
    (old / POLICY_CONFIG_FILE).write_text(json.dumps(v1))
    loaded = HFVLAPolicy.from_checkpoint(old)
    assert loaded.config == policy.config
    _same_actions(policy, loaded)
    full = {**v1, "use_lora": False, "lora": None, "base_model": None}
    assert not PolicyConfig.read(_write(tmp_path / "full.json", full)).lora.enabled


def test_use_lora_is_not_written_and_older_format_2_files_with_it_still_load(saved, tmp_path) -> None:
    """``lora.enabled`` decides; format 2 files from before the change repeat it as use_lora."""
    path, policy = saved
    written = json.loads((path / POLICY_CONFIG_FILE).read_text())
    assert written["format"] == "vla_rl_policy/2" and "use_lora" not in written
    assert written["lora"]["enabled"] is True
    for use_lora, lora in ((True, written["lora"]), (False, {**written["lora"], "enabled": False})):
        older = {**written, "use_lora": use_lora, "lora": lora}
        assert PolicyConfig.read(_write(tmp_path / f"older_{use_lora}.json", older)).lora.enabled is use_lora
    older = tmp_path / "older"
    older.mkdir()
    for item in path.iterdir():
        if item.name != POLICY_CONFIG_FILE:
            (older / item.name).symlink_to(item)
    _write(older / POLICY_CONFIG_FILE, {**written, "use_lora": True})
    loaded = HFVLAPolicy.from_checkpoint(older)
    assert loaded.use_lora and loaded.config == HFVLAPolicy.from_checkpoint(path).config
    _same_actions(policy, loaded)


def _write(file, data) -> object:
    file.write_text(data if isinstance(data, str) else json.dumps(data))
    return file


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"format": "vla_rl_policy/2", "action_dim": 8', "not JSON"),
        ([1, 2], "a JSON list, not an object"),
        ({"format": "vla_rl_policy/9"}, "has format 'vla_rl_policy/9'"),
        ({"format": "vla_rl_policy/2", "action_dim": "eight"}, "action_dim"),
        ({"format": "vla_rl_policy/2", "decoding": "sideways"}, "decoding"),
        ({"format": "vla_rl_policy/2", "lora": {"rnak": 4}}, "lora.rnak"),
        ({"format": "vla_rl_policy/2", "prompt_template": "no field"}, "{instruction}"),
        ({"format": "vla_rl_policy/1", "use_lora": True, "lora": {"rank": 0}}, "lora.rank"),
        ({"format": "vla_rl_policy/2", "use_lora": True, "lora": {"enabled": False}}, "use_lora"),
    ],
)
def test_corrupt_policy_config_is_a_one_line_error(saved, tmp_path, content, says) -> None:
    path, _ = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in path.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / POLICY_CONFIG_FILE).unlink()
    _write(broken / POLICY_CONFIG_FILE, content)
    with pytest.raises(ValueError) as error:
        HFVLAPolicy.from_checkpoint(broken)
    message = str(error.value)
    assert "\n" not in message
    assert str(broken / POLICY_CONFIG_FILE) in message and says in message


def test_lora_config_bounds_name_the_field() -> None:
    assert LoRAConfig() == LoRAConfig(enabled=False, rank=8, alpha=16.0, dropout=0.0)
    for bad, field in (({"rank": 0}, "rank"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
                       ({"target_modules": "q_proj"}, "target_modules"), ({"target_modules": []}, "target_modules")):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            LoRAConfig(**bad)


def test_policy_package_does_not_read_the_run_config() -> None:
    code = (
        "import sys, vla_rl_lib.policy.loading, vla_rl_lib.policy.openvla; "
        "print('vla_rl_lib.config' in sys.modules, 'vla_rl_lib.training' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
