"""The benchmark command in its smallest configuration: it runs, and its table and JSON are well formed.

No timing is asserted here: the figures depend on the machine and its load
(docs/benchmarks.md has the figures of a full run).
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks drop the page cache: root only"),
]
ROW_KEYS = {"item", "figure", "ours", "baseline", "unit", "ratio", "goal", "met", "note"}


@pytest.mark.timeout(1500)
def test_quick_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1400, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    data = json.loads(out.read_text())
    assert data["quick"] is True and data["errors"] == {}
    assert {"cpu", "cores", "qemu", "kernel"} <= set(data["machine"])
    assert set(data["sections"]) == {"1", "2", "3", "4", "5", "6", "7"}
    assert data["load"]["all"]["cpu_busy_percent"] >= 0

    rows = data["table"]
    assert {row["item"] for row in rows} == {"1", "2", "3", "4", "5", "6", "7"}
    for row in rows:
        assert set(row) == ROW_KEYS, row
        for key in ("ours", "baseline", "ratio"):
            assert row[key] is None or (isinstance(row[key], (int, float)) and math.isfinite(row[key])), row
        if row["goal"]:
            assert isinstance(row["met"], bool), row
    goals = [row for row in rows if row["goal"]]
    # One goal for 1, two for 2, four for 3 (save and restore, with and without mapped-ram), two for 4, one for 6
    # (libvirt: against libvirt-guests' serial way), three for 7 (against the hand-typed transfer, against the
    # relaunch, 2 VMs against 1).
    assert [row["item"] for row in goals].count("1") == 1
    assert [row["item"] for row in goals].count("2") == 2
    assert [row["item"] for row in goals].count("3") == 4
    assert [row["item"] for row in goals].count("6") == 1
    assert [row["item"] for row in goals].count("7") == 3
    role = [row for row in rows if row["item"] == "4"]
    assert any(row["goal"] for row in role) or any("NOT MEASURED" in row["figure"] for row in role)
    assert all(row["ours"] > 0 for row in rows if row["item"] in ("1", "3", "5", "6", "7"))

    # The printed table is the JSON's.
    assert data["table_text"] in done.stdout
    assert done.stdout.count("\n") >= len(rows) + 2
    # Every QEMU the run started is gone, and so are its work directories.
    assert data["workdirs"] and not [path for path in data["workdirs"] if os.path.exists(path)]
    mine = subprocess.run(["pgrep", "-f", f"guest=bn{data['pid']}[srt][0-9]*,"], capture_output=True, text=True,
                          check=False).stdout
    assert mine.strip() == ""
