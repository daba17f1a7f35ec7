"""Fault campaign: inject every fault we can here into real saves and restores.

Each test records a row: what the operator saw, whether any VM or state file
was lost, and whether running the same step again finished the job. A VM is
lost when no QEMU serves it and no manifest with a valid state file can bring
it back.
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CprError,
    LockedError,
    ManifestError,
    NotReadyError,
    SelectionError,
    StateDirError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._power import start as power_start
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import RestoreOptions, restore
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._socket import socket_owners
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import LOCK_NAME, StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_ready import Channels
from ansible_collections.hypervisor.cpr.plugins.module_utils._update import UpdateOptions, update

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")


def lost(vms, state_dir):
    """(VMs lost, state files lost): VMs neither running nor restorable, manifests whose state file is bad."""
    restorable, bad_files = set(), 0
    with StateDir.open(state_dir) as directory:
        for manifest in directory.manifests():
            try:
                directory.verify_state(manifest)
                restorable.add(manifest.name)
            except CprError:
                bad_files += 1
    gone = [vm.name for vm in vms if vm.refresh_pid() is None and vm.name not in restorable]
    return len(gone), bad_files


def finished(vms, snapshot):
    problems = testbed.survival_problems(vms, snapshot)
    assert problems == []
    return True


def saved_files(state_dir):
    return sorted(f for f in os.listdir(state_dir) if f.endswith((".json", ".state", ".saving")))


def in_background(target, *args):
    """Run a fault injector beside the call it injects into; it acts as soon as its event comes, whatever the load."""
    thread = threading.Thread(target=testbed.in_realtime, args=(target, *args))
    thread.start()
    return thread


def wait_for_data(path, timeout=60):
    """Until QEMU has written into a state file (the engine creates it, empty, before QEMU starts writing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if os.path.getsize(path) > 0:
                return
        time.sleep(0.0005)


def wait_for_path(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.0005)


def fill(path):
    """Take every free byte of path's filesystem (a write QEMU had in flight may still land after statvfs)."""
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        size = 0
        for chunk in (1 << 30, 1 << 20, 1 << 12):
            while True:
                try:
                    os.posix_fallocate(descriptor, size, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                size += chunk
    finally:
        os.close(descriptor)


def make_noise(vm, mib=64):
    """Incompressible guest memory, so that copying it takes a while."""
    vm.guest_exec(["dd", "if=/dev/urandom", "of=/noise", "bs=1M", f"count={mib}"], timeout=120)


# --------------------------------------------------------------------------- 1. disk full


def test_disk_full_while_saving(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["full"], ram="private")
    make_noise(vms[0])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    os.makedirs(state_dir, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512M,mode=0700", "tmpfs", state_dir], check=True)
    try:
        def take_all_space():
            # QEMU is held while the space goes, so the disk fills in the middle of its write.
            wait_for_data(os.path.join(state_dir, "full.state"))
            os.kill(vms[0].pid, signal.SIGSTOP)
            try:
                fill(os.path.join(state_dir, ".ballast"))
            finally:
                os.kill(vms[0].pid, signal.SIGCONT)

        filler = in_background(take_all_space)
        with pytest.raises(CprError, match="VM full: the save failed") as failure:
            save(Selection(names=["full"]), state_dir, SaveOptions(reboot="none", timeout=60))
        filler.join()
        assert "Resumed as they were: full" in str(failure.value)
        assert vms[0].runstate() == "running"
        assert saved_files(state_dir) == []
        vms_lost, files_lost = lost(vms, state_dir)

        os.unlink(os.path.join(state_dir, ".ballast"))
        save(Selection(names=["full"]), state_dir, SaveOptions(reboot="none", timeout=60))
        restore(state_dir, options=RestoreOptions(timeout=60))
        rerun = finished(vms, snapshot)
    finally:
        subprocess.run(["umount", "-l", state_dir], check=True)
    campaign("disk full", "while QEMU writes guest RAM", "save failed with QEMU's reason; VM resumed, partial file removed",
             vms_lost, files_lost, rerun)


# --------------------------------------------------------------------------- 2, 3. the guest agent and the guest


def test_guest_agent_hangs_before_suspend(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["agenthang", "bystander"])
    snapshot = testbed.memory_snapshot(vms)
    # A paused bystander: saved, then brought back paused when the other VM fails.
    vms[1].qmp("stop")
    state_dir = os.path.join(vm_dir, "state")
    # Freeze the agent for 20 s from inside the guest (once this guest-exec has returned); it thaws by itself.
    vms[0].guest_exec(["sh", "-c", "(sleep 0.2; killall -STOP qemu-ga; sleep 20; killall -CONT qemu-ga) "
                       ">/dev/null 2>&1 &"])
    wait_until(lambda: not vms[0].agent_answers(), 30)
    with pytest.raises(CprError) as failure:
        save(Selection(names=["agenthang", "bystander"]), state_dir, SaveOptions(reboot="none", timeout=5, suspend="all"))
    message = str(failure.value)
    assert "VM agenthang:" in message and "did not answer" in message
    vms[1].refresh_pid()
    assert [vm.runstate() for vm in vms] == ["running", "paused"]
    assert saved_files(state_dir) == []
    vms_lost, files_lost = lost(vms, state_dir)

    wait_until(lambda: vms[0].agent("guest-ping") == {}, 60)
    save(Selection(names=["agenthang", "bystander"]), state_dir, SaveOptions(reboot="none", timeout=30, suspend="all"))
    restore(state_dir, options=RestoreOptions(timeout=60))
    vms[1].refresh_pid()
    vms[1].qmp("cont")
    campaign("guest agent hangs", "before guest-suspend-ram", "save refused naming the VM; every VM of the call resumed",
             vms_lost, files_lost, finished(vms, snapshot))


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # pylint: disable=broad-exception-caught
            pass  # the agent may drop the connection while it recovers
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _replace_pm_suspend(vm, script):
    vm.guest_exec(["sh", "-c", f"printf '#!/bin/sh\\n{script}\\n' > /usr/sbin/pm-suspend && chmod +x /usr/sbin/pm-suspend"])


def _restart_agent(vm, config):
    """Restart the guest agent with this /etc/qemu/qemu-ga.conf (the guest's init restarts it)."""
    exits = vm.agent_exits()
    vm.guest_exec(["sh", "-c", f"mkdir -p /etc/qemu && printf '{config}' > /etc/qemu/qemu-ga.conf && "
                   "(sleep 0.2; killall qemu-ga) >/dev/null 2>&1 &"])
    wait_until(lambda: vm.agent_exits() > exits, 60)
    wait_until(vm.agent_answers, 60)


def test_guest_refuses_to_suspend(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["refuser"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    # The guest's policy forbids suspending: its agent refuses the command.
    _restart_agent(vms[0], "[general]\\nblacklist=guest-suspend-ram\\n")
    with pytest.raises(CprError, match="VM refuser: the guest refused to suspend: .*disabled"):
        save(Selection(names=["refuser"]), state_dir, SaveOptions(reboot="none", timeout=20, suspend="all"))
    assert vms[0].runstate() == "running"
    vms_lost, files_lost = lost(vms, state_dir)

    _restart_agent(vms[0], "")
    save(Selection(names=["refuser"]), state_dir, SaveOptions(reboot="none", timeout=30, suspend="all"))
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("guest refuses to suspend", "guest-suspend-ram", "refused naming the VM, in the agent's words; VM running",
             vms_lost, files_lost, finished(vms, snapshot))


def test_guest_never_reaches_suspended(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["insomniac"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    # The kernel's PM test mode goes through the suspend for 5 s without ever entering S3.
    vms[0].guest_exec(["sh", "-c", "echo devices > /sys/power/pm_test"])
    with pytest.raises(CprError, match="VM insomniac: the guest did not reach the suspended runstate within 3 s"):
        save(Selection(names=["insomniac"]), state_dir, SaveOptions(reboot="none", timeout=3, suspend="all"))
    assert vms[0].runstate() == "running"
    vms_lost, files_lost = lost(vms, state_dir)

    wait_until(lambda: vms[0].guest_exec(["sh", "-c", "echo none > /sys/power/pm_test"]) == "", 60)
    save(Selection(names=["insomniac"]), state_dir, SaveOptions(reboot="none", timeout=30, suspend="all"))
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("guest never suspends", "after guest-suspend-ram", "timeout naming the VM; guest left running",
             vms_lost, files_lost, finished(vms, snapshot))


# --------------------------------------------------------------------------- 4. QMP stops answering


def test_qmp_stops_answering_during_save(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["hung"], ram="private")
    make_noise(vms[0], 32)
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")

    def stop_when_writing():
        wait_for_data(os.path.join(state_dir, "hung.state"))
        os.kill(vms[0].pid, signal.SIGSTOP)

    stopper = in_background(stop_when_writing)
    try:
        with pytest.raises(CprError) as failure:
            save(Selection(names=["hung"]), state_dir, SaveOptions(reboot="none", timeout=60))
    finally:
        stopper.join()
        os.kill(vms[0].pid, signal.SIGCONT)
    assert "VM hung: QMP command query-migrate got no answer within 10 s" in str(failure.value)
    assert "Could not be resumed" in str(failure.value)
    vms_lost, files_lost = lost(vms, state_dir)

    vms[0].wait_runstate("postmigrate", timeout=60)
    assert save(Selection(names=["hung"]), state_dir, SaveOptions(reboot="none", timeout=60))["vms"][0]["quit"]
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("QMP stops answering (SIGSTOP)", "during save", "timeout naming the VM; .saving record kept",
             vms_lost, files_lost, finished(vms, snapshot))


def _new_qemu_pid(vm, old_pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = testbed.find_qemu_pid(vm.qmp_socket)
        if pid and pid != old_pid:
            return pid
        time.sleep(0.001)
    raise AssertionError("no new QEMU appeared")


def test_qmp_stops_answering_during_restore(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["rhung"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    old_pid = vms[0].pid
    save(Selection(names=["rhung"]), state_dir, SaveOptions(reboot="none", timeout=60))
    stopped = []

    def stop_new_qemu():
        pid = _new_qemu_pid(vms[0], old_pid)
        wait_for_path(str(vms[0].qmp_socket))
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    stopper = in_background(stop_new_qemu)
    try:
        with pytest.raises(CprError, match="VM rhung:"):
            restore(state_dir, options=RestoreOptions(timeout=15))
    finally:
        stopper.join()
        os.kill(stopped[0], signal.SIGCONT)
    assert saved_files(state_dir) == ["rhung.json", "rhung.state"]
    vms_lost, files_lost = lost(vms, state_dir)
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("QMP stops answering (SIGSTOP)", "during restore", "error naming the VM; state file and manifest kept",
             vms_lost, files_lost, finished(vms, snapshot))


# --------------------------------------------------------------------------- 5. QEMU killed


def test_qemu_killed_during_restore(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["rkill"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    old_pid = vms[0].pid
    save(Selection(names=["rkill"]), state_dir, SaveOptions(reboot="none", timeout=60))
    killer = in_background(lambda: os.kill(_new_qemu_pid(vms[0], old_pid), signal.SIGKILL))
    with pytest.raises(CprError, match="VM rkill:"):
        restore(state_dir, options=RestoreOptions(timeout=15))
    killer.join()
    assert saved_files(state_dir) == ["rkill.json", "rkill.state"]
    vms_lost, files_lost = lost(vms, state_dir)
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("QEMU killed (SIGKILL)", "during restore", "error naming the VM; state file and manifest kept",
             vms_lost, files_lost, finished(vms, snapshot))


def test_qemu_killed_during_save_is_booted_again_and_the_others_resumed(vm_dir, campaign):
    """Killing QEMU kills its guest's running state, whoever does it; the VM itself is not lost.

    The save records the dead QEMU's command line (as vm_power does for a shut-down guest), the others of the
    call are resumed, and vm_power's start boots the VM again; a re-run of the save and restore then finishes.
    """
    vms = testbed.boot_vms(vm_dir, names=["victim", "survivor"], ram="private")
    make_noise(vms[0], 32)
    snapshot = testbed.memory_snapshot(vms)
    argv, marker = vms[0].argv, vms[0].marker()
    state_dir = os.path.join(vm_dir, "state")

    def kill_when_writing():
        wait_for_data(os.path.join(state_dir, "victim.state"))
        os.kill(vms[0].pid, signal.SIGKILL)

    killer = in_background(kill_when_writing)
    with pytest.raises(CprError, match="VM victim:") as failure:
        save(Selection(names=["victim", "survivor"]), state_dir, SaveOptions(reboot="none", timeout=60))
    killer.join()
    message = str(failure.value)
    assert "Resumed as they were: survivor" in message
    assert (f"Their QEMU died during the save and the guest's running state with it; each command line is recorded "
            f"in {state_dir}/<name>.stopped, and vm_power state=started boots them again: victim") in message
    assert "Could not be resumed" not in message
    assert vms[1].runstate() == "running"
    assert testbed.survival_problems(vms[1:], snapshot) == []
    # The partial state file is gone; what is left is the record of how to start the VM again.
    assert saved_files(state_dir) == []
    assert sorted(f for f in os.listdir(state_dir) if f.endswith(".stopped")) == ["victim.stopped"]
    # Its running state died with its QEMU: counted lost, whatever comes next.
    vms_lost, files_lost = lost(vms, state_dir)
    assert vms_lost == 1

    started = power_start(state_dir, names=["victim"], timeout=180)
    assert [(vm["name"], vm["how"]) for vm in started["vms"]] == [("victim", "qemu-died-during-save")]
    vms[0].refresh_pid()
    assert vms[0].agent("guest-ping") == {}
    assert vms[0].marker() != marker, "a fresh boot: the guest drew a new marker"
    assert testbed._cmdline(vms[0].pid) == argv  # pylint: disable=protected-access

    # The re-run: both VMs save and restore, the booted-again one with its new RAM.
    snapshot = testbed.memory_snapshot(vms)
    save(Selection(names=["victim", "survivor"]), state_dir, SaveOptions(reboot="none", timeout=60))
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("QEMU killed (SIGKILL)", "during save",
             "that guest's running state dies with its QEMU (no tool can undo); its command line recorded, vm_power "
             "booted it again; the others resumed", vms_lost, files_lost, finished(vms, snapshot))


# --------------------------------------------------------------------------- 7. state files


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "missing", "manifest mismatch"])
def test_damaged_state_file_is_refused_and_kept(vm_dir, vm_pool, campaign, damage):
    # One VM for the four kinds of damage: each test restores it from the good files.
    vms = [vm_pool.get("damaged")]
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["damaged"]), state_dir, SaveOptions(reboot="none", timeout=60))
    state_file, manifest_file = os.path.join(state_dir, "damaged.state"), os.path.join(state_dir, "damaged.json")
    shutil.copy(state_file, os.path.join(vm_dir, "good.state"))
    shutil.copy(manifest_file, os.path.join(vm_dir, "good.json"))
    if damage == "truncated":
        os.truncate(state_file, 4096)
    elif damage == "corrupted":
        with open(state_file, "r+b") as handle:
            handle.seek(2000)
            byte = handle.read(1)
            handle.seek(2000)
            handle.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "missing":
        os.unlink(state_file)
    else:
        with open(manifest_file, encoding="utf-8") as handle:
            data = json.load(handle)
        data["state_bytes"] += 1
        with open(manifest_file, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    with pytest.raises(ManifestError) as failure:
        restore(state_dir, options=RestoreOptions(timeout=30))
    assert os.path.exists(manifest_file)
    assert not vms[0].alive()

    shutil.copy(os.path.join(vm_dir, "good.state"), state_file)
    shutil.copy(os.path.join(vm_dir, "good.json"), manifest_file)
    restore(state_dir, options=RestoreOptions(timeout=60))
    assert str(failure.value).startswith("VM damaged: state file")
    # The damage is the injected fault; the tool refused to load it and lost nothing: both files were kept.
    campaign(f"state file {damage}", "between save and restore", "refused before loading; state file and manifest kept",
             0, 0, finished(vms, snapshot))


@pytest.mark.parametrize("mapped_ram", [False, True], ids=["plain", "mapped-ram"])
def test_damaged_ram_copy_is_loaded_held_and_discarded(vm_dir, campaign, mapped_ram):
    """Copied RAM is checked while QEMU loads it: a damaged file is loaded, never run, and its QEMU discarded."""
    vms = testbed.boot_vms(vm_dir, names=["rdamaged"], ram="private")
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["rdamaged"]), state_dir, SaveOptions(reboot="none", timeout=60, mapped_ram=mapped_ram))
    state_file = os.path.join(state_dir, "rdamaged.state")
    shutil.copy(state_file, os.path.join(vm_dir, "good.state"))
    # A byte of guest RAM: QEMU loads it without complaint, only the checksum can tell.
    offset = os.path.getsize(state_file) // 2
    with open(state_file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match=r"^VM rdamaged: state file .* does not match the XXH3-128 in its manifest "
                       r"\(chunk \d+ of \d+, from byte \d+\)") as failure:
        restore(state_dir, options=RestoreOptions(timeout=60))
    assert "both files are kept" in str(failure.value)
    assert {"rdamaged.json", "rdamaged.state"} <= set(os.listdir(state_dir))
    # The QEMU that loaded it was quit before its guest ran.
    assert vms[0].refresh_pid() is None

    shutil.copy(os.path.join(vm_dir, "good.state"), state_file)
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign(f"copied RAM damaged ({'mapped-ram' if mapped_ram else 'plain stream'})", "between save and restore",
             "loaded with the guest held stopped, refused by the checksum, that QEMU quit; state file and manifest kept",
             0, 0, finished(vms, snapshot))


# --------------------------------------------------------------------------- 8. the new QEMU cannot start


def test_new_qemu_fails_to_start(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["nostart"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["nostart"]), state_dir, SaveOptions(reboot="none", timeout=60))
    manifest_file = os.path.join(state_dir, "nostart.json")
    with open(manifest_file, encoding="utf-8") as handle:
        good = json.load(handle)
    broken = dict(good, argv=good["argv"] + ["-device", "no-such-device"])
    with open(manifest_file, "w", encoding="utf-8") as handle:
        json.dump(broken, handle)
    with pytest.raises(CprError, match="VM nostart: the new QEMU exited with status 1: .*no-such-device"):
        restore(state_dir, options=RestoreOptions(timeout=30))
    assert saved_files(state_dir) == ["nostart.json", "nostart.state"]
    vms_lost, files_lost = lost(vms, state_dir)

    changed_binary = dict(good, argv=["/usr/bin/qemu-system-gone"] + good["argv"][1:])
    with open(manifest_file, "w", encoding="utf-8") as handle:
        json.dump(changed_binary, handle)
    with pytest.raises(CprError, match="VM nostart: the new QEMU cannot be started: No such file or directory"):
        restore(state_dir, options=RestoreOptions(timeout=30))

    with open(manifest_file, "w", encoding="utf-8") as handle:
        json.dump(good, handle)
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("new QEMU fails to start", "restore (missing device, binary gone)", "QEMU's own words; files kept",
             vms_lost, files_lost, finished(vms, snapshot))


# --------------------------------------------------------------------------- 11. two runs at once


def test_two_runs_at_once(vm_dir, campaign):
    vms = testbed.boot_vms(vm_dir, names=["contended"])
    snapshot = testbed.memory_snapshot(vms)
    state_dir = os.path.join(vm_dir, "state")
    os.makedirs(state_dir, mode=0o700)
    descriptor = os.open(os.path.join(state_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    os.pwrite(descriptor, b"4242", 0)
    try:
        with pytest.raises(LockedError, match=r"another hypervisor.cpr run \(pid 4242\) holds the lock"):
            save(Selection(names=["contended"]), state_dir, SaveOptions(reboot="none", timeout=60))
    finally:
        os.close(descriptor)
    assert vms[0].runstate() == "running"
    vms_lost, files_lost = lost(vms, state_dir)
    save(Selection(names=["contended"]), state_dir, SaveOptions(reboot="none", timeout=60))
    restore(state_dir, options=RestoreOptions(timeout=60))
    campaign("two runs at once", "save while another run holds the host", "refused, naming the holder",
             vms_lost, files_lost, finished(vms, snapshot))


# --------------------------------------------------------------------------- 12. bad input


def test_bad_input_is_refused_before_touching(vm_dir, campaign, tmp_path):
    vms = testbed.boot_vms(vm_dir, names=["input"], ram="shm")
    cases = []

    def refused(case, error, call):
        with pytest.raises(error) as failure:
            call()
        cases.append(case)
        return str(failure.value)

    state_dir = os.path.join(vm_dir, "state")
    assert "no running VM is named nope" in refused(
        "unknown name", SelectionError, lambda: save(Selection(names=["nope"]), state_dir))
    assert "not a valid JMESPath expression" in refused(
        "bad JMESPath", SelectionError, lambda: save(Selection(query="[?cpr.ready"), state_dir))
    os.symlink(tmp_path, os.path.join(vm_dir, "link"))
    assert "is a symlink" in refused(
        "state dir is a symlink", StateDirError, lambda: save(Selection(names=["input"]), os.path.join(vm_dir, "link")))
    open_dir = os.path.join(vm_dir, "open")
    os.makedirs(open_dir)
    os.chmod(open_dir, 0o777)
    assert "writable by others" in refused(
        "state dir writable by others", StateDirError, lambda: save(Selection(names=["input"]), open_dir))
    assert "would not survive the kexec" in refused(
        "tmpfs RAM kept in place across a kexec", NotReadyError,
        lambda: save(Selection(names=["input"]), state_dir, SaveOptions(reboot="kexec", ignore_shared=True)))
    assert vms[0].runstate() == "running"
    assert not os.path.exists(state_dir) or saved_files(state_dir) == []
    campaign("bad input", "before anything", f"refused: {', '.join(cases)}", *lost(vms, state_dir), True)


# --------------------------------------------------------------------------- 13. QEMU-only updates (cpr-transfer)
# One VM ready for cpr-transfer, shared by these rows: it runs a copy of QEMU's binary (so a row can break the binary
# at its path, as a bad package would) and has a read-only drive (so a row can take a device file away). Each row
# leaves it running again, in whichever QEMU ended up with it.


@pytest.fixture
def transfer_vm(vm_pool):
    binary = os.path.join(vm_pool.workdir, "bin", "qemu-system-x86_64")
    if not os.path.exists(binary):
        os.makedirs(os.path.dirname(binary), mode=0o755)
        shutil.copy2(shutil.which("qemu-system-x86_64"), binary)
        with open(os.path.join(vm_pool.workdir, "extra.img"), "wb") as handle:
            handle.truncate(1 << 20)
    drive = os.path.join(vm_pool.workdir, "extra.img")
    vm = vm_pool.get("xfault", ram="memfd", transfer=True, binary=binary, timeout=300,
                     extra_args=("-drive", f"file={drive},if=none,id=extra0,format=raw,readonly=on"))
    return vm, os.path.join(vm_pool.workdir, "state"), binary


def _update(name, state_dir, timeout=30):
    return update(Selection(names=[name]), state_dir, UpdateOptions(method="transfer", timeout=timeout))


def _transferred(vm, state_dir, snapshot):
    """A re-run transfers the VM; its guest RAM is the same; no record, manifest or socket is left."""
    [result] = _update(vm.name, state_dir)["vms"]
    assert result["method"] == "transfer" and vm.refresh_pid() == result["pid_after"]
    assert [f for f in os.listdir(state_dir) if not f.endswith(".log") and not f.startswith(".")] == []
    assert not [path for path in Channels.for_vm(vm.name).paths if os.path.exists(path)]
    return finished([vm], snapshot)


def _in_old_qemu(vm, pid, state_dir):
    """The VM runs in its old QEMU as it was; the new one is gone, with its record and sockets."""
    assert vm.refresh_pid() == pid and vm.runstate() == "running"
    assert not os.path.exists(os.path.join(state_dir, f"{vm.name}.transfer"))
    assert not [path for path in Channels.for_vm(vm.name).paths if os.path.exists(path)]
    assert testbed.qemu_pids(vm.qmp_socket) == [pid]


def test_transfer_new_qemu_fails_to_start(transfer_vm, campaign):
    vm, state_dir, binary = transfer_vm
    snapshot = testbed.memory_snapshot([vm])
    pid = vm.refresh_pid()
    drive = os.path.join(os.path.dirname(os.path.dirname(binary)), "extra.img")
    # A device file gone: the new QEMU takes the descriptors on the cpr channel, then fails to open the file and
    # exits; the old one sees its main channel refused and goes on running the guest.
    os.rename(drive, drive + ".away")
    try:
        # Seen first either as the new QEMU gone or as the old one's migration failed: the new one's words either way.
        with pytest.raises(CprError, match=r"VM xfault: .*; the new QEMU had exited with status 1: "
                                           r".*Could not open '.*extra\.img': No such file or directory") as failure:
            _update(vm.name, state_dir)
    finally:
        os.rename(drive + ".away", drive)
    # It had bound the VM's QMP and agent socket paths before it failed: the old QEMU's are back there.
    assert f"old QEMU's sockets were put back at {vm.qmp_socket}, {vm.qga_socket}" in str(failure.value)
    _in_old_qemu(vm, pid, state_dir)
    missing = lost([vm], state_dir)
    # A broken binary at the old one's path (a bad package, put in place as dpkg does: renamed over the old file).
    shutil.copy2(binary, binary + ".good")
    with open(binary + ".new", "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\necho 'qemu-system-x86_64: error while loading shared libraries' >&2\nexit 127\n")
    os.chmod(binary + ".new", 0o755)
    os.replace(binary + ".new", binary)
    try:
        with pytest.raises(CprError, match=r"the new QEMU exited with status 127 before it listened: .*shared libraries"):
            _update(vm.name, state_dir)
    finally:
        os.replace(binary + ".good", binary)
    _in_old_qemu(vm, pid, state_dir)
    broken = lost([vm], state_dir)
    campaign("new QEMU fails to start", "QEMU update by transfer (missing device, broken binary)",
             "QEMU's own words; new process gone, the sockets it took put back; VM untouched in its old QEMU",
             missing[0] + broken[0], missing[1] + broken[1], _transferred(vm, state_dir, snapshot))


def test_transfer_new_qemu_dies_during_the_transfer(transfer_vm, campaign):
    vm, state_dir, _binary = transfer_vm
    snapshot = testbed.memory_snapshot([vm])
    pid = vm.refresh_pid()
    cpr_socket = Channels.for_vm(vm.name).cpr

    def kill_new_qemu():
        # Held as soon as it listens, so the old QEMU's migrate is under way when it dies.
        deadline, new = time.monotonic() + 60, []
        while not new and time.monotonic() < deadline:
            new = [owner for owner in socket_owners(cpr_socket) if owner != pid]
            time.sleep(0.0005)
        [new] = new
        os.kill(new, signal.SIGSTOP)
        time.sleep(2)
        os.kill(new, signal.SIGKILL)

    killer = in_background(kill_new_qemu)
    with pytest.raises(CprError, match="VM xfault:"):
        _update(vm.name, state_dir)
    killer.join()
    _in_old_qemu(vm, pid, state_dir)
    campaign("new QEMU dies", "during the transfer (migrate issued)", "old QEMU resumed; the VM never left it",
             *lost([vm], state_dir), _transferred(vm, state_dir, snapshot))


def test_transfer_old_qemu_frozen(transfer_vm, campaign):
    vm, state_dir, _binary = transfer_vm
    snapshot = testbed.memory_snapshot([vm])
    pid = vm.refresh_pid()

    def freeze_old_qemu():
        # The transfer starts: its new QEMU is there; the old one stops answering.
        wait_for_path(Channels.for_vm(vm.name).cpr)
        os.kill(pid, signal.SIGSTOP)

    freezer = in_background(freeze_old_qemu)
    try:
        with pytest.raises(CprError, match="VM xfault:") as failure:
            _update(vm.name, state_dir)
        freezer.join()
        message = str(failure.value)
        assert "could not be resumed" in message
    finally:
        os.kill(pid, signal.SIGCONT)
    # Thawed, the old QEMU still holds the guest. Frozen before its migrate, it ran on and the migrate it had queued
    # finds no listener; frozen during it, the migration ends one way or the other and the guest may be paused: the
    # operator runs cont, as the error says.
    assert "run cont on it if query-status says paused or postmigrate" in message
    wait_until(lambda: vm.qmp("query-migrate").get("status") in (None, "failed", "cancelled", "completed"), 60)
    if vm.runstate() != "running":
        vm.qmp("cont")
    _in_old_qemu(vm, pid, state_dir)
    campaign("old QEMU frozen (SIGSTOP)", "when the transfer starts (new QEMU listening)",
             "timed out, new QEMU ended; VM in the old QEMU once thawed (cont if it had paused)", *lost([vm], state_dir),
             _transferred(vm, state_dir, snapshot))


def test_transfer_cpr_socket_path_taken(transfer_vm, campaign):
    vm, state_dir, _binary = transfer_vm
    snapshot = testbed.memory_snapshot([vm])
    pid = vm.refresh_pid()
    channels = Channels.for_vm(vm.name)
    os.makedirs(channels.directory, mode=0o700, exist_ok=True)
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stranger.bind(channels.cpr)
        stranger.listen()
        with pytest.raises(CprError, match=rf"VM xfault: the cpr socket path {channels.cpr} of its transfer is taken: "
                                           rf".*pid {os.getpid()}"):
            _update(vm.name, state_dir)
        assert vm.refresh_pid() == pid and vm.runstate() == "running"
    finally:
        stranger.close()
    vms_lost, files_lost = lost([vm], state_dir)
    # The stranger's socket file stays behind; nobody listens on it any more, so the re-run removes it.
    assert os.path.exists(channels.cpr)
    campaign("cpr socket path taken", "before the new QEMU starts", "refused naming the listener; nothing touched",
             vms_lost, files_lost, _transferred(vm, state_dir, snapshot))
