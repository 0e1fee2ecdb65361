"""HFVLAPolicy on the tiny VLA: log-probs against brute force, decoding modes, grads, checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.hf_policy import (
    HFVLAPolicy,
    bin_log_probs_and_entropy,
    build_policy,
)
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SMALL = TinyVLAConfig(text_layers=2, text_hidden_size=64, text_intermediate_size=128)
LORA = LoRAConfig(enabled=True, rank=32)
MODES = ("parallel", "autoregressive")
INSTRUCTIONS = [
    "lift the red cube",
    "pick up the small blue block and put it into the bowl next to the cup",
    "push",
    "grasp the cup",
]
TEMPERATURE = 1.7


def images(batch: int = 4, size: tuple[int, int] = (48, 80), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, *size, 3), dtype=np.uint8)


def perturb_lora(policy: HFVLAPolicy, seed: int = 0) -> None:
    """Fresh LoRA B matrices are zero (a no-op adapter); make the adapter matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def make_policy(mode: str = "parallel", **kwargs) -> HFVLAPolicy:
    kwargs.setdefault("lora", LORA)
    policy = build_policy(SMALL, seed=0, decoding=mode, **kwargs)
    if policy.use_lora:
        perturb_lora(policy)
    return policy


def assert_same_outputs(a: HFVLAPolicy, b: HFVLAPolicy, atol: float = 1e-5) -> None:
    tokens = a.act(images(), INSTRUCTIONS, greedy=True).token_ids
    out_a = a.evaluate_actions(images(), INSTRUCTIONS, tokens, temperature=TEMPERATURE)
    out_b = b.evaluate_actions(images(), INSTRUCTIONS, tokens, temperature=TEMPERATURE)
    for field in ("log_probs", "entropy", "values"):
        torch.testing.assert_close(getattr(out_a, field), getattr(out_b, field), atol=atol, rtol=0)
    assert torch.equal(b.act(images(), INSTRUCTIONS, greedy=True).token_ids, tokens)


# --------------------------------------------------------------------------- log-prob maths


def test_bin_log_probs_equal_brute_force_masked_softmax_over_vocabulary() -> None:
    generator = torch.Generator().manual_seed(0)
    vocab, begin, batch, dim = 700, 444, 3, 8
    vocab_logits = torch.randn(batch, dim, vocab, generator=generator) * 3
    bins = torch.randint(0, 256, (batch, dim), generator=generator)
    log_probs, entropy = bin_log_probs_and_entropy(
        vocab_logits[..., begin : begin + 256], bins, TEMPERATURE
    )
    masked = torch.full_like(vocab_logits, float("-inf"))
    masked[..., begin : begin + 256] = vocab_logits[..., begin : begin + 256]
    full = torch.log_softmax(masked / TEMPERATURE, dim=-1)
    expected = [sum(full[b, d, begin + bins[b, d]] for d in range(dim)) for b in range(batch)]
    torch.testing.assert_close(log_probs, torch.stack(expected))
    reference_entropy = torch.distributions.Categorical(
        logits=vocab_logits[..., begin : begin + 256] / TEMPERATURE
    ).entropy()
    torch.testing.assert_close(entropy, reference_entropy.sum(-1))


def brute_force_log_probs(policy: HFVLAPolicy, token_ids: torch.Tensor) -> torch.Tensor:
    """One unpadded row at a time, through the stock HF forward and full-vocabulary logits."""
    hf_model = policy._hf_model()
    tokenizer = policy.action_tokenizer
    dim = policy.action_dim
    rows = []
    for i, instruction in enumerate(INSTRUCTIONS):
        prompt = torch.tensor([policy._encode_prompt_ids(instruction)])
        length = prompt.shape[1]
        pixels = policy.preprocess_images(images()[i : i + 1])
        if policy.decoding == "autoregressive":
            input_ids = torch.cat([prompt, token_ids[i : i + 1, : dim - 1]], 1)
            logits = hf_model(input_ids=input_ids, pixel_values=pixels).logits
            logits = logits[0, length - 1 : length - 1 + dim]
        else:
            slots = torch.tensor([policy.placeholder_token_ids])
            input_ids = torch.cat([prompt, slots], 1)
            mask = torch.ones(length + dim, length + dim, dtype=torch.bool).tril()
            mask[length:, length:] = True
            logits = hf_model(
                input_ids=input_ids, pixel_values=pixels, attention_mask=mask[None, None]
            ).logits[0, length:]
        masked = torch.full_like(logits, float("-inf"))
        action_ids = slice(tokenizer.action_token_begin, tokenizer.vocab_end)
        masked[:, action_ids] = logits[:, action_ids]
        log_probs = torch.log_softmax(masked / TEMPERATURE, -1)
        rows.append(log_probs.gather(-1, token_ids[i].unsqueeze(-1)).sum())
    return torch.stack(rows)


