"""The tiny Llava VLA: tokenizer layout, seeding, and the stock save/load path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vla_rl_lib.policy.tiny_vla import TinyVLAConfig, build_tiny_vla, build_tokenizer

SMALL = TinyVLAConfig(text_layers=2, text_hidden_size=64, text_intermediate_size=128)


def test_action_ids_are_the_last_256_of_the_base_vocabulary() -> None:
    tokenizer = build_tokenizer()
    end = tokenizer.vocab_size
    assert len(tokenizer) == end  # no added tokens beyond the base vocabulary
    names = tokenizer.convert_ids_to_tokens(list(range(end - 256, end)))
    assert names == [f"<action_{i}>" for i in range(256)]
    slots = tokenizer.convert_ids_to_tokens(list(range(end - 256 - 16, end - 256)))
    assert slots == [f"<action_slot_{i}>" for i in range(16)]
    text = "In: What action should the robot take to lift the red cube <action_3>?\nOut:"
    assert max(tokenizer(text)["input_ids"]) < end - 256  # text never becomes an action id
    assert tokenizer.padding_side == "left"


def test_tokenizer_training_is_deterministic() -> None:
    assert build_tokenizer()._tokenizer.to_str() == build_tokenizer()._tokenizer.to_str()


def test_same_seed_same_weights_other_seed_differs() -> None:
    a, _ = build_tiny_vla(SMALL, seed=3)
    b, _ = build_tiny_vla(SMALL, seed=3)
    c, _ = build_tiny_vla(SMALL, seed=4)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        TinyVLAConfig(image_size=60, patch_size=16)
    with pytest.raises(ValueError, match="text_heads"):
        TinyVLAConfig(text_hidden_size=90, text_heads=4)


def test_saves_and_loads_through_auto_classes_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = build_tiny_vla(SMALL, seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert loaded_processor.tokenizer.padding_side == "left"
    assert loaded.config.vision_feature_layer == -1
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    prompts = ["<image>In: What action should the robot take to lift the cube?\nOut:", "<image>x"]
    inputs = processor(text=prompts, images=[image, image], padding=True, return_tensors="pt")
    again = loaded_processor(text=prompts, images=[image, image], padding=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], again["input_ids"])
    assert inputs["input_ids"].shape[1] > SMALL.image_tokens
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**again).logits)
