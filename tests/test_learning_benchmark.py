"""benchmarks/learning.py: aggregation over seeds, resume planning, the README table and figure
(fast, on a fake result set), and one toy end-to-end run (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import learning

ROOT = Path(__file__).resolve().parent.parent


def fake_run(row: str, seed: int, test: float, ood: float, minutes: float = 10.0) -> dict:
    splits = {s: {"success": ood, "successes": int(ood * 100), "episodes": 100,
                  "wilson95": [0.0, 1.0]} for s in learning.SPLITS if s != "test"}
    splits["test"] = {"success": test, "successes": int(test * 200), "episodes": 200,
                      "wilson95": [0.0, 1.0]}
    splits["val"] = {"success": test, "successes": int(test * 100), "episodes": 100,
                     "wilson95": [0.0, 1.0]}
    run = {"row": row, "seed": seed, "splits": splits, "train_minutes": minutes,
           "env_steps": 1000 * (seed + 1), "config": {}, "overrides": {}}
    if row in learning.RL_ROWS:
        run["curve"] = [{"update": u, "env_steps": 100 * u + seed, "val": test * u / 20,
                         "test": test * u / 20} for u in (0, 10, 20)]
    return run


def fake_runs() -> dict:
    runs = {}
    for seed, (a, c) in enumerate([(0.2, 0.6), (0.3, 0.7), (0.1, 0.8)]):
        runs[f"sft/seed{seed}"] = fake_run("sft", seed, a, a / 2, minutes=5)
        runs[f"ppo/seed{seed}"] = fake_run("ppo", seed, c, c / 2, minutes=40)
    runs["grpo/seed0"] = fake_run("grpo", 0, 0.5, 0.25)
    return runs


def test_summary_means_spreads_and_last_line():
    doc = learning.summarize(fake_runs())
    test = doc["rows"]["ppo"]["splits"]["test"]
    assert test["mean"] == pytest.approx(0.7)
    assert test["std"] == pytest.approx(0.1)  # sample std of 0.6, 0.7, 0.8
    assert (test["min"], test["max"], test["n_seeds"]) == (0.6, 0.8, 3)
    assert doc["rows"]["grpo"]["splits"]["test"]["std"] == 0.0  # one seed
    s = doc["routes"]["ppo"]
    assert s["gain_points"] == pytest.approx(50.0)
    assert s["rl_ood"] == pytest.approx(0.35) and s["sft_ood"] == pytest.approx(0.1)
    assert s["minutes_per_seed"] == pytest.approx(45.0) and s["seeds"] == 3
    assert learning.summary_line(s) == ("sft_test=0.200 rl_test=0.700 gain_points=50.0 "
                                        "sft_ood=0.100 rl_ood=0.350 seeds=3 minutes_per_seed=45.0")


def test_budget_minutes_count_the_demo_collection():
    runs = fake_runs()
    for seed in range(3):  # SFT rows record demo collection apart from SFT's own minutes
        runs[f"sft/seed{seed}"]["warm_start"] = {"demo_seconds": 120.0, "seconds": 300.0}
    doc = learning.summarize(runs)
    assert doc["routes"]["ppo"]["minutes_per_seed"] == pytest.approx(47.0)  # 2 + 5 + 40
    assert doc["rows"]["sft"]["train_minutes"]["mean"] == pytest.approx(7.0)
    assert doc["rows"]["ppo"]["train_minutes"]["mean"] == pytest.approx(40.0)


def test_interrupted_sft_needs_resume_and_a_finished_one_is_reused(tmp_path):
    partial = tmp_path / "sft_seed1" / "sft.partial"
    partial.mkdir(parents=True)
    with pytest.raises(learning.LearningError, match=r"interrupted .*pass --resume") as err:
        learning.ensure_sft("sft", 1, {}, tmp_path, resume=False)
    assert "\n" not in str(err.value) and partial.is_dir()  # nothing deleted
    done = tmp_path / "sft_seed2" / "sft"
    done.mkdir(parents=True)
    (done / "warm_start.json").write_text('{"seconds": 1.0}')
    assert learning.ensure_sft("sft", 2, {}, tmp_path, resume=False) == {"seconds": 1.0}


def test_summary_line_without_an_rl_row_says_not_available():
    runs = {"sft/seed0": fake_run("sft", 0, 0.2, 0.1)}
    line = learning.summary_line(learning.summarize(runs)["routes"]["ppo"])
    assert "rl_test=n/a" in line and "seeds=0" in line and "sft_test=0.200" in line


def test_last_line_reports_the_headline_route_over_matched_seeds():
    """The last line is row (b) -> row (g); its SFT side counts only the seeds RL has run."""
    runs = {f"sft_more/seed{s}": fake_run("sft_more", s, t, t / 2, minutes=60)
            for s, t in enumerate((0.2, 0.3, 0.7))}
    runs.update({f"ppo_short/seed{s}": fake_run("ppo_short", s, t, t / 2, minutes=25)
                 for s, t in enumerate((0.6, 0.8))})
    runs["ppo/seed0"] = fake_run("ppo", 0, 0.9, 0.5)  # another route: not in the last line
    doc = learning.summarize(runs)
    s = doc["summary"]
    assert s == doc["routes"][learning.HEADLINE_RL_ROW] and s["route"] == "sft_more -> ppo_short"
    assert s["sft_test"] == pytest.approx(0.25) and s["rl_test"] == pytest.approx(0.7)
    assert s["gain_points"] == pytest.approx(45.0) and s["seeds"] == 2
    assert s["minutes_per_seed"] == pytest.approx(85.0)
    assert math.isnan(doc["routes"]["ppo"]["sft_test"])  # no row (a) seed to compare against


def test_record_run_keeps_earlier_runs_and_recomputes(tmp_path):
    results = tmp_path / "results" / "learning.json"
    for run in fake_runs().values():
        doc = learning.record_run(results, run)
    again = json.loads(results.read_text())
    assert set(again["runs"]) == set(fake_runs()) == set(doc["runs"])
    assert again["rows"]["sft"]["splits"]["test"]["mean"] == pytest.approx(0.2)
    assert again["git_commit"]
    results.write_text("{not json")
    with pytest.raises(learning.LearningError, match="not valid JSON"):
        learning.record_run(results, fake_run("sft", 5, 0.1, 0.1))
    assert results.read_text() == "{not json"  # nothing written over it


def test_plan_skips_finished_runs_and_asks_for_resume(tmp_path):
    runs = {"ppo/seed0": fake_run("ppo", 0, 0.5, 0.2)}
    assert learning.plan_run("ppo", 0, runs, tmp_path, resume=False) == "skip"
    assert learning.plan_run("ppo", 1, runs, tmp_path, resume=False) == "start"
    assert learning.plan_run("sft", 1, runs, tmp_path, resume=False) == "start"
    (tmp_path / "ppo_seed1" / "20261130-150000").mkdir(parents=True)  # a run folder
    with pytest.raises(learning.LearningError, match="--resume"):
        learning.plan_run("ppo", 1, runs, tmp_path, resume=False)
    assert learning.plan_run("ppo", 1, runs, tmp_path, resume=True) == "resume"


def test_run_overrides_give_each_seed_its_own_demos_and_row_b_five_times_more(tmp_path):
    a0 = learning.run_overrides("sft", 0, {}, tmp_path)
    a1 = learning.run_overrides("sft", 1, {}, tmp_path)
    b1 = learning.run_overrides("sft_more", 1, {"sft.num_demos": 7}, tmp_path)
    assert a1["sft.demo_seed"] - a0["sft.demo_seed"] == learning.DEMO_SEED_STRIDE
    assert a0["sft.num_demos"] * learning.SFT_MORE_FACTOR <= learning.DEMO_SEED_STRIDE
    assert b1["sft.num_demos"] == 35 and b1["sft.demo_seed"] == a1["sft.demo_seed"]
    assert b1["sft.epochs"] == learning.SFT_MORE_PASSES < a0["sft.epochs"]
    h1 = learning.run_overrides("sft_match", 1, {}, tmp_path)  # (b)'s demos and 1,200 more
    assert h1["sft.num_demos"] == 6200 and h1["sft.demo_seed"] == b1["sft.demo_seed"]
    assert learning.run_overrides("sft_match", 1, {"sft.num_demos": 10}, tmp_path)["sft.num_demos"] == 62
    assert a0["rollout.env_id"] == "PickPlace-CRANE-X7" and a0["rollout.max_steps"] >= 100
    cfg, _ = learning.build_config("grpo", 2, {}, tmp_path)
    assert cfg.ppo.algorithm == "grpo" and cfg.seed == 2


def test_each_rl_row_starts_from_its_sft_row(tmp_path, monkeypatch):
    """(c) and (d) start from row (a)'s policy of the seed, (e), (g) and (i) from row (b)'s."""
    from vla_rl_lib.training import trainer as trainer_module

    assert learning.RL_START == {"ppo": "sft", "grpo": "sft", "ppo_more": "sft_more",
                                 "ppo_short": "sft_more", "grpo_short": "sft_more"}
    ensured, built = [], []

    class Stop(Exception):
        pass

    class FakeTrainer:  # records the config the RL run would train with, then stops
        def __init__(self, cfg, **_kwargs):
            built.append(cfg)
            raise Stop

    monkeypatch.setattr(learning, "ensure_sft", lambda row, seed, *a, **k: ensured.append((row, seed)))
    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    for row in learning.RL_ROWS:
        with pytest.raises(Stop):
            learning.run_rl_row(row, 1, {}, tmp_path, False, 2, 1, "best")
    assert ensured == [("sft", 1), ("sft", 1), ("sft_more", 1), ("sft_more", 1), ("sft_more", 1)]
    assert [c.sft_checkpoint for c in built] == [
        str(tmp_path / "sft_seed1" / "sft"), str(tmp_path / "sft_seed1" / "sft"),
        str(tmp_path / "sft_more_seed1" / "sft"), str(tmp_path / "sft_more_seed1" / "sft"),
        str(tmp_path / "sft_more_seed1" / "sft")]
    assert [c.ppo.algorithm for c in built] == ["ppo", "grpo", "ppo", "ppo", "grpo"]
    assert built[2].sft.num_demos == learning.SFT_MORE_FACTOR * built[0].sft.num_demos
    assert built[3].sft.num_demos == built[2].sft.num_demos and built[3].sft.epochs == built[2].sft.epochs
    assert built[3].max_minutes == learning.SHORT_RL_MINUTES < built[2].max_minutes
    assert built[4].max_minutes == built[3].max_minutes and built[4].sft.num_demos == built[3].sft.num_demos


def test_bad_set_is_one_line_error(capsys, tmp_path):
    assert learning.main(["--set", "no_equals_sign", "--results", str(tmp_path / "r.json")]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_table_and_figure_from_the_results(tmp_path):
    results = tmp_path / "learning.json"
    for run in fake_runs().values():
        learning.record_run(results, run)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{learning.TABLE_START}\nold\n{learning.TABLE_END}\n\nafter\n")
    figure = tmp_path / "docs" / "curve.png"
    assert learning.main(["--table", "--results", str(results), "--readme", str(readme),
                          "--figure", str(figure)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("\n\nafter\n")
    table = text.split(learning.TABLE_START)[1].split(learning.TABLE_END)[0]
    lines = [ln for ln in table.splitlines()
             if ln.startswith("| (") and " seed " not in ln and " -> (" not in ln]
    assert [ln.split("|")[1].strip() for ln in lines] == ["(a) SFT", "(c) SFT -> PPO",
                                                        "(d) SFT -> GRPO"]
    assert "0.70 ± 0.10 [0.60, 0.80]" in lines[1] and "0.50 (1 seed)" in lines[2]
    assert "| (a) -> (c) | 3 | 0.200 | 0.700 | +50.0 | 0.100 | 0.350 | 45.0 |" in table
    assert "| (a) -> (d) | 1 | 0.200 | 0.500 | +30.0 |" in table
    assert "Last line, route sft_more -> ppo_short: `sft_test=n/a" in table
    runs = [ln for ln in table.splitlines() if " seed " in ln and ln.startswith("| (")]
    assert [ln.split("|")[1].strip() for ln in runs][:2] == ["(a) SFT seed 0", "(a) SFT seed 1"]
    assert len(runs) == 7 and "| 120/200 [0.00, 1.00] |" in runs[3]  # ppo seed 0's test
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    band = learning.curve_bands(learning.read_results(results)["runs"], "ppo", "val")
    assert band["mean"] == pytest.approx([0.0, 0.35, 0.7]) and band["n_seeds"] == 3
    assert band["env_steps"] == pytest.approx([1.0, 1001.0, 2001.0])
    assert band["low"][-1] == pytest.approx(0.6) and band["high"][-1] == pytest.approx(0.8)


def test_table_needs_the_readme_markers(tmp_path):
    results = tmp_path / "learning.json"
    learning.record_run(results, fake_run("sft", 0, 0.2, 0.1))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(learning.LearningError, match="learning-table"):
        learning.write_table(learning.read_results(results), readme)
    assert readme.read_text() == "no markers\n"


@pytest.mark.slow
def test_learning_end_to_end_toy_size_and_resume_skips(tmp_path):
    results, out = tmp_path / "learning.json", tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--seeds", "0",
           "--rows", "sft", "ppo", "--output-dir", str(out), "--results", str(results),
           "--test-episodes", "2", "--ood-episodes", "1",
           "--set", "sft.num_demos=2", "--set", "sft.epochs=1", "--set", "num_updates=2",
           "--set", "eval_interval=1", "--set", "num_eval_episodes=1", "--set", "max_minutes=null",
           "--set", "rollout.num_parallel_envs=2", "--set", "rollout.num_rollouts_per_update=2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT / "sim"), str(ROOT))), "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(results.read_text())
    assert set(doc["runs"]) == {"sft/seed0", "ppo/seed0"}
    ppo = doc["runs"]["ppo/seed0"]
    assert ppo["splits"]["test"]["episodes"] == 2 and ppo["splits"]["ood_visual"]["episodes"] == 1
    assert ppo["updates"] == 2 and ppo["env_steps"] > 0 and ppo["config"]["ppo"]["algorithm"] == "ppo"
    assert [p["update"] for p in ppo["curve"]] == [0, 1, 2]
    assert ppo["overrides"]["sft_checkpoint"] == str(out / "sft_seed0" / "sft")
    assert doc["runs"]["sft/seed0"]["env_steps"] > 0
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("sft_test=")  # the headline route (rows b, g) has no run here
    assert doc["routes"]["ppo"]["seeds"] == 1 and not math.isnan(doc["routes"]["ppo"]["minutes_per_seed"])
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before: skipped") == 2


def test_the_readme_holds_the_table_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(learning.TABLE_START) == 1 and text.count(learning.TABLE_END) == 1
    assert text.index(learning.TABLE_START) < text.index(learning.TABLE_END)


def test_git_commit_is_dirty_for_code_not_for_the_benchmarks_own_outputs(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for name in ("code.py", "README.md", "benchmarks/results/learning.json"):
        (tmp_path / name).write_text("0\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = learning.git_commit(tmp_path)
    assert len(head) == 40
    (tmp_path / "benchmarks/results/learning.json").write_text("1\n")
    (tmp_path / "README.md").write_text("1\n")
    assert learning.git_commit(tmp_path) == head  # the table and results it writes itself
    (tmp_path / "code.py").write_text("1\n")
    assert learning.git_commit(tmp_path) == head + "-dirty"
