"""The whole cpr-reboot cycle on real test-bed VMs (TCG, real guest agent, real QMP).

Every cycle proves the guest's RAM survived: the random marker in its tmpfs
is identical and its counter went on from where it was.
"""

import asyncio
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils import _process
from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import restore_argv
from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CprError,
    ManifestError,
    NotAnsweringError,
    NotReadyError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import Launcher, bring_back
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import RestoreOptions, restore
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status as vm_status
from ansible_collections.hypervisor.cpr.plugins.module_utils._suspend import set_states

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What the example unit examples/systemd/qemu-cpr@.service runs.
UNIT_WRAPPER = os.path.join(REPO_ROOT, "examples", "systemd", "qemu-cpr-start")


def _memory(vms):
    return {vm.name: (vm.marker(), vm.counter()) for vm in vms}


def _assert_survived(vms, before):
    for vm in vms:
        vm.refresh_pid()
        marker, counter = before[vm.name]
        assert vm.marker() == marker, f"{vm.name}: guest RAM changed"
        assert vm.counter() >= counter, f"{vm.name}: counter went back"
        assert vm.agent("guest-ping") == {}


def _names(result):
    return sorted(vm["name"] for vm in result["vms"])


def test_cycle_running_paused_and_pc(vm_dir):
    q35 = testbed.boot_vms(vm_dir, names=["q35run"], ram="shared-file", machine="q35")
    pc = testbed.boot_vms(vm_dir, names=["pcpaused"], ram="shared-file", machine="pc")
    vms = q35 + pc
    before = _memory(vms)
    pc[0].qmp("stop")
    state_dir = os.path.join(vm_dir, "state")

    saved = save(Selection(names=["q35run", "pcpaused"]), state_dir, SaveOptions(reboot="none", timeout=60))
    assert _names(saved) == ["pcpaused", "q35run"]
    by_name = {vm["name"]: vm for vm in saved["vms"]}
    assert by_name["q35run"]["ram_in_place"] and by_name["q35run"]["runstate_before"] == "running"
    assert by_name["pcpaused"]["runstate_before"] == "paused"
    assert all(not vm.alive() for vm in vms), "every QEMU quits after the save"
    expected = [".hypervisor-cpr.lock", "pcpaused.json", "pcpaused.state", "q35run.json", "q35run.state"]
    assert sorted(os.listdir(state_dir)) == expected
    assert os.stat(os.path.join(state_dir, "q35run.state")).st_mode & 0o777 == 0o600
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    with open(os.path.join(state_dir, "q35run.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert manifest["machine_type"] == "pc-q35-10.0" or manifest["machine_type"].startswith("pc-q35-")
    assert manifest["capabilities"] == {"x-ignore-shared": True, "mapped-ram": False, "multifd": False}

    again = save(Selection(names=["q35run", "pcpaused"]), state_dir, SaveOptions(reboot="none", timeout=60))
    assert not again["changed"] and all(not vm["changed"] for vm in again["vms"])

    restored = restore(state_dir, options=RestoreOptions(timeout=60))
    by_name = {vm["name"]: vm for vm in restored["vms"]}
    assert by_name["q35run"]["runstate"] == "running"
    assert by_name["pcpaused"]["runstate"] == "paused"
    assert all(vm["downtime_seconds"] > 0 for vm in restored["vms"])
    assert [f for f in os.listdir(state_dir) if f.endswith((".json", ".state"))] == []
    pc[0].refresh_pid()
    pc[0].qmp("cont")
    _assert_survived(vms, before)
    assert testbed.TestVM.qmp(q35[0], "qom-get", path="/machine", property="type").startswith("pc-q35-")

    assert not restore(state_dir, options=RestoreOptions(timeout=60))["changed"]


def test_private_ram_is_copied_into_the_state_file(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["priv"], ram="private")
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    saved = save(Selection(names=["priv"]), state_dir, SaveOptions(reboot="kexec", timeout=60))
    [entry] = saved["vms"]
    assert not entry["ram_in_place"]
    # 256 MiB of RAM, mostly zero pages; the guest's own memory is in the file.
    assert entry["state_bytes"] > 4 << 20
    restore(state_dir, options=RestoreOptions(timeout=60))
    _assert_survived(vms, before)


def test_copied_ram_of_a_paused_vm_comes_back_paused(vm_dir):
    """The restore holds a loading guest stopped until its checksum passed, then starts only a guest that ran."""
    vms = testbed.boot_vms(vm_dir, names=["cpaused"], ram="private")
    before = _memory(vms)
    vms[0].qmp("stop")
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["cpaused"]), state_dir, SaveOptions(reboot="none", timeout=60))
    [restored] = restore(state_dir, options=RestoreOptions(timeout=60))["vms"]
    vms[0].refresh_pid()
    assert restored["runstate"] == "paused" and vms[0].runstate() == "paused"
    vms[0].qmp("cont")
    _assert_survived(vms, before)


