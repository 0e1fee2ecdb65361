"""PPO loss against a hand-written reference, and the update loop with a tiny stand-in policy."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from vla_rl_lib.algorithms.ppo import PPOBatch, PPOSettings, ppo_loss, ppo_update
from vla_rl_lib.config import PPOConfig
from vla_rl_lib.policy.base import EvaluateOutput

D, BINS, H = 3, 5, 4  # action dims, bins per dim, image side


class TinyCategoricalPolicy(nn.Module):
    """Stands in for a VLA: a linear map from image pixels to D categorical action heads + a value."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.logits = nn.Linear(H * H * 3, D * BINS)
        self.value = nn.Linear(H * H * 3, 1)

    def evaluate_actions(self, images, instructions, token_ids, temperature=1.0) -> EvaluateOutput:
        assert len(instructions) == len(images) == len(token_ids)
        features = torch.as_tensor(np.asarray(images), dtype=torch.float32).flatten(1) / 255.0
        log_p = torch.log_softmax(self.logits(features).view(-1, D, BINS) / temperature, dim=-1)
        chosen = log_p.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1).sum(-1)
        entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
        return EvaluateOutput(
            log_probs=chosen, entropy=entropy, values=self.value(features).squeeze(-1)
        )


def make_batch(policy, size=32, seed=0, advantages=None):
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, size=(size, H, H, 3), dtype=np.uint8)
    tokens = torch.as_tensor(g.integers(0, BINS, size=(size, D)), dtype=torch.int64)
    instructions = ["pick up the blue cube"] * size
    with torch.no_grad():
        out = policy.evaluate_actions(images, instructions, tokens)
    if advantages is None:
        advantages = torch.as_tensor(g.normal(size=size), dtype=torch.float32)
    returns = out.values + torch.as_tensor(g.normal(size=size), dtype=torch.float32)
    return PPOBatch(images, instructions, tokens, out.log_probs, out.values, advantages, returns)


def settings(**changes) -> PPOSettings:
    base = PPOConfig(num_epochs=1, minibatch_size=32, micro_batch_size=32, max_grad_norm=1e6)
    return PPOSettings.from_section(base.model_copy(update=changes))


# ---------------------------------------------------------------- the loss


def reference_loss(new_lp, old_lp, adv, ent, new_v, old_v, ret, s: PPOSettings):
    """Per-sample loops in plain floats."""
    eps_low, eps_high = (
        s.clip_ratio,
        s.clip_ratio if s.clip_ratio_high is None else s.clip_ratio_high,
    )

    def value_error(e):
        if s.value_loss_type == "mse":
            return 0.5 * e * e
        return 0.5 * e * e if abs(e) <= 1.0 else abs(e) - 0.5

    pg, vl = [], []
    for i in range(len(new_lp)):
        ratio = math.exp(new_lp[i] - old_lp[i])
        clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
        pg.append(max(-adv[i] * ratio, -adv[i] * clipped_ratio))
        unclipped = value_error(new_v[i] - ret[i])
        if s.clip_value_loss:
            v_clip = old_v[i] + min(
                max(new_v[i] - old_v[i], -s.value_clip_range), s.value_clip_range
            )
            vl.append(max(unclipped, value_error(v_clip - ret[i])))
        else:
            vl.append(unclipped)
    policy_loss, value_loss = sum(pg) / len(pg), sum(vl) / len(vl)
    if s.algorithm == "grpo":
        value_loss = 0.0
    entropy = sum(ent) / len(ent)
    return (
        policy_loss - s.entropy_coef * entropy + s.value_loss_coef * value_loss,
        policy_loss,
        value_loss,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"clip_ratio_high": 0.28},
        {"clip_value_loss": False},
        {"value_loss_type": "huber"},
        {"value_loss_type": "huber", "clip_value_loss": False, "value_clip_range": 0.05},
        {"algorithm": "grpo", "entropy_coef": 0.01},
        {"entropy_coef": 0.1, "value_loss_coef": 2.0, "clip_ratio": 0.1},
    ],
)
def test_loss_matches_reference(changes):
    s = settings(**changes)
    g = torch.Generator().manual_seed(0)
    n = 64
    old_lp = torch.randn(n, generator=g, dtype=torch.float64)
    new_lp = old_lp + 0.4 * torch.randn(
        n, generator=g, dtype=torch.float64
    )  # many ratios outside the clip
    adv, ent = (
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.rand(n, generator=g, dtype=torch.float64),
    )
    old_v = torch.randn(n, generator=g, dtype=torch.float64)
    new_v = old_v + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    ret = old_v + 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    loss, stats = ppo_loss(new_lp, old_lp, adv, ent, new_v, old_v, ret, s)
    expected, policy_loss, value_loss = reference_loss(
        *(x.tolist() for x in (new_lp, old_lp, adv, ent, new_v, old_v, ret)), s
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["policy_loss"].item() == pytest.approx(policy_loss, rel=1e-12)
    assert stats["value_loss"].item() == pytest.approx(value_loss, rel=1e-12, abs=1e-15)
    ratio = (new_lp - old_lp).exp()
    high = 1 + (s.clip_ratio_high or s.clip_ratio)
    expected_clip = ((ratio < 1 - s.clip_ratio) | (ratio > high)).double().mean().item()
    assert stats["clip_fraction"].item() == pytest.approx(expected_clip)
    assert 0 < expected_clip < 1
    assert stats["approx_kl"].item() == pytest.approx(
        ((ratio - 1) - (new_lp - old_lp)).mean().item()
    )
    assert stats["approx_kl"].item() >= 0


def test_upper_clip_lets_positive_advantages_move_further():
    # ratio 1.25: clipped by a symmetric 0.2 clip, not by clip_ratio_high 0.28
    new_lp, old_lp = torch.tensor([math.log(1.25)], requires_grad=True), torch.tensor([0.0])
    args = (torch.tensor([1.0]), torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1))
    for high, expected_grad in ((None, 0.0), (0.28, -1.25)):
        new_lp.grad = None
        loss, _ = ppo_loss(
            new_lp,
            old_lp,
            args[0],
            args[1],
            args[2],
            args[3],
            args[4],
            settings(clip_ratio_high=high),
        )
        loss.backward()
        assert new_lp.grad.item() == pytest.approx(expected_grad)


