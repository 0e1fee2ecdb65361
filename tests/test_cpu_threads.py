"""Per-phase torch thread counts: the update gets every core, the rollout keeps one."""

from __future__ import annotations

import pytest
import torch

from vla_rl_lib.training.cpu_threads import available_cores, phase_threads, update_threads


def test_phase_threads_sets_the_count_for_the_block_and_restores_it():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with phase_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError), phase_threads(2):
            raise RuntimeError("the update failed")
        assert torch.get_num_threads() == 1  # restored on the way out of an error too
        with phase_threads(None):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_update_threads_default_to_every_core_on_cpu_only(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = torch.device("cpu")
    assert update_threads(0, cpu) == available_cores() >= 1
    assert update_threads(3, cpu) == 3
    assert update_threads(0, torch.device("cuda")) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting wins
    assert update_threads(0, cpu) is None
