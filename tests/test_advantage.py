"""GAE and GRPO advantages against slow, obviously correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_rl_lib.algorithms.advantage import (
    broadcast_to_steps,
    compute_gae,
    episode_ids,
    episode_returns,
    group_normalized_advantages,
)


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Episode by episode, step by step, in plain Python floats."""
    T, N = len(rewards), len(rewards[0])
    advantages = [[0.0] * N for _ in range(T)]
    for n in range(N):
        # split env n's steps into episodes
        episodes, start = [], 0
        for t in range(T):
            if terminated[t][n] or truncated[t][n]:
                episodes.append(range(start, t + 1))
                start = t + 1
        if start < T:
            episodes.append(range(start, T))
        for steps in episodes:
            for t in steps:  # A_t = sum_k (gamma lam)^(k-t) delta_k over the rest of the episode
                total, weight = 0.0, 1.0
                for k in range(t, steps[-1] + 1):
                    bootstrap = 0.0 if terminated[k][n] else gamma * next_values[k][n]
                    total += weight * (rewards[k][n] + bootstrap - values[k][n])
                    weight *= gamma * lam
                advantages[t][n] = total
    return advantages


def random_rollout(T, N, seed, p_term=0.08, p_trunc=0.05):
    g = np.random.default_rng(seed)
    rewards = g.normal(size=(T, N))
    values = g.normal(size=(T, N))
    next_values = g.normal(size=(T, N))
    terminated = g.random((T, N)) < p_term
    truncated = (g.random((T, N)) < p_trunc) & ~terminated
    return rewards, values, next_values, terminated, truncated


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_gae_matches_reference_on_random_rollouts(seed, gamma, lam):
    r, v, nv, term, trunc = random_rollout(37, 6, seed)
    expected = np.array(
        reference_gae(
            r.tolist(), v.tolist(), nv.tolist(), term.tolist(), trunc.tolist(), gamma, lam
        )
    )
    adv, ret = compute_gae(
        torch.tensor(r),
        torch.tensor(v),
        torch.tensor(nv),
        torch.tensor(term),
        torch.tensor(trunc),
        gamma,
        lam,
    )
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.float64
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), expected + v, rtol=1e-10, atol=1e-10)


def test_gae_accepts_numpy_and_float32():
    r, v, nv, term, trunc = random_rollout(20, 3, 0)
    adv_np, ret_np = compute_gae(r, v, nv, term, trunc, 0.99, 0.95)
    assert isinstance(adv_np, np.ndarray)
    adv32, _ = compute_gae(
        *(torch.tensor(x, dtype=torch.float32) for x in (r, v, nv)),
        torch.tensor(term),
        torch.tensor(trunc),
        0.99,
        0.95,
    )
    assert adv32.dtype == torch.float32
    np.testing.assert_allclose(adv32.numpy(), adv_np, rtol=1e-5, atol=1e-5)


def _one(*rows):
    return [torch.tensor([[x] for x in row], dtype=torch.float64) for row in rows]


def test_single_terminated_step_does_not_bootstrap():
    r, v, nv = _one([1.0], [0.3], [100.0])
    adv, ret = compute_gae(r, v, nv, torch.tensor([[True]]), torch.tensor([[False]]), 0.9, 0.95)
    assert adv.item() == pytest.approx(1.0 - 0.3)
    assert ret.item() == pytest.approx(1.0)


def test_truncated_step_bootstraps_from_final_observation():
    r, v, nv = _one([1.0], [0.3], [2.0])
    adv, ret = compute_gae(r, v, nv, torch.tensor([[False]]), torch.tensor([[True]]), 0.9, 0.95)
    assert adv.item() == pytest.approx(1.0 + 0.9 * 2.0 - 0.3)
    assert ret.item() == pytest.approx(1.0 + 0.9 * 2.0)


def test_done_cuts_the_recursion():
    # step 0 truncates (next episode starts at step 1); step 1 terminates
    r, v, nv = _one([1.0, 5.0], [0.5, 1.0], [2.0, 7.0])
    term = torch.tensor([[False], [True]])
    trunc = torch.tensor([[True], [False]])
    adv, _ = compute_gae(r, v, nv, term, trunc, 0.9, 0.8)
    assert adv[0].item() == pytest.approx(1.0 + 0.9 * 2.0 - 0.5)  # nothing from step 1
    assert adv[1].item() == pytest.approx(5.0 - 1.0)


