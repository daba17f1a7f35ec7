"""vm_status's own facts on real QEMUs: replaced code, and what a state directory holds."""

import os
import shutil

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import restore
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")


def test_a_qemu_whose_binary_was_replaced_runs_replaced_code(qemu, tmp_path):
    """An upgrade replaces the binary on disk; the running QEMU still maps the deleted file."""
    unique = f"r{os.getpid()}"
    binary = tmp_path / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir()
    shutil.copy2(shutil.which("qemu-system-x86_64"), binary)
    sockets = {name: str(tmp_path / f"{name}.qmp") for name in (f"{unique}-old", f"{unique}-new")}
    for name, qmp in sockets.items():
        qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", "-name", name,
                   binary=str(binary) if name.endswith("old") else "qemu-system-x86_64", wait_for=qmp)
    binary.unlink()
    vms = status(Selection(names=list(sockets)), FactsOptions(timeout=5))["vms"]
    assert [(vm["name"], vm["runs_replaced_code"]) for vm in vms] == [(f"{unique}-old", True), (f"{unique}-new", False)]


def test_a_state_directory_lists_what_it_holds(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["held", "free"])
    state_dir = os.path.join(vm_dir, "state")
    before = status(Selection(names=["held"]), FactsOptions(timeout=5), state_dir)
    assert (before["saved"], before["stopped"], before["warnings"]) == ([], [], [])
    assert [vm["name"] for vm in before["vms"]] == ["held"]
    # The VM not selected is accounted for among the others, from /proc only.
    [free] = [other for other in before["others"] if other["pid"] == vms[1].pid]
    assert free == {"name": "free", "pid": vms[1].pid, "exe": shutil.which("qemu-system-x86_64"), "managed_by": "none",
                    "recognised_by": [], "unit": None, "problem": None}
    saved = save(Selection(names=["held"]), state_dir, SaveOptions(reboot="none", timeout=60))["vms"][0]

    # The saved VM is no longer running and not an unknown name: it is listed as saved.
    listed = status(Selection(names=["held", "free"]), FactsOptions(timeout=5), state_dir)
    assert [vm["name"] for vm in listed["vms"]] == ["free"]
    [held] = listed["saved"]
    assert (held["name"], held["runstate_before"], held["state_bytes"], held["paused_at"]) == (
        "held", "running", saved["state_bytes"], saved["paused_at"])
    assert held["boot_id"] == boot_id() and held["saved_this_boot"] and held["reboot"] == "none"
    assert listed["stopped"] == []
    assert [vm["name"] for vm in status(Selection(names=["held"]), FactsOptions(timeout=5), state_dir)["vms"]] == []

    [restored] = restore(state_dir)["vms"]
    assert (restored["runstate_before"], restored["state_bytes"], restored["paused_at"]) == (
        "running", saved["state_bytes"], saved["paused_at"])
    assert restored["back_at"] == pytest.approx(restored["paused_at"] + restored["downtime_seconds"])
    vms[0].refresh_pid()
    assert status(Selection(names=["held"]), FactsOptions(timeout=5), state_dir)["saved"] == []
