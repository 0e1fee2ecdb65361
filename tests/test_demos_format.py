"""The demonstration dataset on disk: columns, meta.json, statistics, seeding, loading, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lift
from vla_rl_lib.sft import DemoDatasetError, collect_demonstrations, load_demonstrations
from vla_rl_lib.sft.demos import (
    DATA_FILE,
    FORMAT_VERSION,
    META_FILE,
    SCHEMA,
    STATISTICS_KEY,
    decode_png,
)

NUM_DEMOS = 3
SEED = 0
SIZE = 32


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "pick"
    return collect_demonstrations(NUM_DEMOS, SEED, out, num_envs=2, image_size=SIZE, progress=False)


@pytest.fixture()
def copy(dataset_dir, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(dataset_dir, tmp_path / "copy")


def test_parquet_columns_and_types(dataset_dir) -> None:
    file = pq.ParquetFile(dataset_dir / DATA_FILE)
    assert file.schema_arrow.equals(SCHEMA)
    assert file.metadata.num_row_groups == NUM_DEMOS  # one row group per episode
    table = file.read()
    columns = table.to_pydict()
    episodes = np.asarray(columns["episode_index"])
    frames = np.asarray(columns["frame_index"])
    success = np.asarray(columns["success"])
    assert sorted(set(episodes.tolist())) == list(range(NUM_DEMOS))
    for episode in range(NUM_DEMOS):
        rows = episodes == episode
        assert frames[rows].tolist() == list(range(rows.sum()))
        assert success[rows].tolist() == [False] * (rows.sum() - 1) + [True]
    assert {len(a) for a in columns["action"]} == {8}
    assert {len(s) for s in columns["state"]} == {9}
    assert set(columns["instruction"]) == {lift.INSTRUCTION}
    assert np.asarray(columns["reward"])[success].tolist() == [1.0] * NUM_DEMOS
    actions = np.asarray(columns["action"])
    assert np.abs(actions).max() <= 1.0
    assert set(np.unique(actions[:, 7])) <= {-1.0, 1.0}  # the gripper is open or closed
    first = decode_png(columns["image"][0])
    assert first.shape == (SIZE, SIZE, 3) and first.dtype == np.uint8 and first.std() > 0


def test_meta_json(dataset_dir) -> None:
    meta = json.loads((dataset_dir / META_FILE).read_text())
    lengths = meta["episode_lengths"]
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["num_episodes"] == len(lengths) == len(meta["episode_seeds"]) == NUM_DEMOS
    assert (
        meta["num_transitions"]
        == sum(lengths)
        == pq.read_metadata(dataset_dir / DATA_FILE).num_rows
    )
    assert meta["num_episodes_attempted"] >= NUM_DEMOS
    assert meta["seed"] == SEED and all(s >= SEED for s in meta["episode_seeds"])
    assert meta["env"]["image_size"] == [SIZE, SIZE]
    assert meta["env"]["control_mode"] == "pd_joint_delta_pos"
    assert meta["fps"] == 10
    assert meta["action"]["dim"] == 8 and meta["action"]["names"][-1] == "gripper"
    assert set(meta["columns"]) == set(SCHEMA.names)


def test_statistics_in_openvla_layout(dataset_dir) -> None:
    stats = json.loads((dataset_dir / "dataset_statistics.json").read_text())
    assert list(stats) == [STATISTICS_KEY]
    entry = stats[STATISTICS_KEY]
    assert set(entry["action"]) == {"q01", "q99", "mean", "std", "min", "max", "mask"}
    assert entry["action"]["mask"] == [True] * 7 + [False]
    actions = np.asarray(pq.read_table(dataset_dir / DATA_FILE).column("action").to_pylist())
    assert entry["num_transitions"] == len(actions)
    assert entry["num_trajectories"] == NUM_DEMOS
    np.testing.assert_allclose(entry["action"]["q01"], np.quantile(actions, 0.01, axis=0))
    np.testing.assert_allclose(entry["action"]["q99"], np.quantile(actions, 0.99, axis=0))


def test_same_seed_same_bytes_whatever_num_envs(dataset_dir, tmp_path) -> None:
    again = collect_demonstrations(
        NUM_DEMOS, SEED, tmp_path / "again", num_envs=1, image_size=SIZE, progress=False
    )
    assert (again / DATA_FILE).read_bytes() == (dataset_dir / DATA_FILE).read_bytes()
    meta_a, meta_b = (json.loads((d / META_FILE).read_text()) for d in (dataset_dir, again))
    meta_a.pop("created_at"), meta_b.pop("created_at")
    assert meta_a == meta_b
    stats = "dataset_statistics.json"
    assert (again / stats).read_bytes() == (dataset_dir / stats).read_bytes()

    other = collect_demonstrations(
        1, SEED + 100, tmp_path / "other", image_size=SIZE, progress=False
    )
    first_other = pq.read_table(other / DATA_FILE).column("action")[0].as_py()
    first_ours = pq.read_table(dataset_dir / DATA_FILE).column("action")[0].as_py()
    assert first_other != first_ours


def test_load_round_trip(dataset_dir) -> None:
    data = load_demonstrations(dataset_dir)
    table = pq.read_table(dataset_dir / DATA_FILE)
    assert len(data) == table.num_rows and data.num_episodes == NUM_DEMOS
    assert data.images.shape == (len(data), SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert data.actions.shape == (len(data), 8) and data.actions.dtype == np.float32
    np.testing.assert_array_equal(
        data.actions, np.asarray(table.column("action").to_pylist(), np.float32)
    )
    np.testing.assert_array_equal(data.images[5], decode_png(table.column("image")[5].as_py()))
    np.testing.assert_array_equal(data.episode_index, table.column("episode_index").to_numpy())
    assert data.instructions == [lift.INSTRUCTION] * len(data)
    np.testing.assert_array_equal(data.statistics.mask, [True] * 7 + [False])


def test_the_first_image_is_what_the_env_shows_at_the_episode_start(dataset_dir) -> None:
    data = load_demonstrations(dataset_dir)
    env = lift.make_env("mujoco", lift.ENV_ID, image_size=SIZE)
    try:
        observation = env.reset(seed=data.meta["episode_seeds"][0])
    finally:
        env.close()
    np.testing.assert_array_equal(data.images[0], observation.image[0])
    np.testing.assert_array_equal(data.states[0], observation.qpos[0])


def test_missing_dataset_and_files_are_named(copy, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no demonstration dataset at .*nowhere"):
        load_demonstrations(tmp_path / "nowhere")
    (copy / DATA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="train.parquet is missing"):
        load_demonstrations(copy)
    (copy / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        load_demonstrations(copy)


def test_corrupt_files_are_named(copy) -> None:
    (copy / "dataset_statistics.json").write_text("{}")
    with pytest.raises(DemoDatasetError, match="dataset_statistics.json is unreadable"):
        load_demonstrations(copy)

    data = copy / DATA_FILE
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DemoDatasetError, match="train.parquet is not a readable Parquet file"):
        load_demonstrations(copy)

    (copy / META_FILE).write_text("{not json")
    with pytest.raises(DemoDatasetError, match="meta.json is not valid JSON"):
        load_demonstrations(copy)


def test_mismatched_files_are_named(copy) -> None:
    meta = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "num_episodes": 99}))
    with pytest.raises(DemoDatasetError, match="different runs"):
        load_demonstrations(copy)
    (copy / META_FILE).write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(DemoDatasetError, match="version 0"):
        load_demonstrations(copy)
    (copy / META_FILE).write_text(json.dumps({**meta, "action": {}}))
    with pytest.raises(DemoDatasetError, match=r"lacks \['action.dim'\]"):
        load_demonstrations(copy)
    (copy / META_FILE).write_text(json.dumps(meta))
    table = pq.read_table(copy / DATA_FILE).drop_columns(["action"])
    pq.write_table(table, copy / DATA_FILE)
    with pytest.raises(DemoDatasetError, match=r"lacks column\(s\) \['action'\]"):
        load_demonstrations(copy)
    table = table.append_column(
        "action", pa.array([[0.0, 1.0]] * table.num_rows, pa.list_(pa.float32()))
    )
    pq.write_table(table, copy / DATA_FILE)
    with pytest.raises(DemoDatasetError, match="lists of 8 floats"):
        load_demonstrations(copy)


def test_existing_dataset_is_kept_unless_overwrite(dataset_dir) -> None:
    with pytest.raises(FileExistsError, match="overwrite=True"):
        collect_demonstrations(1, SEED, dataset_dir, image_size=SIZE, progress=False)


def test_failure_leaves_nothing_behind(tmp_path) -> None:
    out = tmp_path / "never"
    with pytest.raises(RuntimeError, match="solved only 0 of 2 attempts"):
        # Five steps are far too few to pick the cube up.
        collect_demonstrations(
            1, SEED, out, image_size=SIZE, max_episode_steps=5, max_attempts=2, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="num_demos=0"):
        collect_demonstrations(0, SEED, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="held-out start range"):
        collect_demonstrations(1, 2**31, tmp_path / "x", progress=False)
