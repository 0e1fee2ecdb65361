"""The tiny VLA's optional conv stem: shapes, the unchanged default, and checkpoints that keep it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from vla_rl_lib.config import apply_overrides, load_template
from vla_rl_lib.policy.hf_policy import HFVLAPolicy, build_policy
from vla_rl_lib.policy.loading import PolicySettings, load_base_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import (
    ConvPatchStem,
    ConvStemLlava,
    TinyVLAConfig,
    build_tiny_vla,
    build_tokenizer,
    llava_config,
)
from vla_rl_lib.training.policy_factory import policy_settings, tiny_vla_config

SMALL = dict(text_layers=2, text_hidden_size=64, text_intermediate_size=128)
CONV = TinyVLAConfig(vision_stem="conv", **SMALL)
INSTRUCTIONS = ["lift the red cube", "put the blue cube on the green plate", "push"]


def images(batch: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def stem_of(model: nn.Module) -> nn.Module:
    return model.model.vision_tower.embeddings.patch_embedding


def test_default_stem_is_the_stock_llava_with_the_same_weights(tmp_path) -> None:
    config = TinyVLAConfig(**SMALL)
    assert config.vision_stem == "patch"
    model, _ = build_tiny_vla(config, seed=5)
    with torch.random.fork_rng(devices=[]):  # what build_tiny_vla did before the stem existed
        torch.manual_seed(5)
        stock = LlavaForConditionalGeneration(llava_config(config, build_tokenizer()))
        nn.init.normal_(stock.lm_head.weight, std=config.text_hidden_size**-0.5)
    assert type(model) is LlavaForConditionalGeneration and type(stem_of(model)) is nn.Conv2d
    for (name, x), y in zip(model.state_dict().items(), stock.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    model.save_pretrained(tmp_path)
    assert "vision_stem" not in (tmp_path / "config.json").read_text()  # same config.json as before


@pytest.mark.parametrize(("image", "patch", "grid"), [(64, 16, 4), (32, 16, 2), (64, 8, 8)])
def test_conv_stem_has_the_patch_conv_output_shape(image: int, patch: int, grid: int) -> None:
    stem = ConvPatchStem(3, 48, patch)
    assert stem(torch.zeros(2, 3, image, image)).shape == (2, 48, grid, grid)
    widths = [m.out_channels for m in stem if isinstance(m, nn.Conv2d)]
    assert widths == {16: [32, 32, 64, 64, 48], 8: [32, 32, 64, 48]}[patch]
    with pytest.raises(ValueError, match="power-of-two"):
        ConvPatchStem(3, 48, 12)


def test_conv_stem_model_keeps_the_image_tokens() -> None:
    conv, _ = build_tiny_vla(CONV, seed=0)
    patch, _ = build_tiny_vla(TinyVLAConfig(**SMALL), seed=0)
    assert type(conv) is ConvStemLlava and type(stem_of(conv)) is ConvPatchStem
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = conv.model.vision_tower(pixels).last_hidden_state
        assert (
            features.shape
            == patch.model.vision_tower(pixels).last_hidden_state.shape
            == (2, 16, 64)
        )
    with pytest.raises(ValueError, match="vision_stem"):
        TinyVLAConfig(vision_stem="cnn")


def assert_same_policy(a: HFVLAPolicy, b: HFVLAPolicy) -> None:
    assert type(stem_of(b._hf_model())) is ConvPatchStem
    for (name, x), y in zip(
        a._hf_model().state_dict().items(), b._hf_model().state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    first = a.act(images(), INSTRUCTIONS, greedy=True)
    again = b.act(images(), INSTRUCTIONS, greedy=True)
    assert torch.equal(first.token_ids, again.token_ids)
    assert torch.equal(first.log_probs, again.log_probs)


@pytest.mark.parametrize("lora", [None, LoRAConfig(enabled=True, rank=4)], ids=["full", "lora"])
def test_conv_stem_checkpoint_reloads_identically(tmp_path, lora: LoRAConfig | None) -> None:
    policy = build_policy(CONV, lora, seed=0, action_dim=4)
    with torch.no_grad():  # weights a fresh patch conv could not reproduce by chance
        for param in stem_of(policy._hf_model()).parameters():
            param.add_(0.01)
    policy.save_pretrained(str(tmp_path / "ckpt"))
    assert_same_policy(policy, HFVLAPolicy.from_checkpoint(tmp_path / "ckpt"))


def test_sft_checkpoint_loads_as_rl_base_with_its_conv_stem(tmp_path) -> None:
    cfg = apply_overrides(load_template("default"), {"model.vision_stem": "conv"})
    settings: PolicySettings = policy_settings(cfg)
    assert tiny_vla_config(cfg).vision_stem == settings.tiny_sizes.vision_stem == "conv"
    policy = build_policy(CONV, None, seed=0, action_dim=settings.action_dim)
    policy.save_pretrained(str(tmp_path / "sft"))
    assert_same_policy(policy, load_base_policy(settings, "sft", str(tmp_path / "sft")))


@pytest.mark.parametrize("saved_stem", ["conv", "patch"])
def test_config_that_does_not_match_the_weights_is_refused(tmp_path, saved_stem: str) -> None:
    """transformers would drop the unexpected weights with a warning and draw fresh ones."""
    sizes = CONV if saved_stem == "conv" else TinyVLAConfig(**SMALL)
    build_policy(sizes, None, seed=0).save_pretrained(str(tmp_path))
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    if saved_stem == "conv":
        del config["vision_config"]["vision_stem"]
    else:
        config["vision_config"]["vision_stem"] = "conv"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not describe the weights saved beside it"):
        HFVLAPolicy.from_checkpoint(tmp_path)


def test_lean_forward_equals_transformers_with_the_conv_stem() -> None:
    policy = build_policy(CONV, LoRAConfig(enabled=True, rank=4), seed=0)
    assert policy._lean_forward() is not None
    tokens = policy.act(images(), INSTRUCTIONS).token_ids
    log_probs = {}
    for lean in (True, False):
        policy.lean_forward = lean
        with torch.no_grad():
            log_probs[lean] = policy.evaluate_actions(images(), INSTRUCTIONS, tokens).log_probs
    assert torch.equal(log_probs[True], log_probs[False])
