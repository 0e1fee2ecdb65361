"""Print how many tests of a pytest JUnit XML report ran; exit 1 if none did.

    python3 scripts/count_junit.py outputs/ci/backends.xml "backend tests"

Prints one line: ``backend tests: ran=N passed=P failed=F skipped=S``. Standard
library only, so it runs before or without any project venv.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(report: Path) -> dict[str, int]:
    """ran / passed / failed / skipped over every <testsuite> of the report."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {key: sum(int(s.get(key, 0)) for s in suites)
             for key in ("tests", "failures", "errors", "skipped")}
    failed = total["failures"] + total["errors"]
    ran = total["tests"] - total["skipped"]
    return {"ran": ran, "passed": ran - failed, "failed": failed, "skipped": total["skipped"]}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    report, label = Path(argv[1]), argv[2] if len(argv) == 3 else "tests"
    if not report.is_file():
        print(f"{label}: ran=0 (no report at {report}: pytest did not start)")
        return 1
    c = counts(report)
    print(f"{label}: " + " ".join(f"{k}={v}" for k, v in c.items()))
    return 0 if c["ran"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
