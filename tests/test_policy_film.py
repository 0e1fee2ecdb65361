"""FiLM conditioning of the conv stem on the instruction: off by default, a no-op at init,
language-dependent image tokens after training, strict checkpoints, and the config error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlavaModel

from vla_rl_lib.config import ConfigError, apply_overrides, load_template
from vla_rl_lib.policy.hf_policy import HFVLAPolicy, build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import (
    ConvPatchStem,
    FiLMConvPatchStem,
    FiLMLlavaModel,
    TinyVLAConfig,
    build_tiny_vla,
)
from vla_rl_lib.training.policy_factory import tiny_vla_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SMALL = dict(text_layers=2, text_hidden_size=64, text_intermediate_size=128)
CONV = TinyVLAConfig(vision_stem="conv", **SMALL)
FILM = TinyVLAConfig(vision_stem="conv", vision_film=True, **SMALL)
RED, BLUE = "put the red cube on the green plate", "put the blue cube on the green plate"


def images(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)


def stem_of(policy: HFVLAPolicy) -> torch.nn.Module:
    return policy._hf_model().model.vision_tower.embeddings.patch_embedding


def image_tokens(policy: HFVLAPolicy, instructions: list[str]) -> torch.Tensor:
    """The projected image features the decoder receives for one image under each instruction."""
    prompts = policy._prompts(np.repeat(images(1), len(instructions), 0), instructions)
    outputs = policy._hf_model().model(
        input_ids=prompts.input_ids, pixel_values=prompts.pixel_values,
        attention_mask=prompts.attention_mask.long(),
    )  # fmt: skip
    return torch.stack(outputs.image_outputs.pooler_output)


def test_default_is_the_conv_stem_as_before(tmp_path) -> None:
    assert TinyVLAConfig().vision_film is False
    assert load_template("default").model.vision_film is False
    model, _ = build_tiny_vla(CONV, seed=0)
    assert type(model.model) is LlavaModel
    assert type(model.model.vision_tower.embeddings.patch_embedding) is ConvPatchStem
    assert not any("film" in name or "instruction" in name for name in model.state_dict())
    model.save_pretrained(tmp_path)
    assert "film" not in (tmp_path / "config.json").read_text()  # same config.json as before


def test_film_at_init_is_the_conv_stem(tmp_path) -> None:
    conv = build_policy(CONV, None, seed=0, action_dim=4)
    film = build_policy(FILM, None, seed=0, action_dim=4)
    assert type(film._hf_model().model) is FiLMLlavaModel
    assert type(stem_of(film)) is FiLMConvPatchStem
    film_state = film._hf_model().state_dict()
    for name, value in conv._hf_model().state_dict().items():  # same draws, FiLM's own are zeros
        assert torch.equal(
            value, film_state.pop(name.replace("patch_embedding.", "patch_embedding.convs."))
        ), name
    assert all(
        ("film" in n and not v.any()) or "instruction_norm" in n for n, v in film_state.items()
    )
    instructions = [RED, BLUE]
    for lean in (True, False):
        conv.lean_forward = film.lean_forward = lean
        expected = conv.act(images(), instructions, greedy=True)
        got = film.act(images(), instructions, greedy=True)
        assert torch.equal(expected.token_ids, got.token_ids)
        assert torch.equal(expected.log_probs, got.log_probs)


def trained_film_policy(lora: LoRAConfig | None = None, steps: int = 4) -> HFVLAPolicy:
    """A FiLM policy after a few SFT steps on instruction-dependent targets."""
    policy = build_policy(FILM, lora, seed=0, action_dim=4)
    optimizer = torch.optim.Adam([p for p in policy.model.parameters() if p.requires_grad], lr=1e-2)
    tokens = policy.actions_to_tokens(np.array([[0.5, 0.5, 0.5, 1.0], [-0.5, -0.5, -0.5, -1.0]]))
    for _ in range(steps):
        optimizer.zero_grad()
        policy.sft_loss(images(), [RED, BLUE], tokens).backward()
        optimizer.step()
    return policy


def test_after_sft_steps_the_image_tokens_depend_on_the_instruction() -> None:
    policy = build_policy(FILM, None, seed=0, action_dim=4)
    with torch.no_grad():
        same = image_tokens(policy, [RED, BLUE])
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=0)  # zero FiLM: only the pixels count
    policy = trained_film_policy()
    embeddings = policy._hf_model().get_input_embeddings().weight
    policy.model.zero_grad()
    image_tokens(policy, [RED, BLUE]).square().sum().backward()  # the stem alone sends gradients
    assert (
        embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    )  # into the text embeddings
    with torch.no_grad():
        tokens = image_tokens(policy, [RED, BLUE])
    assert (tokens[0] - tokens[1]).abs().max() > 1e-3  # same pixels, different cube named


@pytest.mark.parametrize("lora", [None, LoRAConfig(enabled=True, rank=4)], ids=["full", "lora"])
def test_lean_forward_equals_transformers_with_film(lora: LoRAConfig | None) -> None:
    policy = trained_film_policy(lora, steps=2)
    assert policy._lean_forward() is not None
    tokens = policy.act(images(), [RED, BLUE]).token_ids
    log_probs = {}
    for lean in (True, False):
        policy.lean_forward = lean
        with torch.no_grad():
            log_probs[lean] = policy.evaluate_actions(images(), [RED, BLUE], tokens).log_probs
    assert torch.equal(log_probs[True], log_probs[False])


def test_autoregressive_decoding_runs_the_conditioned_stem_once() -> None:
    policy = build_policy(FILM, None, seed=0, action_dim=4, decoding="autoregressive")
    out = policy.act(images(), [RED, BLUE], greedy=True)  # a cached step carries no pixels
    evaluated = policy.evaluate_actions(images(), [RED, BLUE], out.token_ids)
    torch.testing.assert_close(out.log_probs, evaluated.log_probs)


@pytest.mark.parametrize("lora", [None, LoRAConfig(enabled=True, rank=4)], ids=["full", "lora"])
def test_film_checkpoint_reloads_identically(tmp_path, lora: LoRAConfig | None) -> None:
    policy = trained_film_policy(lora, steps=2)
    policy.save_pretrained(str(tmp_path / "ckpt"))
    loaded = HFVLAPolicy.from_checkpoint(tmp_path / "ckpt")
    assert type(stem_of(loaded)) is FiLMConvPatchStem
    for (name, x), y in zip(
        policy._hf_model().state_dict().items(),
        loaded._hf_model().state_dict().values(),
        strict=True,
    ):
        assert torch.equal(x, y), name
    first = policy.act(images(), [RED, BLUE], greedy=True)
    again = loaded.act(images(), [RED, BLUE], greedy=True)
    assert torch.equal(first.log_probs, again.log_probs)


@pytest.mark.parametrize("saved", ["film", "conv"])
def test_checkpoint_and_config_that_disagree_on_film_are_refused(tmp_path, saved: str) -> None:
    """A FiLM checkpoint read as a plain conv stem (or the reverse) must not get fresh weights."""
    build_policy(FILM if saved == "film" else CONV, None, seed=0).save_pretrained(str(tmp_path))
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    if saved == "film":
        del config["vision_config"]["vision_film"]
    else:
        config["vision_config"].update(vision_film=True, film_text_id_end=1000)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not describe the weights saved beside it"):
        HFVLAPolicy.from_checkpoint(tmp_path)


def test_film_without_the_conv_stem_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.vision_film.*model\.vision_stem: conv"):
        apply_overrides(load_template("default"), {"model.vision_film": True})
    with pytest.raises(ValueError, match="vision_film=True needs vision_stem='conv'"):
        TinyVLAConfig(vision_film=True)
    cfg = apply_overrides(
        load_template("default"), {"model.vision_stem": "conv", "model.vision_film": True}
    )
    assert tiny_vla_config(cfg).vision_film is True


def test_stem_refuses_to_run_without_an_instruction() -> None:
    stem = FiLMConvPatchStem(3, 48, 16, text_hidden=64)
    with pytest.raises(RuntimeError, match="without an instruction"):
        stem(torch.zeros(2, 3, 64, 64))
    with stem.conditioned_on(torch.zeros(2, 64)):
        assert stem(torch.zeros(2, 3, 64, 64)).shape == (2, 48, 4, 4)
