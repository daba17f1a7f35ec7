"""vm_power's engine on real test-bed VMs: a clean guest shutdown, recorded, and a fresh start with the same argv."""

import os
import shutil
import time

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotReadyError
from ansible_collections.hypervisor.cpr.plugins.module_utils._power import start as power_start
from ansible_collections.hypervisor.cpr.plugins.module_utils._power import stop as power_stop
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")


def _records(state_dir):
    return sorted(f for f in os.listdir(state_dir) if f.endswith(".stopped")) if os.path.isdir(state_dir) else []


def test_shutdown_through_the_agent_and_start_again(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["off1"])
    # -no-shutdown: QEMU stays in the shutdown runstate once the guest powered off, and must be told to quit.
    vms += testbed.boot_vms(vm_dir, names=["off2"], extra_args=["-no-shutdown"])
    markers = {vm.name: vm.marker() for vm in vms}
    argvs = {vm.name: vm.argv for vm in vms}
    state_dir = os.path.join(vm_dir, "state")

    planned = power_stop(Selection(names=["off1", "off2"]), state_dir, check_mode=True)
    assert planned["changed"] and planned["would_change"] == ["off1", "off2"]
    assert all(vm.alive() for vm in vms) and _records(state_dir) == []

    stopped = power_stop(Selection(names=["off1", "off2"]), state_dir, timeout=60)
    assert stopped["changed"] and [vm["how"] for vm in stopped["vms"]] == ["guest-shutdown"] * 2
    assert not any(vm.alive() for vm in vms)
    assert _records(state_dir) == ["off1.stopped", "off2.stopped"]
    assert oct(os.stat(os.path.join(state_dir, "off1.stopped")).st_mode & 0o777) == "0o600"

    again = power_stop(Selection(names=["off1", "off2"]), state_dir, timeout=60)
    assert not again["changed"] and [vm["changed"] for vm in again["vms"]] == [False, False]

    started = power_start(state_dir, names=["off1", "off2"], timeout=180)
    assert started["changed"] and sorted(vm["name"] for vm in started["vms"]) == ["off1", "off2"]
    assert _records(state_dir) == []
    for vm in vms:
        vm.refresh_pid()
        # A fresh boot with the same command line: the agent answers, and the guest drew a new marker.
        assert vm.agent("guest-ping") == {}
        assert vm.marker() != markers[vm.name]
        assert testbed._cmdline(vm.pid) == argvs[vm.name]  # pylint: disable=protected-access
    assert not power_start(state_dir, names=["off1", "off2"])["changed"]


def test_a_qemu_that_does_not_exit_after_the_power_off_is_named_and_its_record_kept(vm_dir):
    vm = testbed.boot_vms(vm_dir, names=["stay1"])[0]
    argv, marker = vm.argv, vm.marker()
    # Told at run time, so its command line does not say it: like a QEMU hung in its exit, it is still there.
    vm.qmp("set-action", shutdown="pause")
    state_dir = os.path.join(vm_dir, "state")
    with pytest.raises(CprError, match=rf"VM stay1: the guest powered off, but its QEMU \(pid {vm.pid}\) did not "
                                       r"exit within 20 s.*state=started starts the VM again from its record"):
        power_stop(Selection(names=["stay1"]), state_dir, timeout=20)
    assert vm.alive() and vm.qmp("query-status")["status"] == "shutdown"
    assert _records(state_dir) == ["stay1.stopped"]
    # Not taken for a VM an earlier start brought up: that QEMU is refused, in check mode too, and the record stays.
    for check_mode in (True, False):
        with pytest.raises(NotReadyError, match=rf"VM stay1: its QEMU \(pid {vm.pid}\) is still there, with the "
                                                r"guest powered off"):
            power_start(state_dir, names=["stay1"], timeout=60, check_mode=check_mode)
    assert _records(state_dir) == ["stay1.stopped"]

    vm.kill()
    assert power_start(state_dir, names=["stay1"], timeout=60, check_mode=True)["would_change"] == ["stay1"]
    started = power_start(state_dir, names=["stay1"], timeout=180)
    assert started["changed"] and _records(state_dir) == []
    vm.refresh_pid()
    assert vm.agent("guest-ping") == {} and vm.marker() != marker
    assert testbed._cmdline(vm.pid) == argv  # pylint: disable=protected-access


def test_paused_guest_is_refused_before_any_vm_is_touched(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["run1", "paused1"])
    vms[1].qmp("stop")
    state_dir = os.path.join(vm_dir, "state")
    with pytest.raises(NotReadyError, match="VM paused1 is paused: only a running guest can shut down cleanly"):
        power_stop(Selection(names=["run1", "paused1"]), state_dir)
    assert [vm.runstate() for vm in vms] == ["running", "paused"]
    assert _records(state_dir) == []


def test_guest_that_refuses_or_ignores_the_request_is_left_running(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["refuses", "deaf"])
    state_dir = os.path.join(vm_dir, "state")
    # The agent runs shutdown, which fails: the agent says so.
    vms[0].guest_exec(["sh", "-c", "printf '#!/bin/sh\\nexit 1\\n' > /sbin/shutdown"])
    with pytest.raises(CprError, match="VM refuses: the guest agent refused guest-shutdown"):
        power_stop(Selection(names=["refuses"]), state_dir, timeout=30)
    # Without an answering agent the ACPI power button is pressed; this guest has nothing that listens to it.
    vms[1].guest_exec(["sh", "-c", "(sleep 0.2; killall -STOP qemu-ga) >/dev/null 2>&1 &"])
    deadline = time.monotonic() + 30
    while vms[1].agent_answers():
        assert time.monotonic() < deadline, "the guest agent still answers"
        time.sleep(0.05)
    with pytest.raises(CprError) as failure:
        power_stop(Selection(names=["deaf"]), state_dir, timeout=3)
    assert "VM deaf: the guest did not power off within 3 s after system_powerdown; it is left running" in str(
        failure.value)
    assert failure.value.result["errors"] == [{"name": "deaf", "msg": str(failure.value)}]
    assert [vm.runstate() for vm in vms] == ["running", "running"]
    assert _records(state_dir) == []


def test_start_of_an_unknown_vm_is_refused(vm_dir):
    state_dir = os.path.join(vm_dir, "state")
    os.makedirs(state_dir, mode=0o700)
    with pytest.raises(CprError, match="no record in .* of a shut-down VM, and no running VM, for ghost"):
        power_start(state_dir, names=["ghost"])
