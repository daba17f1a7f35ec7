"""hypervisor.cpr.phase_spans: the phases of a host's update as spans of time."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.filter.phase_spans import FilterModule, phase_spans


def span(name, started, finished):
    return {"name": name, "started_at": started, "finished_at": finished, "seconds": round(finished - started, 3)}


@pytest.mark.parametrize("marks, end, expected", [
    ([], 10.0, []),
    # One phase lasts until the end.
    ([{"name": "prepare", "started_at": 1.0}], 10.0, [span("prepare", 1.0, 10.0)]),
    # Each until the next begins; integers count; rounded to milliseconds.
    ([{"name": "prepare", "started_at": 1}, {"name": "save", "started_at": 4.00049}, {"name": "reboot", "started_at": 6.5}],
     9.25, [span("prepare", 1.0, 4.0), span("save", 4.0, 6.5), span("reboot", 6.5, 9.25)]),
    # A mark without a time is left out (its time goes to the phase before).
    ([{"name": "prepare", "started_at": 1.0}, {"name": "save", "started_at": None}, {"name": "verify", "started_at": 3.0}],
     5.0, [span("prepare", 1.0, 3.0), span("verify", 3.0, 5.0)]),
    # A clock that went back: never a negative span.
    ([{"name": "prepare", "started_at": 5.0}, {"name": "save", "started_at": 4.0}], 3.0,
     [span("prepare", 5.0, 5.0), span("save", 4.0, 4.0)]),
])
def test_phase_spans(marks, end, expected):
    assert phase_spans(marks, end) == expected


def test_registered_as_phase_spans():
    assert FilterModule().filters() == {"phase_spans": phase_spans}
