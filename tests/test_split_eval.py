"""Model selection over splits: split names, the per-split table, old metrics files, the config key."""

from __future__ import annotations

import json

import pytest

from vla_rl_lib.config import ConfigError, config_from_dict
from vla_rl_lib.metrics import load_metrics
from vla_rl_lib.training.evaluate import (
    EvalResult,
    SplitResults,
    evaluate_checkpoint,
    evaluate_splits,
    reported_only_splits,
    resolve_splits,
)


def test_split_names_all_comma_list_and_unknown():
    assert resolve_splits("PickPlace-CRANE-X7", "all")[:3] == ["train", "val", "test"]
    assert len(resolve_splits("PickPlace-CRANE-X7", "all")) == 7
    assert resolve_splits("Lift-CRANE-X7", " val, test,val ") == ["val", "test"]
    assert resolve_splits("Lift-CRANE-X7", ["test"]) == ["test"]
    with pytest.raises(ValueError, match=r"\['ood_visual'\] for Lift-CRANE-X7; available splits: train, val, test"):
        resolve_splits("Lift-CRANE-X7", "val,ood_visual")
    assert resolve_splits("PickCube-v1", "all") == ["train"]  # a task without named splits


def test_ood_splits_are_the_ones_evaluated_only_at_the_end():
    assert reported_only_splits("PickPlace-CRANE-X7", ["val", "test"]) == [
        "ood_position", "ood_combination", "ood_instruction", "ood_visual"]  # fmt: skip
    assert reported_only_splits("Lift-CRANE-X7", ["val", "test"]) == []


def _result(split: str, successes: int, episodes: int) -> EvalResult:
    return EvalResult(0, successes, episodes, successes / episodes, (0.1, 0.9), [], [], split=split)


def test_split_results_give_one_key_set_and_one_row_per_split():
    table = SplitResults(3, {"val": _result("val", 1, 4), "ood_position": _result("ood_position", 2, 4)})
    assert table.record() == {
        "val/success": 0.25, "val/success_low": 0.1, "val/success_high": 0.9, "val/episodes": 4,
        "ood_position/success": 0.5, "ood_position/success_low": 0.1,
        "ood_position/success_high": 0.9, "ood_position/episodes": 4,
    }  # fmt: skip
    assert [(row["split"], row["successes"]) for row in table.rows()] == [("val", 1), ("ood_position", 2)]
    assert table["val"].success_rate == 0.25 and table.frames is None


def test_split_episodes_play_the_first_seeds_of_one_stream(monkeypatch):
    from vla_rl_lib.training import evaluate

    played = {}

    def fake_policy_eval(collector, seeds, update, temperature, filmed, frame_size, split):
        played[split] = list(seeds)
        return _result(split, 0, len(seeds))

    monkeypatch.setattr(evaluate, "evaluate_policy", fake_policy_eval)
    table = evaluate_splits(lambda split: None, ["val", "test"], [5, 6, 7, 8], episodes={"val": 2})
    assert played == {"val": [5, 6], "test": [5, 6, 7, 8]}
    assert [row["episodes"] for row in table.rows()] == [2, 4]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"split_episodes": {"test": 0}, "splits": "all"}, "each split needs at least 1 episode"),
        ({"split_episodes": {"test": 200}}, "needs splits"),
    ],
)
def test_bad_split_episodes_fail_before_the_model_loads(kwargs, needle, tmp_path, monkeypatch):
    from vla_rl_lib.training import policy_factory

    monkeypatch.setattr(policy_factory, "load_any_checkpoint", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ValueError, match=needle):
        evaluate_checkpoint(tmp_path, num_episodes=10, **kwargs)


def test_old_metrics_files_read_their_eval_keys_as_val(tmp_path):
    lines = [{"update": 0, "env_steps": 0, "eval_success": 0.5, "eval_success_low": 0.2,
              "eval_success_high": 0.8, "eval_episodes": 10},
             {"update": 1, "env_steps": 9, "train/success_rate": 0.25}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    old, train = load_metrics(tmp_path)
    assert old == {"update": 0, "env_steps": 0, "val/success": 0.5, "val/success_low": 0.2,
                   "val/success_high": 0.8, "val/episodes": 10}  # fmt: skip
    assert train == lines[1]


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"eval_splits": ["val", "tset"]}, "['tset'] are not splits of Lift-CRANE-X7"),
        ({"eval_splits": ["test"]}, "must include 'val'"),
        ({"eval_splits": ["val", "ood_visual"]}, "not splits of Lift-CRANE-X7"),
    ],
)
def test_eval_splits_are_checked_when_the_config_loads(settings, needle):
    with pytest.raises(ConfigError, match="eval_splits=") as raised:
        config_from_dict(settings)
    assert needle in str(raised.value)


def test_eval_splits_defaults_and_what_passes():
    assert config_from_dict({}).eval_splits == ["val", "test"]
    pickplace = {"rollout": {"env_id": "PickPlace-CRANE-X7"}, "language_instruction": None}
    assert config_from_dict({**pickplace, "eval_splits": ["val", "ood_visual"]}).eval_splits[1] == "ood_visual"
    assert config_from_dict({"eval_splits": ["test"], "eval_interval": 0}).eval_interval == 0  # nothing chosen


def test_end_of_run_line_gives_test_success_before_and_after_rl():
    from vla_rl_lib.training.trainer import before_after_rl

    def ev(update, split, rate):
        return {"update": update, f"{split}/success": rate, f"{split}/success_low": rate - 0.1,
                f"{split}/success_high": rate + 0.1, f"{split}/episodes": 20}

    records = [ev(0, "test", 0.25) | ev(0, "val", 0.3), {"update": 1, "train/success_rate": 1.0},
               ev(50, "test", 0.5), ev(100, "test", 0.75) | ev(100, "ood_visual", 0.1)]
    assert before_after_rl(records) == (
        "test success (20 greedy episodes): before RL 0.250 [0.150, 0.350] (update 0) -> "
        "after RL 0.750 [0.650, 0.850] (update 100)")
    lift = before_after_rl([ev(0, "train", 0.2), ev(10, "train", 0.4)])  # a task without splits
    assert lift.startswith("train success") and "before RL 0.200" in lift
    assert before_after_rl([ev(10, "test", 0.5)]) is None  # no evaluation at update 0
