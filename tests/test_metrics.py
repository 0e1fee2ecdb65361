"""MetricsWriter, load/truncate round trips, JSON safety and the Wilson interval."""

from __future__ import annotations

import json
import math
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_rl_lib.metrics import (
    MetricsWriter,
    json_safe,
    load_metrics,
    load_runs,
    to_columns,
    wilson_interval,
)


def _write(run_dir, updates, **kwargs):
    with MetricsWriter(run_dir, tensorboard=False, **kwargs) as writer:
        for u in updates:
            writer.log({"update": u, "env_steps": 256 * (u + 1), "train/success_rate": u / 10})


def test_round_trip_keeps_order_and_values(tmp_path):
    _write(tmp_path, range(5))
    records = load_metrics(tmp_path)
    assert [r["update"] for r in records] == [0, 1, 2, 3, 4]
    assert records[3] == {"update": 3, "env_steps": 1024, "train/success_rate": 0.3}
    assert load_metrics(tmp_path / "metrics.jsonl") == records


def test_each_line_is_flushed_before_close(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.log({"update": 0, "loss": 1.5})
    assert load_metrics(tmp_path) == [{"update": 0, "loss": 1.5}]
    writer.close()


def test_json_safety_of_numpy_torch_and_nonfinite(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(
            {
                "update": np.int64(2),
                "a": np.float32(0.5),
                "b": torch.tensor(3.0),
                "c": np.bool_(True),
                "d": float("nan"),
                "e": np.float64("inf"),
                "f": -math.inf,
                "g": torch.tensor([7]),
                "phase": "eval",
            }
        )
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    (record,) = [json.loads(x) for x in line.splitlines()]
    assert record == {
        "update": 2,
        "a": 0.5,
        "b": 3.0,
        "c": True,
        "d": None,
        "e": None,
        "f": None,
        "g": 7,
        "phase": "eval",
    }
    assert type(record["update"]) is int


def test_json_safe_rejects_arrays_with_a_hint():
    with pytest.raises(TypeError, match=r"'rewards'.*\.mean\(\)"):
        json_safe(np.zeros(3), "rewards")


def test_log_requires_update_and_monotonic_updates(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(KeyError, match="update"):
            writer.log({"loss": 1.0})
        writer.log({"update": 3})
        writer.log({"update": 3, "eval_success": 0.5})  # same update twice is fine
        with pytest.raises(ValueError, match="resume_from_update"):
            writer.log({"update": 2})


def test_existing_run_is_not_silently_appended_to(tmp_path):
    _write(tmp_path, range(2))
    with pytest.raises(FileExistsError, match="resume_from_update"):
        MetricsWriter(tmp_path, tensorboard=False)


def test_resume_truncates_after_checkpoint_update(tmp_path):
    _write(tmp_path, range(10))
    _write(tmp_path, range(5, 8), resume_from_update=4)
    assert [r["update"] for r in load_metrics(tmp_path)] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert not list(tmp_path.glob(".metrics.jsonl.*.tmp"))


def test_truncate_after_method_reports_dropped_and_continues(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for u in range(6):
        writer.log({"update": u})
    assert writer.truncate_after(2) == 3
    writer.log({"update": 3, "resumed": True})
    writer.close()
    assert [(r["update"], r.get("resumed")) for r in load_metrics(tmp_path)] == [
        (0, None),
        (1, None),
        (2, None),
        (3, True),
    ]


def test_resume_drops_a_torn_last_line(tmp_path):
    _write(tmp_path, range(3))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"update": 3, "train/succ')  # a crash mid-write
    with pytest.warns(UserWarning, match="incomplete last line"):
        records = load_metrics(tmp_path)
    assert len(records) == 3
    with pytest.warns(UserWarning):
        _write(tmp_path, [3], resume_from_update=2)
    assert [r["update"] for r in load_metrics(tmp_path)] == [0, 1, 2, 3]


def test_corrupt_line_error_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 0}\nnot json\n{"update": 1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: corrupt metrics line"):
        load_metrics(tmp_path)
    path.write_text('{"update": 0}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected a JSON object"):
        load_metrics(path)


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "metrics.jsonl")):
        load_metrics(tmp_path)


def test_to_columns_and_load_runs(tmp_path):
    columns = to_columns([{"update": 0, "a": 1}, {"update": 1, "b": 2}])
    assert columns == {"update": [0, 1], "a": [1, None], "b": [None, 2]}
    assert to_columns([{"a": 1}], ["a", "z"]) == {"a": [1], "z": [None]}

    _write(tmp_path / "seed0" / "run", range(2))
    _write(tmp_path / "seed1" / "run", range(3))
    runs = load_runs([tmp_path / "seed0" / "run", tmp_path / "seed1" / "run"])
    assert {k: len(v) for k, v in runs.items()} == {"seed0/run": 2, "seed1/run": 3}
    assert list(load_runs({"base": tmp_path / "seed0" / "run"})) == ["base"]


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path) as writer:
        for u in range(6):
            writer.log({"update": u, "loss": float(u), "phase": "train", "kl": float("nan")})
    with MetricsWriter(tmp_path, resume_from_update=2) as writer:
        writer.log({"update": 3, "loss": 30.0})

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "kl"}
    loss = {e.step: e.value for e in acc.Scalars("loss")}
    assert loss == {0: 0.0, 1: 1.0, 2: 2.0, 3: 30.0}
    assert all(math.isnan(e.value) for e in acc.Scalars("kl"))


def test_wandb_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[wandb\]"):
        MetricsWriter(tmp_path, tensorboard=False, use_wandb=True)


def test_wandb_run_is_resumed_by_id(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def define_metric(self, *args, **kwargs):
            calls.append(("define_metric", args, kwargs))

        def log(self, data):
            calls.append(("log", data))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    fake = types.SimpleNamespace(
        init=init, util=types.SimpleNamespace(generate_id=lambda: "abc123")
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")  # no key needed

    with MetricsWriter(tmp_path, tensorboard=False, use_wandb=True, wandb_project="p") as w:
        w.log({"update": 0, "x": np.float32(1.0)})
    with MetricsWriter(tmp_path, tensorboard=False, use_wandb=True, resume_from_update=0):
        pass
    inits = [c[1] for c in calls if c[0] == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"]
    assert all(i["resume"] == "allow" for i in inits)
    assert ("log", {"update": 0, "x": 1.0}) in calls


# 4-decimal values: Newcombe (1998), "Two-sided confidence intervals for the single
# proportion", Stat. Med. 17:857, Table II (method 3, Wilson score), plus the 0/10, 5/10, 10/10
# cases a small robot evaluation hits.
@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        (0, 10, (0.0, 0.2775)),
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_interval_known_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="n=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)


def _wandb_offline_history(run_dir: Path) -> list[dict]:
    """The history rows of an offline W&B run, read from its ``.wandb`` file.

    The file is W&B's record log (a LevelDB-style log: a 7-byte header, 32 KiB blocks of
    records with a 7-byte header each, split records in FIRST/MIDDLE/LAST pieces) holding
    ``wandb_internal_pb2.Record`` protobufs; this is what ``wandb sync`` uploads.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, rows = path.read_bytes(), []
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in record.history.item})  # fmt: skip
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
    return rows


def _tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_wandb_offline_for_real(tmp_path, monkeypatch):
    """W&B is a dev dependency: this runs in CI. The offline run holds TensorBoard's scalars."""
    import wandb  # noqa: F401  (never skipped: pip install -e .[dev] installs it)

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    records = [
        {"update": 1, "env_steps": 240, "train/success_rate": 0.25, "ppo/approx_kl": 0.0125},
        {"update": 1, "env_steps": 240, "eval_success": 0.5, "eval_episodes": 4},
        {"update": 2, "env_steps": 470, "train/success_rate": 0.75, "ppo/approx_kl": float("nan")},
    ]
    with MetricsWriter(tmp_path, use_wandb=True, wandb_project="t") as w:
        for record in records:
            w.log(record)
    wandb_rows = _wandb_offline_history(tmp_path)
    assert [row["update"] for row in wandb_rows] == [1, 1, 2]
    from_wandb: dict[str, list[tuple[int, float]]] = {}
    for row in wandb_rows:
        for key, value in row.items():
            if not key.startswith("_") and key != "update" and value is not None:
                from_wandb.setdefault(key, []).append((row["update"], value))
    tensorboard = _tensorboard_scalars(tmp_path)
    nan_kl = tensorboard.pop("ppo/approx_kl")  # TensorBoard keeps the NaN; JSON and W&B hold null
    assert nan_kl[0] == (1, pytest.approx(0.0125)) and math.isnan(nan_kl[1][1])
    assert from_wandb.pop("ppo/approx_kl") == [(1, 0.0125)]
    assert sorted(from_wandb) == sorted(tensorboard)
    for key, points in tensorboard.items():  # TensorBoard stores float32
        assert from_wandb[key] == [(step, pytest.approx(value)) for step, value in points], key
    assert load_metrics(tmp_path)[2] == {**records[2], "ppo/approx_kl": None}


def test_wandb_online_without_a_key_fails_in_one_line_before_anything_runs(
    tiny_config, tmp_path, monkeypatch, capsys
):
    from vla_rl_lib.config import apply_overrides, save_config
    from vla_rl_lib.training.cli import main

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "VLA_RL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.chdir(tmp_path)  # no ./wandb/settings

    def no_network(*args, **kwargs):
        raise AssertionError("the W&B check must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    config = tmp_path / "cfg.yaml"
    save_config(apply_overrides(tiny_config, {"use_wandb": True}), config)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "wandb login" in err and "WANDB_MODE=offline" in err, err
    assert not Path(tiny_config.output_dir).exists()  # nothing built, nothing written
