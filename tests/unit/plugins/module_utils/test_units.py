"""The systemd services held while their VM is saved: which, and the drop-in that holds them (systemd does not run
here, so the systemctl calls are recorded; a drop-in's effect is systemd's documented ConditionPathExists=)."""

import os

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils import _units
from ansible_collections.hypervisor.cpr.plugins.module_utils._units import Hold, drop_in_path, hold, holdable, release


@pytest.mark.parametrize("unit, held", [
    ("qemu@web1.service", True),
    ("web1-vm.service", True),
    # A unit a restore started: nothing starts it again from a command line.
    ("hypervisor-cpr-web1-1700000000.service", False),
    # A manager's scope or a session.
    ("machine-qemu\\x2d3\\x2dweb1.scope", False),
    ("100.scope", False),
    (None, False),
])
def test_which_units_are_held(unit, held):
    assert holdable(unit) is held


@pytest.fixture
def systemctl(monkeypatch):
    calls = []
    monkeypatch.setattr(_units, "systemctl", calls.append)
    monkeypatch.setattr(_units, "systemd_runs_host", lambda: True)
    return calls


def test_a_held_unit_starts_only_once_the_vm_is_restored(tmp_path, systemctl):
    unit_dir = str(tmp_path)
    hold([Hold("qemu@web1.service", "web1", "/var/lib/qemu-cpr/web1.json"),
          Hold("db1.service", "db1", "/var/lib/qemu-cpr/db1.json")], unit_dir)
    with open(drop_in_path("qemu@web1.service", unit_dir), encoding="utf-8") as handle:
        content = handle.read()
    assert "[Unit]\nConditionPathExists=!/var/lib/qemu-cpr/web1.json\n" in content
    assert content.startswith("# Written by hypervisor.cpr while VM web1 is saved")
    # One reload for the whole round, before any VM stops.
    assert systemctl == [["daemon-reload"]]

    # The operator's own drop-in beside ours stays, and so does its directory.
    with open(os.path.join(unit_dir, "db1.service.d", "10-mine.conf"), "w", encoding="utf-8") as handle:
        handle.write("[Service]\nNice=5\n")
    release(["qemu@web1.service", "db1.service", "never-held.service"], unit_dir)
    assert not os.path.exists(os.path.join(unit_dir, "qemu@web1.service.d"))
    assert os.listdir(os.path.join(unit_dir, "db1.service.d")) == ["10-mine.conf"]
    assert systemctl == [["daemon-reload"], ["daemon-reload"]]
    release(["qemu@web1.service"], unit_dir)
    assert systemctl == [["daemon-reload"], ["daemon-reload"]], "nothing removed, nothing reloaded"


def test_nothing_to_hold_reloads_nothing(tmp_path, systemctl):
    hold([], str(tmp_path))
    assert systemctl == []
