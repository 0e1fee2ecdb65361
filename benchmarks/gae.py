"""Vectorized GAE (``compute_gae``) against a per-step Python loop, in the same run.

The loop walks every (t, n) in plain Python floats (the fastest a scalar loop
gets; the tensor-to-list conversion is not timed). Both run on float32
inputs (the loop in float64) and must agree to 1e-4. One CPU thread.
Last line: ``speedup_200x64=... speedup_1000x256=...``.

    .venv/bin/python benchmarks/gae.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vla_rl_lib.algorithms.advantage import compute_gae

GAMMA, LAMBDA = 0.99, 0.95


def python_loop_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    T, N = len(rewards), len(rewards[0])
    advantages = [[0.0] * N for _ in range(T)]
    for n in range(N):
        last = 0.0
        for t in range(T - 1, -1, -1):
            bootstrap = 0.0 if terminated[t][n] else gamma * next_values[t][n]
            delta = rewards[t][n] + bootstrap - values[t][n]
            done = terminated[t][n] or truncated[t][n]
            last = delta + (0.0 if done else gamma * lam * last)
            advantages[t][n] = last
    return advantages


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    speedups = {}
    for T, N in ((200, 64), (1000, 256)):
        g = np.random.default_rng(0)
        arrays = [g.normal(size=(T, N)).astype(np.float32) for _ in range(3)]
        terminated = g.random((T, N)) < 0.01
        truncated = (g.random((T, N)) < 0.005) & ~terminated
        tensors = [torch.from_numpy(a) for a in arrays] + [
            torch.from_numpy(terminated),
            torch.from_numpy(truncated),
        ]
        lists = [a.astype(np.float64).tolist() for a in arrays] + [
            terminated.tolist(),
            truncated.tolist(),
        ]

        vectorized, _ = compute_gae(*tensors, GAMMA, LAMBDA)
        looped = python_loop_gae(*lists, GAMMA, LAMBDA)
        np.testing.assert_allclose(vectorized.numpy(), np.array(looped), rtol=1e-4, atol=1e-4)

        t_vec = best_of(lambda: compute_gae(*tensors, GAMMA, LAMBDA), repeats=20)  # noqa: B023
        t_loop = best_of(lambda: python_loop_gae(*lists, GAMMA, LAMBDA), repeats=3)  # noqa: B023
        speedups[f"{T}x{N}"] = t_loop / t_vec
        print(
            f"T={T} N={N}: vectorized {t_vec * 1e3:.2f} ms, python loop {t_loop * 1e3:.1f} ms, ratio {t_loop / t_vec:.1f}x"
        )
    print(" ".join(f"speedup_{key}={value:.1f}" for key, value in speedups.items()))


if __name__ == "__main__":
    main()
