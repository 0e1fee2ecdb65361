"""OpenVLA's action binning and q01/q99 normalization, against slow references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_rl_lib.policy.action_tokenizer import (
    ActionStatistics,
    ActionTokenizer,
    load_action_statistics,
    write_dataset_statistics,
)

VOCAB_END = 32000  # OpenVLA's base vocabulary; action ids 31744..31999


def reference_token(value: float) -> int:
    """Bin by scanning the edges one by one (np.digitize, written out)."""
    edges = np.linspace(-1, 1, 256)
    value = min(max(value, -1.0), 1.0)
    index = sum(1 for edge in edges if edge <= value)
    return VOCAB_END - index


def test_matches_reference_binning_on_a_grid() -> None:
    tokenizer = ActionTokenizer(VOCAB_END)
    values = np.linspace(-1.3, 1.3, 2001)
    expected = np.array([reference_token(v) for v in values])
    np.testing.assert_array_equal(tokenizer.encode(values), expected)


def test_edge_bins_and_range() -> None:
    tokenizer = ActionTokenizer(VOCAB_END)
    assert tokenizer.action_token_begin == 31744
    ids = tokenizer.encode(np.array([-1.0, 1.0, -5.0, 5.0, 0.0]))
    assert ids.tolist() == [31999, 31744, 31999, 31744, VOCAB_END - 128]
    decoded = tokenizer.decode(ids)
    centers = tokenizer.bin_centers
    # -1 -> first centre; +1 falls in the 256th "bin", which decodes to the last centre (clip to 254)
    assert decoded[0] == np.float32(centers[0]) and decoded[1] == np.float32(centers[-1])


def test_round_trip_is_within_half_a_bin() -> None:
    tokenizer = ActionTokenizer(VOCAB_END)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(64, 8))
    ids = tokenizer.encode(actions)
    assert ids.shape == (64, 8) and ids.dtype == np.int64
    assert ((ids >= 31744) & (ids < 32000)).all()
    bin_width = 2 / 255
    assert np.abs(tokenizer.decode(ids) - actions).max() <= bin_width / 2 + 1e-6
    # decoding a bin centre and re-encoding it gives the same id
    np.testing.assert_array_equal(tokenizer.encode(tokenizer.decode(ids)), ids)


def test_any_action_dim_and_torch_ids() -> None:
    tokenizer = ActionTokenizer(1280)
    for dim in (1, 7, 8, 13):
        ids = tokenizer.encode(np.zeros((3, dim)))
        assert tokenizer.decode(torch.from_numpy(ids)).shape == (3, dim)
    assert tokenizer.ids_to_bins(torch.tensor([1024, 1279])).tolist() == [0, 255]


def test_nan_and_foreign_ids_are_clear_errors() -> None:
    tokenizer = ActionTokenizer(VOCAB_END)
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="not action ids"):
        tokenizer.decode(np.array([5]))


def test_normalization_masks_and_inverts() -> None:
    stats = ActionStatistics(
        q01=np.array([-0.5, 0.0, 0.0]),
        q99=np.array([0.5, 2.0, 1.0]),
        mask=np.array([True, True, False]),
    )
    actions = np.array([[-0.5, 2.0, 0.7], [0.0, 1.0, 0.2]])
    normalized = stats.normalize(actions)
    np.testing.assert_allclose(normalized[:, :2], [[-1, 1], [0, 0]], atol=1e-7)
    np.testing.assert_array_equal(normalized[:, 2], actions[:, 2])  # gripper untouched
    np.testing.assert_allclose(stats.unnormalize(normalized), actions, atol=1e-12)
    with pytest.raises(ValueError, match="3"):
        stats.normalize(np.zeros((1, 4)))


def test_statistics_file_round_trip_and_key_errors(tmp_path) -> None:
    rng = np.random.default_rng(1)
    stats = ActionStatistics.from_actions(rng.normal(size=(500, 8)), mask=[True] * 7 + [False])
    write_dataset_statistics(tmp_path, "crane_x7_lift", stats, num_transitions=500)
    write_dataset_statistics(tmp_path, "other", stats)
    layout = json.loads((tmp_path / "dataset_statistics.json").read_text())
    assert set(layout["crane_x7_lift"]["action"]) >= {
        "q01",
        "q99",
        "mask",
        "mean",
        "std",
        "min",
        "max",
    }
    loaded = load_action_statistics(tmp_path, "crane_x7_lift")
    np.testing.assert_array_equal(loaded.q01, stats.q01)
    assert loaded.mask.tolist() == [True] * 7 + [False]
    with pytest.raises(KeyError, match=r"'missing'.*\['crane_x7_lift', 'other'\]"):
        load_action_statistics(tmp_path, "missing")
    with pytest.raises(KeyError, match="pass unnorm_key"):
        load_action_statistics(tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset_statistics.json"):
        load_action_statistics(tmp_path / "nowhere")