def test_gradient_signs():
    s = settings(value_loss_coef=0.0)
    old_lp = torch.zeros(2)
    new_lp = torch.zeros(2, requires_grad=True)
    loss, _ = ppo_loss(
        new_lp,
        old_lp,
        torch.tensor([1.0, -1.0]),
        torch.zeros(2),
        torch.zeros(2),
        torch.zeros(2),
        torch.zeros(2),
        s,
    )
    loss.backward()
    # descending the loss raises the log-prob of the positive-advantage action and lowers the other
    assert new_lp.grad[0] < 0 < new_lp.grad[1]

    # the value loss pulls the value toward the return
    values = torch.zeros(1, requires_grad=True)
    loss, _ = ppo_loss(
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        values,
        torch.zeros(1),
        torch.tensor([0.1]),
        settings(),
    )
    loss.backward()
    assert values.grad.item() < 0

    # entropy bonus: gradient of the loss w.r.t. entropy is -entropy_coef
    entropy = torch.ones(1, requires_grad=True)
    loss, _ = ppo_loss(
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        entropy,
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        settings(entropy_coef=0.3),
    )
    loss.backward()
    assert entropy.grad.item() == pytest.approx(-0.3)


def test_grpo_gives_the_value_head_no_gradient():
    values = torch.zeros(3, requires_grad=True)
    loss, stats = ppo_loss(
        torch.zeros(3, requires_grad=True),
        torch.zeros(3),
        torch.ones(3),
        torch.zeros(3),
        values,
        torch.zeros(3),
        torch.ones(3),
        settings(algorithm="grpo"),
    )
    loss.backward()
    assert values.grad is None and stats["value_loss"].item() == 0.0


# ---------------------------------------------------------------- the update


