"""The fault suite's fast scenarios that need no PostgreSQL server, run as CI runs them: the real
`tools/fault_suite.py` in a subprocess, every row of its report must hold.

10-bad-inputs: each bad store, size, folder or search-space value is one `error:` line naming the key
or URL, within seconds, creating nothing (the database-that-does-not-exist case also holds without a
server: the line then says the connection failed). Row 3-sigterm is what
tests/test_sweep.py::test_sigterm_stops_in_one_line_and_retry_failed_reruns_the_trial checks; the other
scenarios (PostgreSQL, a stopped mlflow server, four sweepers, a killed packed worker, a torn
journal — tests/test_journal.py covers it in CI —, a full disk — tests/test_full_disk.py) run with `.venv/bin/python tools/fault_suite.py`; docs/fault_suite.md has the last table.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sweep  # every test here runs a sweep (make test-fast skips them)

ROOT = Path(__file__).resolve().parent.parent


def test_the_bad_input_scenarios_hold(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fault_suite.py"), "--fast", "--only", "10",
         "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "fault_suite.json").read_text())
    rows = report["rows"]
    assert {r["scenario"].split(":")[0] for r in rows} == {"10-bad-inputs"}
    assert len(rows) == 13  # thirteen bad inputs
    failing = [f"{r['scenario']}: {r['observed']}" for r in rows if not r["holds"]]
    assert not failing, "\n".join(failing)