def test_lambda_zero_is_one_step_td():
    r, v, nv = _one([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, _ = compute_gae(r, v, nv, no, no, 0.9, 0.0)
    expected = [1.0 + 0.9 * 0.2 - 0.1, 2.0 + 0.9 * 0.3 - 0.2, 3.0 + 0.9 * 0.4 - 0.3]
    np.testing.assert_allclose(adv[:, 0].numpy(), expected)


def test_lambda_one_is_monte_carlo_return_minus_value():
    # one episode of 3 steps, terminated at the end: returns are discounted reward sums
    r, v, nv = _one([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0.2, 0.3, 99.0])
    term = torch.tensor([[False], [False], [True]])
    trunc = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = compute_gae(r, v, nv, term, trunc, 0.9, 1.0)
    mc = [1.0 + 0.9 * 2.0 + 0.81 * 3.0, 2.0 + 0.9 * 3.0, 3.0]
    np.testing.assert_allclose(ret[:, 0].numpy(), mc)
    np.testing.assert_allclose(adv[:, 0].numpy(), np.array(mc) - [0.1, 0.2, 0.3])


def test_unfinished_last_step_bootstraps_from_next_value():
    r, v, nv = _one([1.0], [0.0], [4.0])
    no = torch.zeros(1, 1, dtype=torch.bool)
    adv, _ = compute_gae(r, v, nv, no, no, 0.5, 0.9)
    assert adv.item() == pytest.approx(3.0)


def test_gae_rejects_mismatched_shapes():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="next_values has shape"):
        compute_gae(x, x, torch.zeros(4, 3), x.bool(), x.bool(), 0.9, 0.9)


def reference_group_advantages(returns, groups, eps):
    out = []
    for R, g in zip(returns, groups, strict=True):
        members = [r for r, h in zip(returns, groups, strict=True) if h == g]
        if len(set(members)) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        std = (sum((m - mean) ** 2 for m in members) / (len(members) - 1)) ** 0.5
        out.append((R - mean) / (std + eps))
    return out


def test_group_advantages_match_reference():
    g = np.random.default_rng(0)
    returns = g.integers(0, 2, size=40).astype(np.float64) + g.normal(scale=0.1, size=40) * (
        g.random(40) < 0.5
    )
    groups = g.integers(0, 9, size=40) * 7 - 3  # arbitrary, non-contiguous ids
    adv = group_normalized_advantages(returns, groups, eps=1e-6)
    assert isinstance(adv, np.ndarray)
    np.testing.assert_allclose(
        adv,
        reference_group_advantages(returns.tolist(), groups.tolist(), 1e-6),
        rtol=1e-9,
        atol=1e-12,
    )


def test_group_of_equal_returns_gives_exactly_zero():
    returns = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.7])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    adv = group_normalized_advantages(returns, groups)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert adv[5].item() == 0.0  # a group of one
    assert adv[3].item() > 0 > adv[4].item()
    assert adv[3].item() == pytest.approx(-adv[4].item())


def test_binary_success_group():
    # 1 success in 4: mean .25, unbiased std .5 -> (1 - .25) / .5 = 1.5 and -0.5
    adv = group_normalized_advantages(
        torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long), eps=0.0
    )
    np.testing.assert_allclose(adv.numpy(), [1.5, -0.5, -0.5, -0.5])


def test_episode_ids_and_broadcast():
    done = torch.tensor([[False, True], [True, False], [False, False], [True, True]])
    ids, count = episode_ids(done)
    # env 0: steps 0-1, steps 2-3 -> 0, 1; env 1: step 0, steps 1-3 -> 2, 3
    assert ids.tolist() == [[0, 2], [0, 3], [1, 3], [1, 3]]
    assert count == 4
    per_step = broadcast_to_steps(torch.tensor([10.0, 11.0, 12.0, 13.0]), ids)
    assert per_step.tolist() == [[10.0, 12.0], [10.0, 13.0], [11.0, 13.0], [11.0, 13.0]]
    with pytest.raises(ValueError, match="3 episodes"):
        broadcast_to_steps(torch.zeros(3), ids)


def test_episode_returns_with_running_last_episode():
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.5]])
    done = torch.tensor([[False, True], [True, False], [False, False]])
    returns, ids = episode_returns(rewards, done)
    assert returns.tolist() == [1.0, 0.0, 1.0, 0.5]
    assert ids.tolist() == [[0, 2], [0, 3], [1, 3]]


def test_grpo_pipeline_from_rollout():
    # 4 envs = 2 groups of 2 starting states; one episode each, binary success at the end
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    done = torch.tensor([[False] * 4, [True] * 4])
    returns, ids = episode_returns(rewards, done)
    adv = broadcast_to_steps(group_normalized_advantages(returns, torch.tensor([0, 0, 1, 1])), ids)
    assert adv.shape == (2, 4)
    assert (adv[:, 0] > 0).all() and (adv[:, 1] < 0).all() and (adv[:, 2:] == 0).all()
