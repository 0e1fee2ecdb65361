"""Behaviour cloning: the loss falls, runs are seeded, the checkpoint reloads exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_rl_lib.policy.action_tokenizer import ActionStatistics, load_action_statistics
from vla_rl_lib.policy.hf_policy import HFVLAPolicy, build_policy
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig
from vla_rl_lib.sft import (
    DemoDataset,
    collect_demonstrations,
    load_demonstrations,
    run_sft,
    set_action_statistics,
)
from vla_rl_lib.sft.demos import STATISTICS_KEY
from vla_rl_lib.sft.trainer import (
    SFT_METRICS_FILE,
    _SFTEpochs,
    augment_rng,
    heldout_loss,
    random_shift,
    sft_batches,
)

INSTRUCTION = "pick up the blue cube"
SMALL = TinyVLAConfig(image_size=32, patch_size=16)
LORA = LoRAConfig(enabled=True, rank=32)


def synthetic_dataset(num_steps: int = 8, seed: int = 0) -> DemoDataset:
    """Random frames and actions in the task's action space (gripper at -1 or +1)."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.6, 0.6, size=(num_steps, 8)).astype(np.float32)
    actions[:, 7] = rng.choice([-1.0, 1.0], size=num_steps)
    return DemoDataset(
        path=Path("synthetic"),
        images=rng.integers(0, 256, size=(num_steps, 32, 32, 3), dtype=np.uint8),
        actions=actions,
        states=np.zeros((num_steps, 9), dtype=np.float32),
        instructions=[INSTRUCTION] * num_steps,
        episode_index=np.zeros(num_steps, dtype=np.int64),
        frame_index=np.arange(num_steps, dtype=np.int64),
        rewards=np.zeros(num_steps, dtype=np.float32),
        success=np.arange(num_steps) == num_steps - 1,
    )


def statistics_of(dataset: DemoDataset) -> ActionStatistics:
    return ActionStatistics.from_actions(dataset.actions, mask=np.arange(8) < 7)


@pytest.mark.parametrize(
    ("lora", "learning_rate", "epochs", "min_drop"),
    [(None, 1e-3, 5, 1.0), (LORA, 3e-3, 5, 1.0)],
    ids=["full", "lora"],
)
def test_loss_falls_on_a_fixed_batch(tmp_path, lora, learning_rate, epochs, min_drop) -> None:
    dataset = synthetic_dataset()
    records = []
    summary = run_sft(
        build_policy(SMALL, lora=lora, seed=0),
        dataset,
        epochs=epochs,
        batch_size=len(dataset),
        learning_rate=learning_rate,
        seed=0,
        out_dir=tmp_path / "sft",
        statistics=statistics_of(dataset),
        progress=False,
        on_epoch=records.append,
    )
    losses = summary["epoch_losses"]
    assert len(losses) == epochs and [r["loss"] for r in records] == losses
    assert losses[0] > 0.9 * np.log(256)  # a fresh model is near uniform over the bins
    assert losses[-1] < losses[0] - min_drop
    assert (np.diff(losses) < 0).all()