def _watch(path, cmd):
    return asyncio.run(testbed._call(pathlib.Path(path), False, cmd, {}, 5.0))  # pylint: disable=protected-access


def _runstate_once_loaded(watch, timeout=120.0):
    """On a second QMP monitor of the new QEMU: the runstate once its load completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _watch(watch, "query-migrate").get("status") == "completed":
                return _watch(watch, "query-status")["status"]
        except (OSError, EOFError, testbed.QMPError, testbed.TestbedError, asyncio.TimeoutError):
            pass
        time.sleep(0.05)
    raise AssertionError("the new QEMU did not complete its load")


def test_copied_ram_is_held_stopped_until_its_checksum_passed(vm_dir):
    """While the checksum runs, the loaded guest does not: a checksum slower than the load sees it paused."""
    watch = os.path.join(vm_dir, "watch.qmp")
    vms = testbed.boot_vms(vm_dir, names=["held"], ram="private",
                           extra_args=["-qmp", f"unix:{watch},server=on,wait=off"])
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["held"]), state_dir, SaveOptions(reboot="none", timeout=60))
    seen = []
    with StateDir.open(state_dir) as directory:
        manifest = directory.read_manifest("held")

        def slow_check():
            directory.verify_state(manifest)
            seen.append(_runstate_once_loaded(watch))

        asyncio.run(bring_back(manifest, directory, Launcher(), 120, check=slow_check))
    assert seen == ["paused"]
    vms[0].refresh_pid()
    assert vms[0].runstate() == "running"
    # cpr_restore takes the QEMU the restore started as restored, and removes the files.
    restore(state_dir, options=RestoreOptions(timeout=60))
    assert not os.path.exists(os.path.join(state_dir, "held.json"))
    _assert_survived(vms, before)


def test_mapped_ram_then_one_stream_on_the_same_qemu(vm_dir):
    """A QEMU restored from a mapped-ram save keeps the capability on; the next plain save must still load."""
    vms = testbed.boot_vms(vm_dir, names=["mram"], ram="private")
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    for mapped_ram in (True, False):
        save(Selection(names=["mram"]), state_dir, SaveOptions(reboot="none", timeout=60, mapped_ram=mapped_ram))
        with open(os.path.join(state_dir, "mram.json"), encoding="utf-8") as handle:
            assert json.load(handle)["capabilities"].get("mapped-ram", False) is mapped_ram
        restore(state_dir, options=RestoreOptions(timeout=60))
        _assert_survived(vms, before)


def test_a_save_finishes_one_that_stopped_before_quitting(vm_dir):
    """A run that died between sealing the manifest and quitting QEMU leaves it in postmigrate: the next save quits it."""
    vms = testbed.boot_vms(vm_dir, names=["unquit"])
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["unquit"]), state_dir, SaveOptions(reboot="none", timeout=60, quit_after=False))
    assert vms[0].runstate() == "postmigrate"
    planned = save(Selection(names=["unquit"]), state_dir, SaveOptions(reboot="none", timeout=60), check_mode=True)
    assert planned["changed"] and vms[0].alive()
    again = save(Selection(names=["unquit"]), state_dir, SaveOptions(reboot="none", timeout=60))
    [entry] = again["vms"]
    assert entry["changed"] and entry["quit"] and not vms[0].alive()
    restore(state_dir, options=RestoreOptions(timeout=60))
    _assert_survived(vms, before)


@pytest.mark.parametrize("ram", ["shared-file", "private"])
def test_guest_suspended_by_qga_suspend_comes_back_suspended(vm_dir, ram):
    # private: the RAM is copied, so the restore loads it with the guest held stopped until the checksum passed.
    vms = testbed.boot_vms(vm_dir, names=["sleepy", "woken"], ram=ram)
    before = _memory(vms)
    [result] = set_states(Selection(names=["sleepy"]), "suspended", 30)
    assert result["changed"] and result["runstate"] == "suspended"
    assert not set_states(Selection(names=["sleepy"]), "suspended", 30)[0]["changed"]
    state_dir = os.path.join(vm_dir, "state")

    # suspend=all: the module suspends "woken" itself and wakes it after the restore.
    result = save(Selection(names=["sleepy", "woken"]), state_dir, SaveOptions(reboot="none", timeout=60, suspend="all"))
    saved = {vm["name"]: vm for vm in result["vms"]}
    assert (saved["sleepy"]["suspended_by_us"], saved["woken"]["suspended_by_us"]) == (False, True)
    restored = {vm["name"]: vm for vm in restore(state_dir, options=RestoreOptions(timeout=60))["vms"]}
    assert restored["sleepy"]["runstate"] == "suspended"
    assert restored["woken"]["runstate"] == "running"

    [woke] = set_states(Selection(names=["sleepy"]), "awake", 30)
    assert woke["runstate"] == "running"
    _assert_survived(vms, before)


def test_check_mode_changes_nothing(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["checked"])
    state_dir = os.path.join(vm_dir, "state")
    result = save(Selection(names=["checked"]), state_dir, SaveOptions(reboot="none"), check_mode=True)
    assert result["changed"] and result["would_save"] == ["checked"]
    assert not os.path.exists(state_dir)
    assert vms[0].runstate() == "running"
    assert set_states(Selection(names=["checked"]), "suspended", 30, check_mode=True)[0]["changed"]
    assert vms[0].runstate() == "running"


def test_agent_not_answering_resumes_every_vm(vm_dir, qemu):
    """all_or_nothing: one VM cannot be suspended, so the other, already saved, is resumed too."""
    vms = testbed.boot_vms(vm_dir, names=["healthy"])
    before = _memory(vms)
    qmp, qga = os.path.join(vm_dir, "mute.qmp"), os.path.join(vm_dir, "mute.qga")
    # A guest agent socket with no agent behind it: firmware only, no guest.
    qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", "-name", "mute",
               "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off", "-device", "virtio-serial",
               "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0", wait_for=qmp)
    state_dir = os.path.join(vm_dir, "state")
    with pytest.raises(CprError) as failure:
        save(Selection(names=["healthy", "mute"]), state_dir, SaveOptions(reboot="none", timeout=5, suspend="all"))
    message = str(failure.value)
    assert "VM mute: the guest agent on" in message and "did not answer within 5 s" in message
    assert "Resumed as they were: healthy, mute" in message or "Resumed as they were: mute, healthy" in message
    assert vms[0].runstate() == "running"
    assert [f for f in os.listdir(state_dir) if f.endswith((".json", ".state"))] == []
    _assert_survived(vms, before)


def test_not_enough_space_is_refused_before_touching(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["roomless"], ram="private")
    state_dir = os.path.join(vm_dir, "state")
    os.makedirs(state_dir, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M,mode=0700", "tmpfs", state_dir], check=True)
    try:
        with pytest.raises(NotReadyError, match=r"has 6\d MiB free, the save needs about 320 MiB .RAM is copied for roomless"):
            save(Selection(names=["roomless"]), state_dir, SaveOptions(reboot="none", timeout=60))
    finally:
        subprocess.run(["umount", "-l", state_dir], check=True)
    assert vms[0].runstate() == "running"


def test_volatile_ram_refused_for_kexec(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["shmvm"], ram="shm")
    state_dir = os.path.join(vm_dir, "state")
    with pytest.raises(NotReadyError, match="VM shmvm is not ready: the RAM of memory backend ram0 would stay in place"):
        save(Selection(names=["shmvm"]), state_dir, SaveOptions(reboot="kexec", timeout=60))
    assert vms[0].runstate() == "running"
    with pytest.raises(ManifestError, match="no manifest"):
        restore(state_dir, names=["nothere"], options=RestoreOptions(timeout=5))


def test_save_that_times_out_resumes_the_vm(vm_dir):
    vms = testbed.boot_vms(vm_dir, names=["slow"], ram="private")
    # Incompressible guest memory makes the copy take far longer than the timeout.
    vms[0].guest_exec(["dd", "if=/dev/urandom", "of=/noise", "bs=1M", "count=64"], timeout=120)
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    # 1 ms: even at the disk's speed (max-bandwidth lifted), 64 MiB of noise takes longer.
    with pytest.raises(CprError, match=r"VM slow: the save did not complete within 0.001 s"):
        save(Selection(names=["slow"]), state_dir, SaveOptions(reboot="none", timeout=0.001))
    assert vms[0].runstate() == "running"
    assert [f for f in os.listdir(state_dir) if f.endswith((".json", ".state"))] == []
    _assert_survived(vms, before)


def test_keep_state_keeps_files_that_do_not_look_like_a_pending_save(vm_dir):
    """keep_state keeps the files for inspection under .restored names; the VM can be saved and restored again."""
    vms = testbed.boot_vms(vm_dir, names=["keeper"])
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=["keeper"]), state_dir, SaveOptions(reboot="none", timeout=60))
    restored = restore(state_dir, options=RestoreOptions(timeout=60, keep_state=True))
    assert [vm["state_kept"] for vm in restored["vms"]] == [True]
    kept = sorted(f for f in os.listdir(state_dir) if not f.startswith("."))
    assert kept == ["keeper.json.restored", "keeper.log", "keeper.state.restored"]
    for name in ("keeper.json.restored", "keeper.state.restored"):
        assert os.stat(os.path.join(state_dir, name)).st_mode & 0o777 == 0o600
    with open(os.path.join(state_dir, "keeper.json.restored"), encoding="utf-8") as handle:
        first = json.load(handle)
    assert first["name"] == "keeper"
    assert os.path.getsize(os.path.join(state_dir, "keeper.state.restored")) == first["state_bytes"]
    _assert_survived(vms, before)

    # The kept files are no pending save: the running VM is saved again, not skipped.
    again = save(Selection(names=["keeper"]), state_dir, SaveOptions(reboot="none", timeout=60))
    assert [(vm["changed"], vm["quit"]) for vm in again["vms"]] == [(True, True)]
    assert not vms[0].alive()
    restore(state_dir, options=RestoreOptions(timeout=60, keep_state=True))
    # A second kept restore replaces the first one's files.
    assert sorted(f for f in os.listdir(state_dir) if f.endswith(".restored")) == [
        "keeper.json.restored", "keeper.state.restored"]
    with open(os.path.join(state_dir, "keeper.json.restored"), encoding="utf-8") as handle:
        assert json.load(handle)["paused_at"] > first["paused_at"]
    _assert_survived(vms, before)
    # kexec refused a running VM beside a kept manifest ("a manifest from an earlier save exists"): the check
    # mode runs every check before the blackout.
    assert save(Selection(names=["keeper"]), state_dir, SaveOptions(reboot="kexec", timeout=60), check_mode=True)["would_save"] == ["keeper"]


def test_downtime_ends_when_the_vm_runs_not_when_its_agent_answers(vm_dir):
    """downtime_seconds: from paused_at to the VM back in its old runstate; the wait for its agent is not in it."""
    vms = testbed.boot_vms(vm_dir, names=["lateagent"])
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    [saved] = save(Selection(names=["lateagent"]), state_dir, SaveOptions(reboot="none", timeout=60))["vms"]
    held = threading.Event()

    def hold_agent_channel():
        """Be the agent socket's one client for 4 s as soon as the new QEMU listens: the restore's ping waits."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX) as client:
                try:
                    client.connect(str(vms[0].qga_socket))
                except OSError:
                    time.sleep(0.001)
                    continue
                held.set()
                time.sleep(4)
                return

    holder = threading.Thread(target=testbed.in_realtime, args=(hold_agent_channel,))
    holder.start()
    try:
        [result] = restore(state_dir, options=RestoreOptions(timeout=60))["vms"]
        returned = time.time()
    finally:
        holder.join()
    assert held.is_set()
    assert result["restore_seconds"] > 3.5, "the restore waited for the agent"
    back_at = saved["paused_at"] + result["downtime_seconds"]
    assert 0 < result["downtime_seconds"] and returned - back_at > 3, "the downtime ends before the agent wait"
    _assert_survived(vms, before)


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [arg.decode() for arg in handle.read().split(b"\0")[:-1]]


