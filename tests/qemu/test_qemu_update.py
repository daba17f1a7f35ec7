"""qemu_update on real test-bed VMs (TCG, real guest agent, real QMP): cpr-transfer and the relaunch, in one call.

Two VMs are shared by the tests of this file: ``xfer`` is ready for cpr-transfer (RAM in a shared memfd,
``-machine aux-ram-share=on``), ``plain`` is not (RAM in a shared file, no aux-ram-share), so it is relaunched.
Every update proves the guest's RAM survived: the random marker in its tmpfs is identical and its counter went on.
"""

import os
import shutil

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import NotReadyError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_ready import Channels
from ansible_collections.hypervisor.cpr.plugins.module_utils._update import UpdateOptions, update

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

# The machine is shared: allow a slow boot.
BOOT = {"timeout": 300}
TRANSFER_READY = {"ram": "memfd", "transfer": True, **BOOT}
NO_AUX_RAM_SHARE = ("it was started without -machine aux-ram-share=on, so its ROMs and video RAM are not shared: "
                    "start it with that option once")


@pytest.fixture
def vms(vm_pool):
    return vm_pool.get("xfer", **TRANSFER_READY), vm_pool.get("plain", **BOOT)


def _pids(vms):
    return [vm.refresh_pid() for vm in vms]


def _verdicts(names):
    found = status(Selection(names=names), FactsOptions(timeout=5, reboot="none"))["vms"]
    return {vm["name"]: (vm["aux_ram_share"], vm["transfer"]) for vm in found}


def test_vm_status_says_which_vm_can_be_transferred_and_why_not(vms):
    assert _verdicts(["xfer", "plain"]) == {
        "xfer": (True, {"ready": True, "reasons": []}),
        "plain": (False, {"ready": False, "reasons": [NO_AUX_RAM_SHARE]})}
    # A paused VM has no blackout to shorten: it is relaunched.
    vms[0].qmp("stop")
    try:
        [reason] = _verdicts(["xfer"])["xfer"][1]["reasons"]
    finally:
        vms[0].qmp("cont")
    assert reason.startswith("its runstate is paused: only a running VM is transferred")


def test_check_mode_and_method_transfer_touch_nothing(vms, vm_pool):
    pids = _pids(vms)
    state_dir = os.path.join(vm_pool.workdir, "state")
    planned = update(Selection(names=["xfer", "plain"]), state_dir, check_mode=True)
    assert planned == {"changed": True, "vms": [], "would_transfer": ["xfer"], "would_relaunch": ["plain"]}
    with pytest.raises(NotReadyError) as refused:
        update(Selection(names=["xfer", "plain"]), state_dir, UpdateOptions(method="transfer", timeout=60))
    assert str(refused.value).startswith(f"VM plain cannot be transferred: {NO_AUX_RAM_SHARE}")
    assert str(refused.value).endswith("Nothing was touched")
    assert _pids(vms) == pids
    assert [vm.runstate() for vm in vms] == ["running", "running"]


def test_one_call_transfers_one_vm_and_relaunches_the_other(vms, vm_pool):
    snapshot = testbed.memory_snapshot(vms)
    pids = _pids(vms)
    state_dir = os.path.join(vm_pool.workdir, "state")
    binary = os.path.realpath(shutil.which("qemu-system-x86_64"))

    result = update(Selection(names=["xfer", "plain"]), state_dir, UpdateOptions(timeout=60))

    assert (result["would_transfer"], result["would_relaunch"], result["changed"]) == (["xfer"], ["plain"], True)
    by_name = {vm["name"]: vm for vm in result["vms"]}
    xfer, plain = by_name["xfer"], by_name["plain"]
    assert (xfer["method"], xfer["reason"], plain["method"], plain["reason"]) == (
        "transfer", None, "relaunch", NO_AUX_RAM_SHARE)
    for entry, pid in ((xfer, pids[0]), (plain, pids[1])):
        assert entry["pid_before"] == pid and entry["pid_after"] not in (None, pid)
        assert entry["binary_before"] == entry["binary_after"] == binary
        assert entry["qemu_version_before"] == entry["qemu_version_after"]
        assert entry["runstate"] == "running"
        assert entry["back_at"] == pytest.approx(entry["paused_at"] + entry["downtime_seconds"])
    assert isinstance(xfer["qemu_downtime_ms"], int) and plain["qemu_downtime_ms"] is None
    assert _pids(vms) == [xfer["pid_after"], plain["pid_after"]]
    assert testbed.survival_problems(list(vms), snapshot) == []
    # Nothing left behind: no record, no manifest, no socket of the transfer's channels.
    assert not [f for f in os.listdir(state_dir) if f.endswith((".transfer", ".json", ".state", ".saving"))]
    assert not os.path.exists(Channels.for_vm("xfer").directory)

    # The transferred VM is as ready as before: a second transfer works the same way.
    assert _verdicts(["xfer"])["xfer"] == (True, {"ready": True, "reasons": []})
    [again] = update(Selection(names=["xfer"]), state_dir, UpdateOptions(method="transfer", timeout=60))["vms"]
    assert (again["method"], again["pid_before"]) == ("transfer", xfer["pid_after"])
    assert testbed.survival_problems([vms[0]], snapshot) == []