def test_same_seed_same_losses_and_weights(tmp_path) -> None:
    dataset = synthetic_dataset(num_steps=6)
    runs = []
    for name in ("a", "b"):
        policy = build_policy(SMALL, LORA, seed=1)
        summary = run_sft(
            policy,
            dataset,
            epochs=2,
            batch_size=4,
            learning_rate=1e-3,
            seed=7,
            out_dir=tmp_path / name,
            statistics=statistics_of(dataset),
            progress=False,
        )
        runs.append((summary["epoch_losses"], policy.trainable_state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_checkpoint_reloads_with_identical_greedy_actions(tmp_path) -> None:
    dataset = synthetic_dataset()
    statistics = statistics_of(dataset)
    policy = build_policy(SMALL, LORA, seed=0)
    out = tmp_path / "sft"
    run_sft(
        policy,
        dataset,
        epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        seed=0,
        out_dir=out,
        statistics=statistics,
        progress=False,
    )
    reloaded = HFVLAPolicy.from_checkpoint(out)
    images, instructions = dataset.images, dataset.instructions
    with torch.no_grad():
        before = policy.act(images, instructions, greedy=True)
        after = reloaded.act(images, instructions, greedy=True)
    assert torch.equal(before.token_ids, after.token_ids)
    np.testing.assert_array_equal(before.actions, after.actions)

    saved = load_action_statistics(out, STATISTICS_KEY)
    np.testing.assert_allclose(saved.q01, statistics.q01)
    np.testing.assert_array_equal(saved.mask, [True] * 7 + [False])
    assert reloaded.unnorm_key == STATISTICS_KEY
    metrics = json.loads((out / SFT_METRICS_FILE).read_text())
    assert metrics["num_transitions"] == len(dataset) and len(metrics["epoch_losses"]) == 2


def test_actions_are_tokenized_with_the_dataset_statistics() -> None:
    dataset = synthetic_dataset()
    statistics = statistics_of(dataset)
    policy = build_policy(SMALL, LORA, seed=0)
    set_action_statistics(policy, statistics)
    tokens = policy.actions_to_tokens(dataset.actions).numpy()
    expected = policy.action_tokenizer.encode(statistics.normalize(dataset.actions))
    np.testing.assert_array_equal(tokens, expected)
    # q01 and q99 land in the outermost bins (q99 a hair below +1, from the 1e-8 epsilon).
    extremes = policy.actions_to_tokens(np.stack([statistics.q01, statistics.q99])).numpy()
    assert (extremes[0, :7] == policy.action_tokenizer.vocab_end - 1).all()
    assert (extremes[1, :7] <= policy.action_tokenizer.action_token_begin + 1).all()


def test_shuffling_covers_every_step_once_per_epoch() -> None:
    batches = sft_batches(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_bad_settings_are_named(tmp_path) -> None:
    dataset = synthetic_dataset()
    policy = build_policy(SMALL, LORA, seed=0)
    common = dict(batch_size=4, learning_rate=1e-3, seed=0, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="epochs=0"):
        run_sft(policy, dataset, epochs=0, statistics=statistics_of(dataset), **common)
    wrong = ActionStatistics.from_actions(dataset.actions[:, :7])
    with pytest.raises(ValueError, match="7 action dims"):
        run_sft(policy, dataset, epochs=1, statistics=wrong, **common)


def coordinate_images(count: int, size: int) -> np.ndarray:
    """Images whose channel 0 holds the pixel's row and channel 1 its column."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return np.repeat(image[None], count, axis=0)


def test_random_shift_moves_each_image_by_at_most_k_pixels() -> None:
    size, shift = 16, 3
    images = coordinate_images(200, size)
    shifted = random_shift(images, shift, np.random.default_rng(0))
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    offsets = []
    for image in shifted:
        dy, dx = int(image[shift, 0, 0]) - shift, int(image[0, shift, 1]) - shift
        assert max(abs(dy), abs(dx)) <= shift
        # the whole image is the original moved by (dy, dx), edges replicated
        expected_rows = np.clip(np.arange(size) + dy, 0, size - 1)
        expected_cols = np.clip(np.arange(size) + dx, 0, size - 1)
        np.testing.assert_array_equal(image[:, :, 0], np.repeat(expected_rows[:, None], size, 1))
        np.testing.assert_array_equal(image[:, :, 1], np.repeat(expected_cols[None, :], size, 0))
        assert (image[:, :, 2] == 7).all()
        offsets.append((dy, dx))
    # drawn per sample, over the whole range
    assert {dy for dy, _ in offsets} == set(range(-shift, shift + 1))
    assert {dx for _, dx in offsets} == set(range(-shift, shift + 1))


def test_random_shift_of_zero_is_the_identity_and_draws_nothing() -> None:
    images = synthetic_dataset().images
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert random_shift(images, 0, rng) is images
    assert rng.bit_generator.state == state


def test_random_shift_is_reproducible_from_the_seed() -> None:
    images = synthetic_dataset().images
    first = random_shift(images, 4, augment_rng(3))
    np.testing.assert_array_equal(first, random_shift(images, 4, augment_rng(3)))
    assert not np.array_equal(first, random_shift(images, 4, augment_rng(4)))


def sft_losses(tmp_path: Path, name: str, **extra) -> list[float]:
    dataset = synthetic_dataset(num_steps=6)
    summary = run_sft(
        build_policy(SMALL, LORA, seed=1), dataset, epochs=2, batch_size=4, learning_rate=1e-3,
        seed=7, out_dir=tmp_path / name, statistics=statistics_of(dataset), progress=False, **extra,
    )  # fmt: skip
    return summary["epoch_losses"]


def test_augmented_sft_is_seeded_and_zero_shift_is_todays_sft(tmp_path) -> None:
    plain = sft_losses(tmp_path, "plain")
    assert sft_losses(tmp_path, "zero", augment_shift=0) == plain
    shifted = sft_losses(tmp_path, "shifted", augment_shift=4)
    assert shifted != plain
    assert sft_losses(tmp_path, "again", augment_shift=4) == shifted


def test_too_large_a_shift_is_refused(tmp_path) -> None:
    dataset = synthetic_dataset()  # 32-pixel images
    with pytest.raises(ValueError, match="augment_shift=16 is invalid: use 0 .* up to 15"):
        run_sft(build_policy(SMALL, LORA, seed=0), dataset, epochs=1, batch_size=4,
                learning_rate=1e-3, seed=0, out_dir=tmp_path, augment_shift=16, progress=False)  # fmt: skip


def test_heldout_loss_is_the_mean_loss_per_sample_without_gradient() -> None:
    dataset = synthetic_dataset(num_steps=7)
    policy = build_policy(SMALL, LORA, seed=0)
    set_action_statistics(policy, statistics_of(dataset))
    policy.train()
    with torch.no_grad():
        policy.eval()
        whole = policy.sft_loss(
            dataset.images, dataset.instructions, policy.actions_to_tokens(dataset.actions)
        ).item()
        policy.train()
    assert heldout_loss(policy, dataset, batch_size=3) == pytest.approx(whole, rel=1e-5)
    assert not policy.training


def test_heldout_loss_with_other_instructions_scores_those_instructions() -> None:
    dataset = synthetic_dataset(num_steps=7)
    policy = build_policy(SMALL, LORA, seed=0)
    set_action_statistics(policy, statistics_of(dataset))
    other = ["put the green cube on the red plate"] * len(dataset)
    with torch.no_grad():
        wanted = policy.sft_loss(
            dataset.images, other, policy.actions_to_tokens(dataset.actions)
        ).item()
    assert heldout_loss(policy, dataset, 3, other) == pytest.approx(wanted, rel=1e-5)
    assert heldout_loss(policy, dataset, 3, other) != pytest.approx(
        heldout_loss(policy, dataset, 3), rel=1e-6
    )
    with pytest.raises(ValueError, match="got 2 instructions for 7 steps"):
        heldout_loss(policy, dataset, 3, other[:2])


def test_warm_start_on_collected_demonstrations(tmp_path) -> None:
    """Collect -> load -> SFT -> reload: the checkpoint carries the dataset's statistics."""
    demos = load_demonstrations(
        collect_demonstrations(1, 0, tmp_path / "demos", image_size=32, progress=False)
    )
    summary = run_sft(
        build_policy(SMALL, LORA, seed=0),
        demos,
        epochs=1,
        batch_size=16,
        learning_rate=1e-3,
        seed=0,
        out_dir=tmp_path / "sft",
        progress=False,
    )
    assert summary["num_transitions"] == len(demos) and summary["num_episodes"] == 1
    reloaded = HFVLAPolicy.from_checkpoint(tmp_path / "sft")
    assert reloaded.unnorm_key == STATISTICS_KEY
    np.testing.assert_array_equal(reloaded.statistics.q99, demos.statistics.q99)
    np.testing.assert_array_equal(reloaded.statistics.mask, demos.statistics.mask)


def trained_weights(tmp_path: Path, name: str, epochs: int, lr_schedule: str) -> dict[str, torch.Tensor]:
    dataset = synthetic_dataset(num_steps=8)
    policy = build_policy(SMALL, LORA, seed=1)
    summary = run_sft(policy, dataset, epochs=epochs, batch_size=8, learning_rate=3e-3, seed=0,
                      out_dir=tmp_path / name, statistics=statistics_of(dataset),
                      lr_schedule=lr_schedule, progress=False)  # fmt: skip
    assert summary["lr_schedule"] == lr_schedule
    return policy.trainable_state_dict()


def test_cosine_schedule_starts_at_the_learning_rate_then_anneals(tmp_path) -> None:
    # one step: the first step takes the full learning rate either way
    one_constant = trained_weights(tmp_path, "c1", 1, "constant")
    one_cosine = trained_weights(tmp_path, "k1", 1, "cosine")
    assert all(torch.equal(one_constant[k], one_cosine[k]) for k in one_constant)
    # three steps: the cosine run's later steps are smaller, so the weights differ
    three_constant = trained_weights(tmp_path, "c3", 3, "constant")
    three_cosine = trained_weights(tmp_path, "k3", 3, "cosine")
    assert not all(torch.equal(three_constant[k], three_cosine[k]) for k in three_constant)


def test_cosine_schedule_reaches_zero_after_the_last_step() -> None:
    dataset = synthetic_dataset(num_steps=8)
    policy = build_policy(SMALL, LORA, seed=1)
    set_action_statistics(policy, statistics_of(dataset))
    loop = _SFTEpochs(policy, dataset, policy.actions_to_tokens(dataset.actions), 4, 1e-3, 1.0, 0, 0)
    loop.anneal(4)
    rates = []
    for _ in range(2):
        for batch in sft_batches(len(dataset), 4, loop.generator):
            rates.append(loop.optimizer.param_groups[0]["lr"])
            loop._step(batch, 1)
    assert rates[0] == pytest.approx(1e-3) and rates[2] == pytest.approx(5e-4)
    assert rates == sorted(rates, reverse=True)
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_unknown_lr_schedule_is_named(tmp_path) -> None:
    dataset = synthetic_dataset()
    with pytest.raises(ValueError, match="lr_schedule='linear' is unknown: use one of constant, cosine"):
        run_sft(build_policy(SMALL, LORA, seed=0), dataset, epochs=1, batch_size=4,
                learning_rate=1e-3, seed=0, out_dir=tmp_path, lr_schedule="linear", progress=False)  # fmt: skip


class _Killed(Exception):
    """Stands in for a kill between two epochs."""


def _kill_after(epoch: int):
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:
            raise _Killed

    return on_epoch


@pytest.mark.parametrize(("lora", "schedule"), [(LORA, "cosine"), (None, "constant")],
                         ids=["lora-cosine", "full-constant"])
def test_killed_sft_resumes_to_the_uninterrupted_result(tmp_path, lora, schedule) -> None:
    """Killed after epoch 2 of 3 and resumed with a fresh policy: the same weights, losses and
    shuffles as one uninterrupted call (shift augmentation and the schedule included)."""
    dataset = synthetic_dataset(num_steps=10)
    common = dict(epochs=3, batch_size=4, learning_rate=2e-3, seed=5, augment_shift=2,
                  lr_schedule=schedule, statistics=statistics_of(dataset), progress=False)
    straight = build_policy(SMALL, lora, seed=1)
    whole = run_sft(straight, dataset, out_dir=tmp_path / "straight", **common)

    state_file = tmp_path / "resumed" / "sft_state.pt"
    with pytest.raises(_Killed):
        run_sft(build_policy(SMALL, lora, seed=1), dataset, out_dir=tmp_path / "resumed",
                state_file=state_file, on_epoch=_kill_after(2), **common)
    assert state_file.is_file() and not (tmp_path / "resumed" / SFT_METRICS_FILE).exists()
    resumed_policy = build_policy(SMALL, lora, seed=1)  # a new process: fresh weights
    seen = []
    resumed = run_sft(resumed_policy, dataset, out_dir=tmp_path / "resumed",
                      state_file=state_file, on_epoch=seen.append, **common)

    assert [r["epoch"] for r in seen] == [3]  # only the missing epoch ran
    assert resumed["resumed_after_epoch"] == 2
    assert resumed["epoch_losses"] == whole["epoch_losses"]
    a, b = straight.trainable_state_dict(), resumed_policy.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not state_file.exists()  # finished: the state is gone, the checkpoint is there
    assert json.loads((tmp_path / "resumed" / SFT_METRICS_FILE).read_text())["epochs"] == 3


def test_resume_file_from_other_settings_or_corrupt_is_refused(tmp_path) -> None:
    dataset = synthetic_dataset(num_steps=6)
    common = dict(batch_size=4, seed=0, statistics=statistics_of(dataset), progress=False,
                  out_dir=tmp_path / "sft", state_file=tmp_path / "sft" / "sft_state.pt")
    with pytest.raises(_Killed):
        run_sft(build_policy(SMALL, LORA, seed=0), dataset, epochs=2, learning_rate=1e-3,
                on_epoch=_kill_after(1), **common)
    saved = (tmp_path / "sft" / "sft_state.pt").read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(learning_rate 0.001 -> 0.002\)") as err:
        run_sft(build_policy(SMALL, LORA, seed=0), dataset, epochs=2, learning_rate=2e-3, **common)
    assert "\n" not in str(err.value) and "delete it" in str(err.value)
    with pytest.raises(ValueError, match="another model"):
        run_sft(build_policy(SMALL, None, seed=0), dataset, epochs=2, learning_rate=1e-3, **common)
    torch.save({"settings": {}, "code": Path("pickled-object")}, tmp_path / "sft" / "sft_state.pt")
    with pytest.raises(ValueError, match="cannot be read"):  # weights_only: no pickled objects
        run_sft(build_policy(SMALL, LORA, seed=0), dataset, epochs=2, learning_rate=1e-3, **common)
    (tmp_path / "sft" / "sft_state.pt").write_bytes(saved[: len(saved) // 2])
    with pytest.raises(ValueError, match="cannot be read .*delete it"):
        run_sft(build_policy(SMALL, LORA, seed=0), dataset, epochs=2, learning_rate=1e-3, **common)
