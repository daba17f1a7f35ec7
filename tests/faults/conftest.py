"""The fault campaign's table: one row per injected fault, printed at the end of the run."""

import json
import os

import pytest

ROWS = []
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLUMNS = ("fault", "injected at", "outcome", "VMs lost", "state files lost", "re-run finished")


@pytest.fixture
def campaign():
    """record(fault, injected_at, outcome, vms_lost, files_lost, rerun_finished) adds a row."""

    def record(fault, injected_at, outcome, vms_lost, files_lost, rerun_finished):
        ROWS.append(dict(zip(COLUMNS, (fault, injected_at, outcome, vms_lost, files_lost,
                                       "yes" if rerun_finished else "no"))))

    return record


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    widths = [max(len(str(row[c])) for row in ROWS + [dict(zip(COLUMNS, COLUMNS))]) for c in COLUMNS]
    terminalreporter.section("fault campaign")
    for row in [dict(zip(COLUMNS, COLUMNS))] + ROWS:
        terminalreporter.write_line(" | ".join(str(row[c]).ljust(w) for c, w in zip(COLUMNS, widths)))
    output = os.path.join(REPO_ROOT, "tests", "output", "faults.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(ROWS, handle, indent=2)
