"""hypervisor.cpr.blackout_seconds: from the first VM stopped to the last VM back."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.filter.blackout_seconds import FilterModule, blackout_seconds


@pytest.mark.parametrize("vms, expected", [
    ([], None),
    # One VM: its own downtime.
    ([{"paused_at": 1000.0, "downtime_seconds": 19.1}], 19.1),
    # The first pause to the last VM back, not the longest downtime: 1000.0 to 1021.0.
    ([{"paused_at": 1000.0, "downtime_seconds": 20.0}, {"paused_at": 1000.5, "downtime_seconds": 20.5}], 21.0),
    # A VM back first can still be the one that stopped first.
    ([{"paused_at": 1000.0, "downtime_seconds": 1.0}, {"paused_at": 1002.0, "downtime_seconds": 3.0}], 5.0),
    # Rounded to milliseconds.
    ([{"paused_at": 1000.0, "downtime_seconds": 1.23456}], 1.235),
    # Integers count; VMs without both numbers are left out (null, missing, a bool is not a number).
    ([{"paused_at": 1000, "downtime_seconds": 2}, {"paused_at": None, "downtime_seconds": 50.0},
      {"name": "x"}, {"paused_at": 900.0, "downtime_seconds": True}], 2),
    # None has them.
    ([{"paused_at": None, "downtime_seconds": 1.0}], None),
])
def test_blackout_seconds(vms, expected):
    assert blackout_seconds(vms) == expected


def test_registered_as_blackout_seconds():
    assert FilterModule().filters() == {"blackout_seconds": blackout_seconds}