def test_update_raises_probability_of_positive_advantage_actions():
    policy = TinyCategoricalPolicy()
    advantages = torch.tensor([1.0, -1.0] * 16)
    batch = make_batch(policy, advantages=advantages)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    stats = ppo_update(
        policy,
        optimizer,
        batch,
        settings(num_epochs=4, minibatch_size=8, micro_batch_size=4),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        after = policy.evaluate_actions(batch.images, batch.instructions, batch.token_ids).log_probs
    change = after - batch.old_log_probs
    assert (change[advantages > 0] > 0).float().mean() > 0.9
    assert (change[advantages < 0] < 0).float().mean() > 0.9
    assert stats["num_minibatch_steps"] == 16 and stats["skipped_steps"] == 0
    assert stats["early_stopped"] is False and stats["epochs_completed"] == 4
    for key in (
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clip_fraction",
        "explained_variance",
        "grad_norm",
    ):
        assert math.isfinite(stats[key]), key
    assert stats["clip_fraction"] > 0 and stats["approx_kl"] > 0


def test_update_is_reproducible_with_a_generator():
    results = []
    for _ in range(2):
        policy = TinyCategoricalPolicy()
        batch = make_batch(policy)
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
        stats = ppo_update(
            policy,
            optimizer,
            batch,
            settings(num_epochs=2, minibatch_size=8, micro_batch_size=8),
            generator=torch.Generator().manual_seed(3),
        )
        results.append((stats, [p.detach().clone() for p in policy.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_target_kl_stops_early():
    policy = TinyCategoricalPolicy()
    batch = make_batch(policy)
    optimizer = torch.optim.SGD(policy.parameters(), lr=5.0)
    stats = ppo_update(
        policy,
        optimizer,
        batch,
        settings(num_epochs=10, minibatch_size=8, micro_batch_size=8, target_kl=1e-3),
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["early_stopped"] is True
    assert 1 <= stats["num_minibatch_steps"] < 40
    assert stats["epochs_completed"] < 10


def test_micro_batching_gives_the_same_step():
    params = []
    for micro in (32, 5, 1):
        policy = TinyCategoricalPolicy()
        batch = make_batch(policy)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
        ppo_update(
            policy,
            optimizer,
            batch,
            settings(micro_batch_size=micro, entropy_coef=0.01),
            generator=torch.Generator().manual_seed(0),
        )
        params.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    initial = torch.cat([p.detach().flatten() for p in TinyCategoricalPolicy().parameters()])
    assert not torch.allclose(params[0], initial)
    torch.testing.assert_close(params[1], params[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[2], params[0], rtol=1e-5, atol=1e-6)


def test_grad_norm_is_clipped():
    policy = TinyCategoricalPolicy()
    batch = make_batch(policy, advantages=torch.full((32,), 100.0))
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    stats = ppo_update(
        policy, optimizer, batch, settings(max_grad_norm=0.5, normalize_advantages=False)
    )
    moved = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(policy.parameters(), before, strict=True)]
    )
    assert stats["grad_norm"] > 0.5
    assert moved.norm().item() == pytest.approx(0.5, rel=1e-4)


class NaNOnCalls(nn.Module):
    """Wraps a policy and returns NaN log-probs on the given evaluate calls (0-based)."""

    def __init__(self, policy, bad_calls):
        super().__init__()
        self.policy, self.bad_calls, self.calls = policy, set(bad_calls), 0

    def evaluate_actions(self, *args):
        out = self.policy.evaluate_actions(*args)
        if self.calls in self.bad_calls:
            out.log_probs = out.log_probs * torch.tensor(float("nan"))
        self.calls += 1
        return out


def test_non_finite_loss_skips_the_step():
    inner = TinyCategoricalPolicy()
    batch = make_batch(inner)
    policy = NaNOnCalls(inner, bad_calls={1})  # second micro-batch of the first minibatch
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    stats = ppo_update(
        policy,
        optimizer,
        batch,
        settings(num_epochs=2, minibatch_size=16, micro_batch_size=8),
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["skipped_steps"] == 1
    assert stats["num_minibatch_steps"] == 3
    assert all(torch.isfinite(p).all() for p in inner.parameters())
    assert math.isfinite(stats["policy_loss"])


def test_all_steps_non_finite_leaves_the_policy_untouched():
    inner = TinyCategoricalPolicy()
    batch = make_batch(inner)
    before = copy.deepcopy(inner.state_dict())
    policy = NaNOnCalls(inner, bad_calls=range(100))
    stats = ppo_update(
        policy,
        torch.optim.Adam(policy.parameters(), lr=1e-2),
        batch,
        settings(minibatch_size=16, micro_batch_size=16),
    )
    assert stats["skipped_steps"] == 2 and stats["num_minibatch_steps"] == 0
    assert math.isnan(stats["policy_loss"])
    for key, value in inner.state_dict().items():
        assert torch.equal(value, before[key])


def test_minibatch_larger_than_batch_uses_whole_batch():
    policy = TinyCategoricalPolicy()
    batch = make_batch(policy, size=6)
    stats = ppo_update(
        policy,
        torch.optim.Adam(policy.parameters(), lr=1e-3),
        batch,
        settings(minibatch_size=64, micro_batch_size=4),
    )
    assert stats["num_minibatch_steps"] == 1


def test_grpo_update_leaves_the_value_head_alone():
    policy = TinyCategoricalPolicy()
    batch = make_batch(policy)
    value_before = policy.value.weight.detach().clone()
    stats = ppo_update(
        policy,
        torch.optim.Adam(policy.parameters(), lr=1e-2),
        batch,
        settings(algorithm="grpo", num_epochs=2, minibatch_size=8, micro_batch_size=8),
    )
    assert torch.equal(policy.value.weight, value_before)
    assert stats["value_loss"] == 0.0 and math.isnan(stats["explained_variance"])


def test_batch_rejects_mismatched_lengths():
    policy = TinyCategoricalPolicy()
    batch = make_batch(policy, size=4)
    with pytest.raises(ValueError, match="PPOBatch.returns holds 3 samples"):
        dataclasses.replace(batch, returns=batch.returns[:3])


# ---------------------------------------------------------------- with the real tiny VLA


@pytest.mark.parametrize("lora", [False, True])
def test_update_on_the_tiny_vla(lora):
    from vla_rl_lib.policy.configuration import PolicyConfig
    from vla_rl_lib.policy.hf_policy import HFVLAPolicy
    from vla_rl_lib.policy.lora import LoRAConfig
    from vla_rl_lib.policy.tiny_vla import TinyVLAConfig, build_tiny_vla

    small = TinyVLAConfig(
        image_size=32, text_layers=1, text_hidden_size=64, text_intermediate_size=128
    )
    model, processor = build_tiny_vla(small, seed=0)
    lora_config = LoRAConfig(enabled=lora, rank=4, alpha=8)
    policy = HFVLAPolicy(PolicyConfig(lora=lora_config), model, processor)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    instructions = ["pick up the blue cube"] * 8
    out = policy.act(images, instructions)
    advantages = torch.tensor([1.0, -1.0] * 4)
    batch = PPOBatch(
        images, instructions, out.token_ids, out.log_probs, out.values, advantages, out.values + 1.0
    )
    optimizer = torch.optim.AdamW(policy.optimizer_param_groups(1e-3, 1e-3))
    stats = ppo_update(
        policy,
        optimizer,
        batch,
        settings(num_epochs=3, minibatch_size=8, micro_batch_size=4),
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["skipped_steps"] == 0 and stats["num_minibatch_steps"] == 3
    with torch.no_grad():
        after = policy.evaluate_actions(images, instructions, out.token_ids).log_probs
    change = after - out.log_probs
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all()


class PerSampleTablePolicy(nn.Module):
    """Sample i's action logits are row i of a table (the index rides in pixel [0, 0, 0]),
    so each row's gradient comes from that sample's loss term alone."""

    def __init__(self, size: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(size, D, BINS, generator=torch.Generator().manual_seed(0)))

    def evaluate_actions(self, images, instructions, token_ids, temperature=1.0) -> EvaluateOutput:
        rows = torch.as_tensor(np.asarray(images)[:, 0, 0, 0], dtype=torch.int64)
        log_p = torch.log_softmax(self.table[rows] / temperature, dim=-1)
        chosen = log_p.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1).sum(-1)
        entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
        return EvaluateOutput(log_probs=chosen, entropy=entropy, values=torch.zeros(len(rows)))


@pytest.mark.parametrize("normalize_advantages", [True, False])
def test_grpo_all_equal_group_gets_exactly_zero_gradient_through_the_update(normalize_advantages):
    from vla_rl_lib.algorithms.advantage import group_normalized_advantages

    group_size = 4
    # Groups 0 and 2 all failed, group 1 all succeeded, group 3 is mixed: only group 3 carries signal.
    returns = torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0, 0.0, 0.0, 1.0])
    per_episode = group_normalized_advantages(returns, torch.arange(16) // group_size).float()
    # Every step of an episode carries its advantage. Successes end early, failures run to the
    # time limit, so the per-step mean is not 0 even though each group's advantages sum to 0.
    lengths = torch.where(returns > 0, 2, 5)
    advantages = per_episode.repeat_interleave(lengths)
    in_signal_group = (torch.arange(16) >= 12).repeat_interleave(lengths)
    size = len(advantages)
    policy = PerSampleTablePolicy(size)
    batch = make_batch(TinyCategoricalPolicy(), size=size, advantages=advantages)
    batch.images[:, 0, 0, 0] = np.arange(size)
    with torch.no_grad():
        old = policy.evaluate_actions(batch.images, batch.instructions, batch.token_ids).log_probs
    batch = dataclasses.replace(batch, old_log_probs=old)
    before = policy.table.detach().clone()
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    ppo_update(
        policy, optimizer, batch,
        settings(algorithm="grpo", entropy_coef=0.0, num_epochs=2, minibatch_size=size, micro_batch_size=8,
                 normalize_advantages=normalize_advantages),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    moved = (policy.table.detach() != before).flatten(1).any(1)
    assert advantages.mean() != 0  # the case batch centering gets wrong
    assert not moved[~in_signal_group].any(), "an all-equal group's actions were pushed"
    assert moved[in_signal_group].all()


def test_settings_come_from_the_run_config_and_refuse_unknown_choices():
    config = PPOConfig(algorithm="grpo", clip_ratio_high=0.28, target_kl=0.05)
    built = PPOSettings.from_section(config)
    assert (built.algorithm, built.clip_ratio_high, built.target_kl) == ("grpo", 0.28, 0.05)
    assert all(getattr(built, f.name) == getattr(config, f.name) for f in dataclasses.fields(built))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.clip_ratio = 0.3
    with pytest.raises(ValueError, match=r"PPOSettings.value_loss_type='l1' is unknown"):
        dataclasses.replace(built, value_loss_type="l1")
    with pytest.raises(ValueError, match=r"PPOSettings.micro_batch_size=0 must be >= 1"):
        dataclasses.replace(built, micro_batch_size=0)