def _wait_for_agent(vm, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if vm.agent("guest-ping") == {}:
                return
        except Exception:  # pylint: disable=broad-exception-caught
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_launch_systemd_with_the_example_unit(vm_dir, monkeypatch):
    """launch=systemd, with the example unit's ExecStart run where systemd would run it (PID 1 is not systemd here)."""
    vms = testbed.boot_vms(vm_dir, names=["unitvm"])
    before = _memory(vms)
    state_dir = os.path.join(vm_dir, "state")
    args_dir = os.path.join(vm_dir, "args")
    os.makedirs(args_dir)
    with open(os.path.join(args_dir, "unitvm.args"), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{arg}\n" for arg in vms[0].argv))
    environment = {"QEMU_CPR_STATE_DIR": state_dir, "QEMU_CPR_ARGS_DIR": args_dir}
    started = []

    def systemctl(command, name):
        """What systemd does for "systemctl start qemu-cpr@<name>.service": run ExecStart with the unit's environment."""
        assert command == ["systemctl", "start", f"qemu-cpr@{name}.service"]
        with open(os.path.join(vm_dir, f"{name}.unit.log"), "ab") as log:
            started.append(subprocess.Popen([UNIT_WRAPPER, name], env=dict(os.environ, **environment),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True))

    monkeypatch.setattr(_process, "run_starter", systemctl)
    unit = Launcher("systemd", "qemu-cpr@{name}.service")
    command_lines = []
    for cycle in range(2):
        save(Selection(names=["unitvm"]), state_dir, SaveOptions(reboot="none", timeout=60))
        with StateDir.open(state_dir) as directory:
            manifest = directory.read_manifest("unitvm")
        [result] = restore(state_dir, options=RestoreOptions(timeout=60, launcher=unit))["vms"]
        assert result["runstate"] == "running"
        # The recorded command line, the versioned machine pinned once, waiting on the recorded QMP socket.
        command_lines.append(_cmdline(result["pid"]))
        assert command_lines[-1] == restore_argv(manifest.argv, manifest.machine_type)
        assert command_lines[-1][-4:] == ["-machine", manifest.machine_type, "-incoming", "defer"]
        _assert_survived(vms, before)
        assert len(started) == cycle + 1
    assert command_lines[0] == command_lines[1]

    # A unit whose QEMU does not come up (here the wrapper refuses a manifest without a command line): the error
    # names the unit and where its output is.
    save(Selection(names=["unitvm"]), state_dir, SaveOptions(reboot="none", timeout=60))
    broken = os.path.join(vm_dir, "broken")
    os.makedirs(broken)
    with open(os.path.join(broken, "unitvm.json"), "w", encoding="utf-8") as handle:
        handle.write("{}")
    environment["QEMU_CPR_STATE_DIR"] = broken
    with pytest.raises(NotAnsweringError) as failure:
        restore(state_dir, options=RestoreOptions(timeout=3, launcher=unit))
    message = str(failure.value)
    assert "VM unitvm: the new QEMU did not answer" in message and "systemd started it in qemu-cpr@unitvm.service" in message
    assert "journalctl -u qemu-cpr@unitvm.service" in message
    assert started[-1].wait(10) == 1
    with open(os.path.join(vm_dir, "unitvm.unit.log"), encoding="utf-8") as handle:
        assert "has no command line or machine type" in handle.read()
    environment["QEMU_CPR_STATE_DIR"] = state_dir
    restore(state_dir, options=RestoreOptions(timeout=60, launcher=unit))
    _assert_survived(vms, before)

    # Without a manifest the unit boots the VM afresh from its .args.
    vms[0].kill()
    systemctl(["systemctl", "start", "qemu-cpr@unitvm.service"], "unitvm")
    _wait_for_agent(vms[0])
    vms[0].refresh_pid()
    assert _cmdline(vms[0].pid) == vms[0].argv
    assert vms[0].marker() != before["unitvm"][0], "a fresh boot makes a new marker"


def test_all_or_nothing_false_keeps_the_saved_vm_saved(vm_dir, qemu):
    """all_or_nothing=false: the VM whose agent does not answer is resumed; the other stays saved, and restores."""
    vms = testbed.boot_vms(vm_dir, names=["kept"])
    before = _memory(vms)
    qmp, qga = os.path.join(vm_dir, "mute.qmp"), os.path.join(vm_dir, "mute.qga")
    # A guest agent socket with no agent behind it: firmware only, no guest.
    mute = qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", "-name", "mute",
                      "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off", "-device", "virtio-serial",
                      "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0", wait_for=qmp)
    state_dir = os.path.join(vm_dir, "state")
    with pytest.raises(CprError) as failure:
        save(Selection(names=["kept", "mute"]), state_dir, SaveOptions(reboot="none", timeout=5, suspend="all", all_or_nothing=False))
    message = str(failure.value)
    assert "VM mute: the guest agent on" in message and "did not answer within 5 s" in message
    assert "Resumed as they were: mute" in message
    assert message.endswith("Saved: kept. Fix the cause and run again; saved VMs are restored by cpr_restore")
    assert mute.poll() is None and testbed.TestVM.runstate(_Socket(qmp)) == "running"
    assert not vms[0].alive(), "the saved VM's QEMU quit"
    assert sorted(f for f in os.listdir(state_dir) if f.endswith((".json", ".state"))) == ["kept.json", "kept.state"]
    with open(os.path.join(state_dir, "kept.json"), encoding="utf-8") as handle:
        assert json.load(handle)["suspended_by_us"] is True

    restored = restore(state_dir, options=RestoreOptions(timeout=60))
    assert [(vm["name"], vm["runstate"]) for vm in restored["vms"]] == [("kept", "running")]
    _assert_survived(vms, before)


class _Socket:  # pylint: disable=too-few-public-methods
    """Just enough of a TestVM for its qmp() and runstate() on a hand-started QEMU."""

    def __init__(self, qmp_socket):
        self.qmp_socket = pathlib.Path(qmp_socket)

    def qmp(self, cmd, arguments=None, /, **kwargs):
        return testbed.TestVM.qmp(self, cmd, arguments, **kwargs)


def test_qga_suspend_without_an_agent_socket_names_the_vm(qemu, tmp_path):
    qmp = str(tmp_path / "agentless.qmp")
    qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", "-name", "agentless", wait_for=qmp)
    with pytest.raises(CprError, match=r"^VM agentless: the VM has no guest agent socket, so its guest cannot be "
                                       r"suspended\. Add a virtserialport named org\.qemu\.guest_agent\.0"):
        set_states(Selection(names=["agentless"]), "suspended", 5)
    assert testbed.TestVM.runstate(_Socket(qmp)) == "running"


def test_qga_suspend_two_guests_at_once_and_a_timeout(vm_dir):
    # pc: its guests suspend again after a wake (q35 with SeaBIOS does not; see the test below).
    vms = testbed.boot_vms(vm_dir, names=["duo1", "duo2"], machine="pc")
    before = _memory(vms)
    names = ["duo1", "duo2"]
    asleep = set_states(Selection(names=names), "suspended", 30)
    assert [(vm["name"], vm["changed"], vm["runstate_before"], vm["runstate"]) for vm in asleep] == [
        ("duo1", True, "running", "suspended"), ("duo2", True, "running", "suspended")]
    assert [vm.runstate() for vm in vms] == ["suspended", "suspended"]
    awake = set_states(Selection(names=names), "awake", 30)
    assert [(vm["name"], vm["changed"], vm["runstate"]) for vm in awake] == [
        ("duo1", True, "running"), ("duo2", True, "running")]
    _assert_survived(vms, before)

    # The kernel's PM test mode goes through the suspend for 5 s without ever entering S3: duo1 times out and is
    # left as it is; duo2 of the same call is suspended all the same, and the error says so.
    vms[0].guest_exec(["sh", "-c", "echo devices > /sys/power/pm_test"])
    with pytest.raises(CprError) as failure:
        set_states(Selection(names=names), "suspended", 3)
    [error] = failure.value.result["errors"]
    assert error["name"] == "duo1" and error["msg"].startswith(
        "VM duo1: the guest did not reach the suspended runstate within 3 s after guest-suspend-ram; "
        "it is left as it is (running). ")
    assert str(failure.value).startswith(error["msg"] + ". Suspended: duo2. Fix the cause and run again")
    assert [(vm["name"], vm["runstate"]) for vm in failure.value.result["vms"]] == [("duo2", "suspended")]
    assert [vm.runstate() for vm in vms] == ["running", "suspended"]
    deadline = time.monotonic() + 60
    while True:
        try:
            vms[0].guest_exec(["sh", "-c", "echo none > /sys/power/pm_test"])
            break
        except Exception:  # pylint: disable=broad-exception-caught
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    awake = set_states(Selection(names=names), "awake", 30)
    assert [(vm["name"], vm["changed"], vm["runstate"]) for vm in awake] == [
        ("duo1", False, "running"), ("duo2", True, "running")]
    _assert_survived(vms, before)


def test_a_q35_guest_that_cannot_suspend_again_is_refused_by_name(vm_dir):
    """q35 with SeaBIOS: after one S3 resume the guest's ACPI PM block is unmapped, so it cannot suspend again.

    system_wakeup resets the ICH9 LPC bridge and SeaBIOS's resume path does not map its PM I/O block again, so the
    guest's next suspend request never reaches QEMU. Asked anyway, it would come straight back and the save would
    time out; the engine reads the block's base from QOM and refuses by name, before asking, leaving the guest running.
    """
    [guest] = testbed.boot_vms(vm_dir, names=["twice"])
    before = _memory([guest])
    assert not vm_status(Selection(names=["twice"]), FactsOptions(timeout=5))["vms"][0]["s3_blocked"]
    for state in ("suspended", "awake"):
        [result] = set_states(Selection(names=["twice"]), state, 30)
        assert result["changed"]
    [facts] = vm_status(Selection(names=["twice"]), FactsOptions(timeout=5))["vms"]
    assert facts["s3_blocked"] and facts["runstate"] == "running"

    refusal = "VM twice: the guest cannot suspend to RAM again in this boot: after its last resume its firmware left"
    with pytest.raises(NotReadyError, match=refusal):
        set_states(Selection(names=["twice"]), "suspended", 30)
    assert guest.runstate() == "running"
    state_dir = os.path.join(vm_dir, "state")
    with pytest.raises(CprError, match=refusal) as failure:
        save(Selection(names=["twice"]), state_dir, SaveOptions(reboot="none", timeout=30, suspend="all"))
    assert "Resumed as they were: twice" in str(failure.value)
    assert guest.runstate() == "running" and [f for f in os.listdir(state_dir) if not f.startswith(".")] == []
    _assert_survived([guest], before)
