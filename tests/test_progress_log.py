"""Training output outside a terminal: one plain progress line every log_interval updates."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_OVERRIDES
from vla_rl_lib.config import apply_overrides, load_template, save_config
from vla_rl_lib.training.progress_log import ProgressLog, format_duration

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(
    r"^\[vla-rl\] update (\d+)/(\d+) \| env steps (\d+) \| train success \d\.\d\d \(mean of \d+\) "
    r"\| val (-|\d\.\d\d \[\d\.\d\d, \d\.\d\d\] @\d+) \| test (-|\d\.\d\d \[\d\.\d\d, \d\.\d\d\] @\d+) "
    r"\| approx KL (-|[-\d.e]+) "
    r"\| \d+ env steps/s \| elapsed \S+ \| ETA \S+$"
)


def _record(update: int, success: float, kl: float = 0.01) -> dict:
    return {"update": update, "env_steps": 100 * update, "train/success_rate": success,
            "ppo/approx_kl": kl}  # fmt: skip


def test_one_line_every_interval_and_on_the_last_update():
    clock = iter(float(t) for t in range(100))
    out = io.StringIO()
    log = ProgressLog(out, total=5, interval=2, clock=lambda: next(clock))
    log.evaluated({"update": 0, "val/success": 0.5, "val/success_low": 0.2,
                   "val/success_high": 0.8, "test/success": 0.25, "test/success_low": 0.1,
                   "test/success_high": 0.6})  # fmt: skip
    lines = [log.update(_record(u, s)) for u, s in zip(range(1, 6), (0, 1, 1, 0, 1), strict=True)]
    assert [line is not None for line in lines] == [False, True, False, True, True]
    written = out.getvalue().splitlines()
    assert written == [line for line in lines if line]
    assert all(LINE.match(line) for line in written), written
    assert "update 4/5 | env steps 400 | train success 0.50 (mean of 4)" in written[1]
    assert "val 0.50 [0.20, 0.80] @0 | test 0.25 [0.10, 0.60] @0" in written[1]
    # clock ticks once per line: 100 env steps a second between lines 2 and 4 ... and the ETA
    # is one update at the mean pace so far (4 updates in 2 s)
    assert "200 env steps/s" in written[1] and "ETA 0s" in written[1]


def test_max_minutes_caps_the_eta_and_durations_read_well():
    times = iter([0.0, 60.0])
    out = io.StringIO()
    log = ProgressLog(out, total=1000, interval=1, max_minutes=3, clock=lambda: next(times))
    line = log.update(_record(1, 1.0))
    assert "elapsed 1m00s" in line and "ETA 2m00s" in line  # not 999 minutes
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_cli_training_with_stderr_in_a_pipe_prints_the_periodic_line(tmp_path):
    cfg = apply_overrides(
        load_template("fast"),
        {**TINY_OVERRIDES, "num_updates": 4, "log_interval": 2, "eval_interval": 2,
         "output_dir": str(tmp_path / "outputs"), "experiment_name": "piped",
         # a warm start too: it saves and reloads a model, which transformers draws bars for
         "rollout": {**TINY_OVERRIDES["rollout"], "max_steps": 60},  # the expert needs ~42
         "sft": {"num_demos": 2, "epochs": 1, "dataset_dir": str(tmp_path / "demos")}},
    )  # fmt: skip
    save_config(cfg, tmp_path / "piped.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "vla_rl_lib", "train", "--config", str(tmp_path / "piped.yaml")],
        cwd=ROOT, capture_output=True, timeout=600,  # bytes: text mode would turn \r into \n
        env={**os.environ, "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'sim'}{os.pathsep}{ROOT}"},
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("[vla-rl]")]
    assert [LINE.match(line).group(1, 2) for line in lines] == [("2", "4"), ("4", "4")], lines
    assert "| val " in lines[1] and "| test " in lines[1] and "@4" in lines[1]
    # no progress bar redrawing itself into the log
    assert "\r" not in stderr, stderr[:2000]
    (folder,) = [line for line in stderr.splitlines() if line.startswith("run folder: ")]
    assert Path(folder.removeprefix("run folder: ")).parent == tmp_path / "outputs" / "piped"
    last = result.stdout.decode().splitlines()[-1]  # make train ends with test before/after RL
    assert last.startswith("test success (") and "before RL" in last and "(update 4)" in last, last
