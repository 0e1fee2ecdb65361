"""Compare two runs' metrics.jsonl value by value, leaving out timing keys.

    python scripts/compare_metrics.py <run A>/metrics.jsonl <run B>/metrics.jsonl

Prints IDENTICAL and exits 0 when every record holds the same keys and values
(``perf/*``, ``time_s``, ``*_s`` and the minutes keys differ run to run and are
left out); otherwise lists the first differences and exits 1. This is how a
refactor is checked to leave training bit-identical for the same seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING = ("time_s", "minutes", "wall_minutes")


def _is_timing(key: str) -> bool:
    return key.startswith("perf/") or key in TIMING or key.endswith("_s") or "cpu_s" in key


def records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if not _is_timing(k)} for row in rows]


def differences(a: list[dict], b: list[dict]) -> list[str]:
    found = [f"{len(a)} records against {len(b)}"] if len(a) != len(b) else []
    for index, (x, y) in enumerate(zip(a, b, strict=False)):  # a length mismatch is reported above
        found += [
            f"record {index} {key}: {x.get(key)!r} != {y.get(key)!r}"
            for key in sorted(set(x) | set(y))
            if x.get(key) != y.get(key)
        ]
    return found


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    found = differences(records(Path(sys.argv[1])), records(Path(sys.argv[2])))
    for line in found[:20]:
        print(line)
    print("IDENTICAL" if not found else f"DIFFERENT ({len(found)} differences)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
