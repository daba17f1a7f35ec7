"""hypervisor.cpr.vm_reports: the kernel_update role's report entries, from cpr_restore's results."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.filter.vm_reports import FilterModule, vm_reports


def restored(name, **facts):
    """A cpr_restore vms entry, as the module returns it."""
    entry = {"name": name, "changed": True, "pid": 4711, "runstate": "running", "restore_seconds": 1.5,
             "downtime_seconds": 2.0, "state_kept": False, "runstate_before": "running", "suspended_by_us": False,
             "paused_at": 1000.0, "back_at": 1002.0, "save_seconds": 0.4, "state_bytes": 339774, "ram_in_place": True,
             "restored_at_boot": False, "boot_restore_seconds": None}
    entry.update(facts)
    return entry


REPORT_KEYS = ["name", "method", "reason", "runstate_before", "runstate", "suspended_by_us", "saved_by_earlier_run",
               "paused_at", "downtime_seconds", "save_seconds", "restore_seconds", "state_bytes", "ram_in_place",
               "restored_at_boot", "boot_restore_seconds", "managed_by", "qemu_version_before", "qemu_version_after",
               "binary_before", "binary_after", "pid_before", "pid_after"]


def updated(name, method="transfer", **facts):
    """A qemu_update vms entry, as the module returns it."""
    entry = {"name": name, "method": method, "changed": True, "reason": None, "runstate": "running",
             "pid_before": 10, "pid_after": 20, "qemu_version_before": "10.0.2", "qemu_version_after": "10.0.3",
             "binary_before": "/usr/bin/qemu-system-x86_64", "binary_after": "/usr/bin/qemu-system-x86_64",
             "unit_after": None, "paused_at": 1000.0, "back_at": 1000.05, "downtime_seconds": 0.05,
             "qemu_downtime_ms": 4, "update_seconds": 0.6}
    entry.update(facts)
    return entry


@pytest.mark.parametrize("results, earlier, expected", [
    # Nothing restored.
    ([], [], []),
    # One VM this run saved: every key the README documents, nothing else (no pid, back_at...).
    ([restored("web1")], [], [{
        "name": "web1", "method": "save-restore", "reason": None, "runstate_before": "running", "runstate": "running", "suspended_by_us": False,
        "saved_by_earlier_run": False, "paused_at": 1000.0, "downtime_seconds": 2.0, "save_seconds": 0.4,
        "restore_seconds": 1.5, "state_bytes": 339774, "ram_in_place": True, "restored_at_boot": False,
        "boot_restore_seconds": None, "managed_by": "none"}]),
    # One the boot restore brought back: when, and how long its restore took there.
    ([restored("web1", restored_at_boot=True, boot_restore_seconds=0.8)], [], [
        {"name": "web1", "restored_at_boot": True, "boot_restore_seconds": 0.8}]),
    # A libvirt domain (libvirt_restore's entry) beside a QEMU VM: one report, each says who runs it.
    ([restored("web1"), restored("dom1", managed_by="libvirt", state_bytes=92000000, ram_in_place=False)], [], [
        {"name": "web1", "managed_by": "none"},
        {"name": "dom1", "managed_by": "libvirt", "state_bytes": 92000000, "ram_in_place": False}]),
    # A guest the save suspended comes back running; one an earlier run saved is marked so.
    ([restored("gpu1", runstate_before="suspended", suspended_by_us=True), restored("db1")], ["db1", "gone"], [
        {"name": "gpu1", "runstate_before": "suspended", "runstate": "running", "saved_by_earlier_run": False},
        {"name": "db1", "runstate_before": "running", "runstate": "running", "saved_by_earlier_run": True}]),
    # The role's restore and its rescue's both name web1: the first entry wins, the order is kept.
    ([restored("web1", restore_seconds=1.0), restored("web2"), restored("web1", restore_seconds=9.0)], [], [
        {"name": "web1", "restore_seconds": 1.0}, {"name": "web2", "restore_seconds": 1.5}]),
    # qemu_update's entries: the way each went, QEMU and binary before and after; no save facts.
    ([updated("web1"), updated("db1", "relaunch", reason="its runstate is paused")], [], [
        {"name": "web1", "method": "transfer", "reason": None, "qemu_version_before": "10.0.2",
         "qemu_version_after": "10.0.3", "pid_after": 20, "state_bytes": None},
        {"name": "db1", "method": "relaunch", "reason": "its runstate is paused"}]),
    # An entry without the save facts (an older engine): they are null, not an error.
    ([{"name": "old", "runstate": "paused", "restore_seconds": 0.5, "downtime_seconds": 3.0}], [], [
        {"name": "old", "runstate_before": None, "runstate": "paused", "suspended_by_us": None, "paused_at": None}]),
])
def test_vm_reports(results, earlier, expected):
    reports = vm_reports(results, earlier)
    assert [list(report) for report in reports] == [REPORT_KEYS] * len(expected)
    assert [{key: report[key] for key in wanted} for report, wanted in zip(reports, expected)] == expected


def test_the_input_is_not_changed():
    results = [restored("web1")]
    vm_reports(results, ["web1"])
    assert "saved_by_earlier_run" not in results[0] and "pid" in results[0]


def test_registered_as_vm_reports():
    assert FilterModule().filters() == {"vm_reports": vm_reports}