@pytest.mark.parametrize("mode", MODES)
def test_act_evaluate_and_brute_force_agree_on_left_padded_batch(mode: str) -> None:
    policy = make_policy(mode)
    torch.manual_seed(1)
    out = policy.act(images(), INSTRUCTIONS, temperature=TEMPERATURE)
    assert out.actions.shape == (4, 8) and out.actions.dtype == np.float32
    assert out.token_ids.shape == (4, 8) and out.token_ids.dtype == torch.int64
    assert not out.log_probs.requires_grad and not out.values.requires_grad
    evaluated = policy.evaluate_actions(images(), INSTRUCTIONS, out.token_ids, temperature=TEMPERATURE)
    assert evaluated.log_probs.requires_grad and evaluated.values.requires_grad
    torch.testing.assert_close(evaluated.log_probs, out.log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(evaluated.values, out.values, atol=1e-5, rtol=0)
    with torch.no_grad():
        reference = brute_force_log_probs(policy, out.token_ids)
    torch.testing.assert_close(evaluated.log_probs.detach(), reference, atol=1e-5, rtol=0)
    # each row alone (no padding) gives the same numbers as inside the padded batch
    for i in range(len(INSTRUCTIONS)):
        alone = policy.evaluate_actions(
            images()[i : i + 1], INSTRUCTIONS[i : i + 1], out.token_ids[i : i + 1], TEMPERATURE
        )
        torch.testing.assert_close(alone.values, evaluated.values[i : i + 1], atol=1e-5, rtol=0)


def test_parallel_mask_is_bidirectional_over_the_action_block() -> None:
    policy = make_policy("parallel")
    prompt = torch.tensor([policy._encode_prompt_ids(INSTRUCTIONS[0])])
    slots = torch.tensor([policy.placeholder_token_ids])
    pixels = policy.preprocess_images(images()[:1])
    with torch.no_grad():
        causal = policy._hf_model()(
            input_ids=torch.cat([prompt, slots], 1), pixel_values=pixels
        ).logits[0, prompt.shape[1]]
        parallel = policy._parallel_scores(policy._prompts(images()[:1], INSTRUCTIONS[:1]))
    begin = policy.action_tokenizer.action_token_begin
    first_slot = parallel.bin_logits[0, 0]
    assert (first_slot - causal[begin : begin + 256]).abs().max() > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_greedy_is_deterministic_and_the_argmax(mode: str) -> None:
    policy = make_policy(mode)
    first = policy.act(images(), INSTRUCTIONS, greedy=True)
    torch.manual_seed(123)
    second = policy.act(images(), INSTRUCTIONS, greedy=True)
    assert torch.equal(first.token_ids, second.token_ids)
    np.testing.assert_array_equal(first.actions, second.actions)
    # with a near-zero temperature, sampling collapses onto the greedy choice
    sampled = policy.act(images(), INSTRUCTIONS, temperature=1e-4)
    assert torch.equal(sampled.token_ids, first.token_ids)


def test_sampling_follows_the_seed_and_temperature_must_be_positive() -> None:
    policy = make_policy()
    torch.manual_seed(5)
    a = policy.act(images(), INSTRUCTIONS)
    torch.manual_seed(5)
    b = policy.act(images(), INSTRUCTIONS)
    assert torch.equal(a.token_ids, b.token_ids)
    torch.manual_seed(6)  # another seed, another draw (32 sampled tokens all repeating: vanishingly rare)
    assert not torch.equal(policy.act(images(), INSTRUCTIONS).token_ids, a.token_ids)
    with pytest.raises(ValueError, match="temperature"):
        policy.act(images(), INSTRUCTIONS, temperature=0.0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_lora_and_value_head_and_nothing_else(mode: str) -> None:
    policy = make_policy(mode)
    tokens = policy.act(images(), INSTRUCTIONS).token_ids
    out = policy.evaluate_actions(images(), INSTRUCTIONS, tokens)
    (out.log_probs.sum() + out.entropy.sum() + out.values.sum()).backward()
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    for name, param in policy.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"dead weight {name}"
            assert "lora_" in name or name.startswith("value_head."), name
        else:
            assert param.grad is None, name
    assert any("vision_tower" in name for name in trainable)
    groups = policy.optimizer_param_groups(1e-4, 3e-4)
    assert [g["lr"] for g in groups] == [1e-4, 3e-4]
    head = {id(p) for p in policy.value_head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_full_fine_tuning_trains_every_weight_it_uses() -> None:
    policy = make_policy(lora=None)
    assert not policy.use_lora
    assert all(p.requires_grad for p in policy.parameters())
    tokens = policy.act(images(), INSTRUCTIONS).token_ids
    policy.sft_loss(images(), INSTRUCTIONS, tokens).backward()
    state = policy.trainable_state_dict()
    assert len(state) == len(policy.state_dict())
    assert not any("lora_" in key for key in state)
    # The SFT loss reads neither the value head nor the vision tower's unused last norm;
    # every other weight gets a real gradient, and every one of them is saved as trainable.
    unused = ("value_head.", "model.model.vision_tower.post_layernorm.")
    for name, param in policy.named_parameters():
        if name.startswith(unused):
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient: {name}"
            assert torch.isfinite(param.grad).all(), name
            assert name in state, name


@pytest.mark.parametrize("mode", MODES)
def test_sft_loss_falls_on_a_fixed_batch(mode: str) -> None:
    policy = build_policy(SMALL, LORA, seed=0, decoding=mode)
    torch.manual_seed(0)
    target = policy.actions_to_tokens(np.random.default_rng(0).uniform(-1, 1, (4, 8)))
    optimizer = torch.optim.Adam(policy.optimizer_param_groups(3e-3, 3e-3)[:1])
    losses = []
    for _ in range(30):
        loss = policy.sft_loss(images(), INSTRUCTIONS, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 4.5  # near ln(256) = 5.55 for a random model
    assert losses[-1] < 0.3 * losses[0], losses


# --------------------------------------------------------------------------- inputs


def test_images_of_any_size_and_bad_inputs() -> None:
    policy = make_policy()
    for size in ((64, 64), (17, 200), (240, 320)):
        pixels = policy.preprocess_images(images(2, size))
        assert pixels.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        policy.act(images().astype(np.float32), INSTRUCTIONS)
    with pytest.raises(ValueError, match="instructions"):
        policy.act(images(), INSTRUCTIONS[:3])
    with pytest.raises(ValueError, match="action ids"):
        policy.evaluate_actions(images(), INSTRUCTIONS, torch.zeros(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="B=4, D=8"):
        policy.evaluate_actions(images(), INSTRUCTIONS, torch.zeros(4, 7, dtype=torch.long))


def test_any_action_dim_and_statistics_round_trip() -> None:
    rng = np.random.default_rng(0)
    demos = rng.normal(0, 0.05, (1000, 7))
    stats = ActionStatistics.from_actions(demos, mask=[True] * 6 + [False])
    policy = build_policy(
        SMALL, LORA, action_dim=7, decoding="autoregressive", statistics=stats, unnorm_key="lift"
    )
    actions = np.clip(demos[:4], stats.q01, stats.q99)
    actions[:, 6] = [-1.0, 1.0, 1.0, -1.0]  # gripper, not normalized
    tokens = policy.actions_to_tokens(actions)
    assert tokens.shape == (4, 7)
    recovered = policy.statistics.unnormalize(policy.action_tokenizer.decode(tokens))
    bin_width = (stats.q99 - stats.q01) / 255
    assert (np.abs(recovered[:, :6] - actions[:, :6]) <= bin_width[:6] / 2 + 1e-9).all()
    out = policy.act(images(), INSTRUCTIONS)
    assert out.actions.shape == (4, 7)
    assert (
        (out.actions[:, :6] >= stats.q01[:6] - 1e-6) & (out.actions[:, :6] <= stats.q99[:6] + 1e-6)
    ).all()
    with pytest.raises(ValueError, match="unnorm_key"):
        build_policy(SMALL, action_dim=7, statistics=stats)


# --------------------------------------------------------------------------- checkpoints


def test_trainable_state_dict_round_trip_and_key_errors() -> None:
    source = make_policy()
    target = build_policy(SMALL, LORA, seed=0)
    target.load_trainable_state_dict(source.trainable_state_dict())
    assert_same_outputs(source, target)
    state = source.trainable_state_dict()
    assert all("lora_" in k or k.startswith("value_head.") for k in state)
    state.pop(next(iter(state)))
    with pytest.raises(KeyError, match="missing"):
        target.load_trainable_state_dict(state)
    with pytest.raises(KeyError, match="unexpected"):
        target.load_trainable_state_dict(
            {**source.trainable_state_dict(), "model.extra": torch.zeros(1)}
        )


@pytest.mark.parametrize("mode", MODES)
def test_lora_checkpoint_reloads_identically_and_trainable(tmp_path, mode: str) -> None:
    stats = ActionStatistics.from_actions(np.random.default_rng(0).normal(size=(100, 8)))
    policy = make_policy(mode, statistics=stats, unnorm_key="lift")
    policy.save_pretrained(str(tmp_path / "ckpt"))
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "policy_config.json"} <= names
    assert {"value_head.safetensors", "dataset_statistics.json", "base_model"} <= names
    loaded = HFVLAPolicy.from_checkpoint(tmp_path / "ckpt")
    assert loaded.use_lora and loaded.decoding == mode and loaded.unnorm_key == "lift"
    assert any(p.requires_grad for n, p in loaded.model.named_parameters() if "lora_" in n)
    assert_same_outputs(policy, loaded)
    np.testing.assert_array_equal(loaded.statistics.q99, stats.q99)
    # saving over an existing checkpoint replaces it
    loaded.save_pretrained(str(tmp_path / "ckpt"))
    assert_same_outputs(policy, HFVLAPolicy.from_checkpoint(tmp_path / "ckpt"))


def test_bare_adapter_dir_and_merged_dir_reload_identically(tmp_path) -> None:
    policy = make_policy()
    policy.save_pretrained(str(tmp_path / "ckpt"))
    # a bare peft adapter directory: adapter_config.json names the base model
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "ckpt" / name, adapter / name)
    from_adapter = HFVLAPolicy.from_checkpoint(adapter)
    assert from_adapter.use_lora
    from_adapter.value_head.load_state_dict(policy.value_head.state_dict())
    assert_same_outputs(policy, from_adapter)

    policy.merge_lora()
    assert not policy.use_lora
    assert_same_outputs(from_adapter, policy, atol=1e-4)
    policy.save_pretrained(str(tmp_path / "merged"))
    assert (tmp_path / "merged" / "config.json").is_file()
    merged = HFVLAPolicy.from_checkpoint(tmp_path / "merged")
    assert not merged.use_lora
    assert_same_outputs(policy, merged)
    # a merged dir without the policy's own files is still loadable as a plain model
    for name in ("policy_config.json", "value_head.safetensors"):
        (tmp_path / "merged" / name).unlink()
    plain = HFVLAPolicy.from_checkpoint(tmp_path / "merged", lora=LoRAConfig(enabled=True, rank=4))
    assert plain.use_lora and plain.lora.rank == 4


def test_full_weight_checkpoint_reloads_identically(tmp_path) -> None:
    policy = make_policy("autoregressive", lora=None)
    with torch.no_grad():
        policy._hf_model().lm_head.weight.add_(0.1)
    policy.save_pretrained(str(tmp_path / "full"))
    loaded = HFVLAPolicy.from_checkpoint(tmp_path / "full")
    assert not loaded.use_lora and loaded.decoding == "autoregressive"
    assert_same_outputs(policy, loaded)


def test_bad_checkpoint_dirs_name_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFVLAPolicy.from_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match="policy_config.json.*adapter_config.json.*config.json"
    ):
        HFVLAPolicy.from_checkpoint(tmp_path / "empty")
    policy = make_policy()
    policy.save_pretrained(str(tmp_path / "ckpt"))
    broken = tmp_path / "no_value_head"
    shutil.copytree(tmp_path / "ckpt", broken)
    (broken / "value_head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        HFVLAPolicy.from_checkpoint(broken)
    broken = tmp_path / "no_adapter"
    shutil.copytree(tmp_path / "ckpt", broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        HFVLAPolicy.from_checkpoint(broken)
    broken = tmp_path / "no_base"
    shutil.copytree(tmp_path / "ckpt", broken)
    shutil.rmtree(broken / "base_model")
    with pytest.raises(FileNotFoundError, match="base model 'base_model'"):
        HFVLAPolicy.from_checkpoint(broken)
    config = json.loads((tmp_path / "ckpt" / "policy_config.json").read_text())
    config["unnorm_key"] = "lift"
    (tmp_path / "ckpt" / "policy_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="dataset_statistics.json"):
        HFVLAPolicy.from_checkpoint(tmp_path / "ckpt")


def test_statistics_key_errors_list_the_keys(tmp_path) -> None:
    stats = ActionStatistics.from_actions(np.random.default_rng(0).normal(size=(100, 8)))
    make_policy(statistics=stats, unnorm_key="lift").save_pretrained(str(tmp_path / "ckpt"))
    with pytest.raises(KeyError, match=r"'drawer'.*\['lift'\]"):
        HFVLAPolicy.from_checkpoint(tmp_path / "ckpt", unnorm_key="drawer")
