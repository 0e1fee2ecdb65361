"""The lean (plain-torch) forward of the tiny VLA against transformers': the same bits, the same grads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_rl_lib.policy.hf_policy import HFVLAPolicy, build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig, build_tiny_vla
from vla_rl_lib.policy.tiny_vla_lean import LeanTinyVLA

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

INSTRUCTIONS = [
    "lift the red cube",
    "pick up the small blue block and put it into the bowl next to the cup",
    "push",
    "grasp the cup",
    "rotate the green bottle to the left",
    "open the drawer",
    "knock over the large toy above the table",
    "slide the marker",
]
LORA_CASES = {"lora": LoRAConfig(enabled=True, rank=32), "full": None}


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 48, 80, 3), dtype=np.uint8)


def make_policy(lora: LoRAConfig | None, **kwargs) -> HFVLAPolicy:
    policy = build_policy(TinyVLAConfig(), lora, seed=0, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fresh LoRA B is zero; make the adapter change the output
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return policy


def scores(policy: HFVLAPolicy, lean: bool, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin logits, prompt hidden) of one parallel-decoding pass, lean path on or off."""
    switch, policy.lean_forward = policy.lean_forward, lean
    try:
        prompts = policy._prompts(images(batch), INSTRUCTIONS[:batch])
        result = policy._parallel_scores(prompts)
    finally:
        policy.lean_forward = switch
    return result.bin_logits, result.prompt_hidden


@pytest.fixture(scope="module", params=list(LORA_CASES))
def policy(request) -> HFVLAPolicy:
    return make_policy(LORA_CASES[request.param])


@pytest.mark.parametrize("batch", [1, 8])
def test_lean_logits_equal_transformers_to_the_bit(policy: HFVLAPolicy, batch: int) -> None:
    assert policy._lean_forward() is not None, LeanTinyVLA.unsupported_reason(policy._hf_model())
    with torch.no_grad():
        lean_logits, lean_hidden = scores(policy, True, batch)
        hf_logits, hf_hidden = scores(policy, False, batch)
    assert torch.equal(lean_logits, hf_logits)
    assert torch.equal(lean_hidden, hf_hidden)


def test_lean_gradients_equal_transformers(policy: HFVLAPolicy) -> None:
    batch = 8
    tokens = policy.act(images(batch), INSTRUCTIONS).token_ids
    grads = {}
    for lean in (True, False):
        policy.lean_forward = lean
        policy.zero_grad(set_to_none=True)
        out = policy.evaluate_actions(images(batch), INSTRUCTIONS, tokens, temperature=1.3)
        (out.log_probs.mean() + out.entropy.mean() + out.values.pow(2).mean()).backward()
        grads[lean] = {
            n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None
        }
    policy.zero_grad(set_to_none=True)
    policy.lean_forward = True
    assert grads[True].keys() == grads[False].keys()
    assert any(".lora_" in n or "embed_tokens" in n for n in grads[True])
    for name, grad in grads[True].items():
        assert torch.equal(grad, grads[False][name]), name


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_rollout_and_update_log_probs_equal_after_an_optimizer_step(case: str) -> None:
    """The lean path reads the live weights: no copy goes stale when the optimizer updates them."""
    policy = make_policy(LORA_CASES[case])
    optimizer = torch.optim.AdamW(policy.optimizer_param_groups(1e-2, 1e-2))
    pictures = images(8, seed=3)
    before = policy.act(pictures, INSTRUCTIONS)
    out = policy.evaluate_actions(pictures, INSTRUCTIONS, before.token_ids)
    assert torch.equal(out.log_probs, before.log_probs)
    (-out.log_probs.mean()).backward()
    optimizer.step()
    torch.manual_seed(0)
    after = policy.act(pictures, INSTRUCTIONS)
    assert not torch.equal(after.log_probs, before.log_probs)
    assert torch.equal(
        policy.evaluate_actions(pictures, INSTRUCTIONS, after.token_ids).log_probs, after.log_probs
    )
    with torch.no_grad():
        assert torch.equal(scores(policy, True, 8)[0], scores(policy, False, 8)[0])


def test_lean_forward_follows_merge_lora() -> None:
    policy = make_policy(LoRAConfig(enabled=True, rank=32))
    policy.merge_lora()
    assert policy._lean_forward() is not None
    with torch.no_grad():
        assert torch.equal(scores(policy, True, 8)[0], scores(policy, False, 8)[0])


def test_switch_off_keeps_the_transformers_forward() -> None:
    policy = make_policy(LoRAConfig(enabled=True, rank=32), lean_forward=False)
    assert policy._lean_forward() is None
    assert make_policy(None)._lean_forward() is not None


def test_unsupported_models_fall_back_with_a_reason() -> None:
    dropout = build_policy(TinyVLAConfig(), LoRAConfig(enabled=True, rank=32, dropout=0.1), seed=0)
    reason = LeanTinyVLA.unsupported_reason(dropout._hf_model())
    assert reason is not None and "dropout" in reason
    assert dropout._lean_forward() is None
    dropout.act(images(2), INSTRUCTIONS[:2])  # the transformers forward still runs

    model, _ = build_tiny_vla(TinyVLAConfig(), seed=0)
    model.config.text_config._attn_implementation = "eager"
    assert "eager" in LeanTinyVLA.unsupported_reason(model)
    with pytest.raises(ValueError, match="cannot reproduce this model.*eager"):
        LeanTinyVLA(model)
    assert "not LlavaForConditionalGeneration" in LeanTinyVLA.unsupported_reason(model.model)


def test_only_prepared_masks_without_checkpointing_take_the_lean_path() -> None:
    """Autoregressive decoding (2D masks, KV cache) and gradient checkpointing stay in transformers."""
    policy = make_policy(None)
    lean = policy._lean_forward()
    square = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    assert lean.accepts(square)
    assert not lean.accepts(torch.ones(2, 5, dtype=torch.long))
    assert not lean.accepts(square.long())
    policy.enable_gradient_checkpointing()
    assert not lean.accepts(square)


def test_a_sharded_or_wrapped_block_sends_calls_back_to_transformers() -> None:
    """FSDP's fully_shard swaps a block's class and gathers its weights in that block's forward."""
    policy = make_policy(None)
    lean = policy._lean_forward()
    square = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    block = policy._hf_model().model.language_model.layers[1]
    plain = type(block)
    block.__class__ = type("FSDPLlamaDecoderLayer", (plain,), {})
    try:
        assert not lean.accepts(square)
        assert "FSDPLlamaDecoderLayer" in LeanTinyVLA.unsupported_reason(policy._hf_model())
    finally:
        block.__class__ = plain
    assert lean.accepts(square)
