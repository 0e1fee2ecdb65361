"""scripts/compare_metrics.py: the bit-identical check of two runs' metrics.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_metrics.py"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_timing_keys_are_left_out_and_values_are_compared(tmp_path):
    base = {"update": 1, "ppo/approx_kl": 0.0123, "train/success_rate": 0.5}
    a = _write(tmp_path / "a.jsonl", [{**base, "time_s": 1.0, "perf/rollout_s": 2.0}])
    b = _write(tmp_path / "b.jsonl", [{**base, "time_s": 9.0, "perf/rollout_s": 7.0}])
    same = _run(a, b)
    assert same.returncode == 0 and same.stdout.strip().endswith("IDENTICAL")

    c = _write(tmp_path / "c.jsonl", [{**base, "ppo/approx_kl": 0.0124, "time_s": 1.0}])
    changed = _run(a, c)
    assert changed.returncode == 1
    assert "record 0 ppo/approx_kl: 0.0123 != 0.0124" in changed.stdout

    shorter = _run(a, _write(tmp_path / "d.jsonl", []))
    assert shorter.returncode == 1 and "1 records against 0" in shorter.stdout
