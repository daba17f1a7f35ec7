"""The boot restore on real QEMUs: the entry's own program, run as the host's init runs it after a reboot.

No reboot happens here (the kexec lab reboots for real: tests/kexec). The save quits the QEMUs, as a reboot would
end them, and the boot the VMs were saved in gets another id in the entry's config and in their manifests, which
is all the program knows of it. Everything else is real: the entry's files, the host's Python run isolated on the
engine's zip, new QEMUs, their state loaded, and cpr_restore finding them back.
"""

import json
import os
import shutil
import subprocess
import time

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._boot import BootOptions, install, remove
from ansible_collections.hypervisor.cpr.plugins.module_utils._boot_entry import boot_dir_path, boot_result
from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import restore
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

PREVIOUS_BOOT = "00000000-0000-4000-8000-00000000b007"


def as_if_rebooted(paths):
    """The records of a boot that is over: what they say of the boot they were written in becomes another one."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        data["saved_boot_id" if "saved_boot_id" in data else "boot_id"] = PREVIOUS_BOOT
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)


def flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_the_boot_restore_brings_back_its_runs_vms_and_cpr_restore_finishes(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["ba", "bb", "bc"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    boot_dir = boot_dir_path(state_dir)
    entry = install(state_dir, "run-1", BootOptions(timeout=120, init="script"))
    save(Selection(names=["ba", "bb"]), state_dir, SaveOptions(reboot="none", timeout=120), run_id="run-1")
    # Saved by another run: not this entry's to restore.
    save(Selection(names=["bc"]), state_dir, SaveOptions(reboot="none", timeout=120), run_id="run-0")
    as_if_rebooted([os.path.join(boot_dir, "config.json")]
                   + [os.path.join(state_dir, f"{name}.json") for name in ("ba", "bb", "bc")])
    damaged = os.path.join(state_dir, "bb.state")
    flip_byte(damaged, os.path.getsize(damaged) // 2)
    subprocess.run(["touch", entry["reboot_mark"]], check=True)
    marked = os.stat(entry["reboot_mark"]).st_mtime

    ran = subprocess.run([entry["entry"]], capture_output=True, text=True, check=False, timeout=300)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "does not match the XXH3-128 in its manifest" in ran.stderr and "VM bb not restored" in ran.stderr
    result = boot_result(state_dir)
    [back] = result["vms"]
    assert back["name"] == "ba" and back["pid"] == vms[0].refresh_pid()
    assert [f["name"] for f in result["failed"]] == ["bb"]
    assert (result["run_id"], result["saved_boot_id"], result["reboot_at"]) == ("run-1", PREVIOUS_BOOT, marked)
    assert result["started_at"] <= back["back_at"] <= result["finished_at"]
    # Run once: disarmed before it restored anything; only its result is left.
    assert os.listdir(boot_dir) == ["result.json"]
    assert vms[0].runstate() == "running"
    # The damaged VM and the other run's stay down, with their files.
    assert vms[1].refresh_pid() is None and vms[2].refresh_pid() is None
    assert {f for f in os.listdir(state_dir) if f.endswith((".json", ".state"))} == {
        f"{name}{suffix}" for name in ("ba", "bb", "bc") for suffix in (".json", ".state")}

    # cpr_restore finds ba back (the QEMU the boot restore started), restores nothing of it again, and cleans up.
    with pytest.raises(CprError) as failed:
        restore(state_dir, ["ba", "bb"], run_id="run-1")
    detail = failed.value.result
    [ba] = detail["vms"]
    assert (ba["name"], ba["pid"], ba["restored_at_boot"], ba["back_at"]) == ("ba", back["pid"], True, back["back_at"])
    assert ba["downtime_seconds"] == pytest.approx(back["back_at"] - ba["paused_at"])
    assert ba["boot_restore_seconds"] == pytest.approx(back["seconds"])
    assert [e["name"] for e in detail["errors"]] == ["bb"]
    assert detail["boot_restore"] == result
    blackout = detail["host_blackout"]
    assert (blackout["from"], blackout["started_at"], blackout["last_back_at"]) == (
        "reboot command", marked, back["back_at"])
    assert blackout["to_userspace_seconds"] == pytest.approx(result["started_at"] - marked)
    assert not os.path.exists(os.path.join(state_dir, "ba.json"))

    # Its file mended, bb is restored by cpr_restore itself; the other run's VM too.
    flip_byte(damaged, os.path.getsize(damaged) // 2)
    [bb] = restore(state_dir, ["bb"], run_id="run-1")["vms"]
    assert not bb["restored_at_boot"] and bb["boot_restore_seconds"] is None
    restore(state_dir, ["bc"], run_id="run-0")
    assert testbed.survival_problems(vms, snapshot) == []
    assert remove(state_dir)["removed"] == [os.path.join(boot_dir, "result.json")]


def test_a_vm_something_started_cold_before_the_boot_restore_is_left_alone(vm_dir):
    """Its QEMU runs already when the boot restore comes: it is not the saved VM, and no second one is started."""
    [vm] = testbed.boot_vms(vm_dir, names=["bd"])
    state_dir = os.path.join(vm_dir, "state")
    entry = install(state_dir, "run-1", BootOptions(timeout=120, init="script"))
    save(Selection(names=["bd"]), state_dir, SaveOptions(reboot="none", timeout=120), run_id="run-1")
    as_if_rebooted([os.path.join(boot_dir_path(state_dir), "config.json"), os.path.join(state_dir, "bd.json")])
    cold = testbed.start_qemu(vm.argv, vm.log)
    deadline = time.monotonic() + 60
    while vm.refresh_pid() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vm.refresh_pid() == cold

    ran = subprocess.run([entry["entry"]], capture_output=True, text=True, check=False, timeout=300)
    assert ran.returncode == 1
    [failed] = boot_result(state_dir)["failed"]
    assert failed["name"] == "bd" and f"a QEMU of this name runs that no restore started (pid {cold}" in failed["error"]
    assert vm.refresh_pid() == cold, "the cold QEMU is left alone, and no other is started"
    assert os.path.exists(os.path.join(state_dir, "bd.json")) and os.path.exists(os.path.join(state_dir, "bd.state"))
