"""hypervisor.cpr.rollout_window: inside the maintenance window or not, and when it closes or opens next."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hypervisor.cpr.plugins.filter.rollout_window import FilterModule, parse_days, rollout_window

NIGHTS = {"days": "mon-fri", "start": "22:00", "end": "05:00", "timezone": "Europe/Berlin"}
OFFICE = {"days": ["Monday", "tue", "WED"], "start": "09:00", "end": "17:30", "timezone": "UTC"}


@pytest.mark.parametrize("window, now, is_open, boundary", [
    # No window: always open.
    ({}, "2026-11-28T12:00:00Z", True, None),
    (None, 1796051565.5, True, None),
    # A night window belongs to the day it opens on: Friday 22:00 to Saturday 05:00 (CET is UTC+1 in November).
    (NIGHTS, "2026-11-27T21:00:00Z", True, "2026-11-28T05:00:00+01:00"),
    (NIGHTS, "2026-11-28T03:59:59Z", True, "2026-11-28T05:00:00+01:00"),
    # Saturday 05:00 local: closed, and no window opens on the weekend: next Monday 22:00.
    (NIGHTS, "2026-11-28T04:00:00Z", False, "2026-11-30T22:00:00+01:00"),
    # Monday 04:00 local: Sunday's night is not in the window (sun is not a day of it).
    (NIGHTS, "2026-11-30T03:00:00+00:00", False, "2026-11-30T22:00:00+01:00"),
    # Tuesday 01:00 local: Monday's night.
    (NIGHTS, "2026-12-01T01:00:00+01:00", True, "2026-12-01T05:00:00+01:00"),
    # The opening moment is inside, the closing one outside.
    (NIGHTS, "2026-11-30T22:00:00+01:00", True, "2026-12-01T05:00:00+01:00"),
    (OFFICE, "2026-11-30T17:30:00Z", False, "2026-12-01T09:00:00+00:00"),
    # Wednesday after hours: next Monday.
    (OFFICE, "2026-12-02T18:00:00Z", False, "2026-12-07T09:00:00+00:00"),
    # Seconds since the epoch (2026-11-30 10:00 UTC), as the playbook passes its clock.
    (OFFICE, 1796032800, True, "2026-11-30T17:30:00+00:00"),
    (OFFICE, "1796032800.25", True, "2026-11-30T17:30:00+00:00"),
    # Another offset than the window's: the same moment.
    (OFFICE, "2026-11-30T11:00:00+02:00", True, "2026-11-30T17:30:00+00:00"),
    # Until midnight, with seconds.
    ({"start": "23:59:30", "end": "24:00"}, "2026-11-30T23:59:45Z", True, "2026-12-01T00:00:00+00:00"),
    ({"start": "23:59:30", "end": "24:00"}, "2026-11-30T23:59:29Z", False, "2026-11-30T23:59:30+00:00"),
    # End equal to start: 24 hours from the start, on the days given.
    ({"days": "sat", "start": "06:00", "end": "06:00"}, "2026-11-29T05:59:00Z", True, "2026-11-29T06:00:00+00:00"),
    ({"days": "sat", "start": "06:00", "end": "06:00"}, "2026-11-29T06:00:00Z", False, "2026-12-05T06:00:00+00:00"),
    # A range across the week's end: fri-mon.
    ({"days": "fri-mon", "start": "00:00", "end": "24:00"}, "2026-12-01T12:00:00Z", False, "2026-12-04T00:00:00+00:00"),
    # Daylight saving time: Europe/Berlin goes to CEST on 2027-03-28; the window's times are local times.
    (NIGHTS, "2027-03-29T20:30:00Z", True, "2027-03-30T05:00:00+02:00"),
    (NIGHTS, "2027-03-29T19:30:00Z", False, "2027-03-29T22:00:00+02:00"),
])
def test_rollout_window(window, now, is_open, boundary):
    state = rollout_window(window, now)
    assert state["open"] is is_open
    assert (state["closes_at"] if is_open else state["opens_at"]) == boundary
    assert state[("opens_at" if is_open else "closes_at")] is None


def test_what_it_says():
    state = rollout_window(NIGHTS, "2026-11-28T04:00:00Z")
    assert state == {
        "open": False, "now": "2026-11-28T05:00:00+01:00", "opens_at": "2026-11-30T22:00:00+01:00", "closes_at": None,
        "timezone": "Europe/Berlin", "window": "mon,tue,wed,thu,fri 22:00-05:00 Europe/Berlin",
        "message": "outside the window (mon,tue,wed,thu,fri 22:00-05:00 Europe/Berlin) at Sat 2026-11-28 05:00 CET; "
                   "it opens next at Mon 2026-11-30 22:00 CET"}
    state = rollout_window({"start": "23:59:30", "end": "24:00"}, "2026-11-30T23:59:45Z")
    assert state["message"] == "inside the window (every day 23:59:30-24:00 UTC) until Tue 2026-12-01 00:00 UTC"


@pytest.mark.parametrize("days, expected", [
    (None, [0, 1, 2, 3, 4, 5, 6]),
    ("", [0, 1, 2, 3, 4, 5, 6]),
    ("mon-fri", [0, 1, 2, 3, 4]),
    ("sat, sun", [5, 6]),
    (["Friday", "mon"], [0, 4]),
    ("fri-mon", [0, 4, 5, 6]),
    ("tue-tue", [1]),
])
def test_parse_days(days, expected):
    assert parse_days(days) == expected


@pytest.mark.parametrize("window, now, message", [
    ({"days": "funday"}, 0, "'funday' is not a day"),
    ({"days": "mo"}, 0, "'mo' is not a day"),
    ({"days": [1]}, 0, "1 is not a day"),
    ({"start": "25:00"}, 0, "start '25:00' is not a time of day"),
    ({"end": "9am"}, 0, "end '9am' is not a time of day"),
    ({"start": "24:00"}, 0, "start 24:00 is not a time a window can open at"),
    ({"timezone": "Mars/Olympus"}, 0, "unknown time zone 'Mars/Olympus'"),
    ({"tz": "UTC"}, 0, "unknown keys ['tz']"),
    ("22:00-05:00", 0, "must be a dictionary"),
    ({"start": "22:00"}, "2026-11-28T04:00:00", "has no time zone offset"),
    ({"start": "22:00"}, "tonight", "'tonight' is not a time"),
])
def test_bad_input_is_named(window, now, message):
    with pytest.raises(AnsibleFilterError) as error:
        rollout_window(window, now)
    assert message in str(error.value)


def test_registered_as_rollout_window():
    assert FilterModule().filters() == {"rollout_window": rollout_window}
