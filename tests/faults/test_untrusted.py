"""Fault campaign, issue 13: VMs we cannot see, own or trust. Real processes, real QEMU, a real user nobody.

1. A saved VM is started cold from its command line (as an enabled unit, a manager's autostart or an HA manager
   would) before the restore: the restore refuses it by name, keeps the saved state, and a re-run brings the saved
   VM back once the cold one is gone.
2. A process running as nobody poses as QEMU: its argv[0] is a script nobody planted. It dies when asked to
   migrate; the VM is started again from the binary it ran (/proc/<pid>/exe) as nobody, never the planted path
   as root. A QEMU binary nobody could have replaced is refused before anything is touched.
3. Another user races renames of the state directory under a parent it may write: every call refuses the
   directory before reading it, nothing planted runs, and a re-run restores once the parent is root's.
4. An empty list from an inventory variable: refused by every module, no VM touched.
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotReadyError, StateDirError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._power import start as power_start
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import RestoreOptions, restore
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

NOBODY = pwd.getpwnam("nobody")
QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(state_dir):
    return sorted(f for f in os.listdir(state_dir) if not f.startswith(".")) if os.path.isdir(state_dir) else []


def _uid(pid):
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        return int(next(line for line in handle if line.startswith("Uid:")).split()[2])


def _wait(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --------------------------------------------------------------------------- 1. a cold boot of a saved VM


def test_a_saved_vm_started_cold_is_not_taken_for_restored(vm_dir, campaign):
    name = f"cold{os.getpid()}"
    [vm] = testbed.boot_vms(vm_dir, names=[name], ram="private")
    snapshot = testbed.memory_snapshot([vm])
    state_dir = os.path.join(vm_dir, "state")
    save(Selection(names=[name]), state_dir, SaveOptions(reboot="none", timeout=60))

    # Something else starts the VM's own command line afresh, as an enabled unit would after a reboot.
    cold = testbed.start_qemu(vm.argv, vm.log)
    _wait(lambda: testbed.find_qemu_pid(vm.qmp_socket) == cold and os.path.exists(vm.qmp_socket))
    with pytest.raises(CprError) as refused:
        restore(state_dir, options=RestoreOptions(timeout=60))
    message = str(refused.value)
    assert f"VM {name}: a QEMU of this name runs that no restore started (pid {cold}, started " in message
    assert "its saved state and manifest are kept" in message.lower()
    assert _files(state_dir) == [f"{name}.json", f"{name}.state"]
    # A save of the same state directory refuses it too, instead of taking it for a restore in progress.
    with pytest.raises(CprError, match=f"a QEMU of this name runs that no restore started .pid {cold}"):
        save(Selection(names=[name]), state_dir, SaveOptions(reboot="none", timeout=60))
    with StateDir.open(state_dir) as directory:
        directory.verify_state(directory.read_manifest(name))

    # The operator stops the cold one; a re-run brings the saved VM back, its RAM as it was.
    os.kill(cold, signal.SIGKILL)
    _wait(lambda: testbed.find_qemu_pid(vm.qmp_socket) is None)
    restore(state_dir, options=RestoreOptions(timeout=60))
    vm.refresh_pid()
    assert testbed.survival_problems([vm], snapshot) == []
    campaign("saved VM started cold from its command line", "after the save, before the restore (reboot none)",
             "the restore refused it naming the process (pid, start time); state file and manifest kept; a re-run "
             "after it was stopped restored the saved VM, RAM identical", 0, 0, True)


# --------------------------------------------------------------------------- 2. nobody poses as QEMU


def _as_nobody(argv, log, executable=None):
    with open(log, "ab") as out:
        return subprocess.Popen(argv, executable=executable, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, user=NOBODY.pw_uid,
                                group=NOBODY.pw_gid, extra_groups=[])


@pytest.fixture
def nobodys_dir():
    """A directory nobody owns, on disk, that root can reach."""
    path = tempfile.mkdtemp(prefix="hcpr-nobody-", dir=tempfile.gettempdir())
    os.chmod(path, 0o755)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_process_of_nobody_posing_as_qemu_never_runs_as_root(vm_dir, nobodys_dir, campaign):
    name = f"poser{os.getpid()}"
    planted = os.path.join(nobodys_dir, "qemu-system-x86_64")
    ran_planted = os.path.join(nobodys_dir, "planted-ran")
    with open(planted, "w", encoding="utf-8") as script:
        script.write(f"#!/bin/sh\nid -u > {ran_planted}\nexec {QEMU} \"$@\"\n")
    os.chmod(planted, 0o755)
    os.chown(planted, NOBODY.pw_uid, NOBODY.pw_gid)
    qmp = os.path.join(nobodys_dir, f"{name}.qmp")
    # The real QEMU binary, with argv[0] the planted script: /proc/<pid>/exe says which binary it is.
    argv = [planted, "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", "-name", name,
            "-qmp", f"unix:{qmp},server=on,wait=off"]
    poser = _as_nobody(argv, os.path.join(nobodys_dir, "poser.log"), executable=QEMU)
    try:
        _wait(lambda: os.path.exists(qmp))
        [facts] = status(Selection(names=[name]), FactsOptions(timeout=5))["vms"]
        assert (facts["exe"], facts["credentials"]["uid"], facts["problem"]) == (QEMU, NOBODY.pw_uid, None)
        assert facts["argv"][0] == planted

        # It dies when asked to migrate: killed the moment its state file gets data.
        state_dir = os.path.join(vm_dir, "state")
        state_file = os.path.join(state_dir, f"{name}.state")
        killer = threading.Thread(target=testbed.in_realtime, args=(_kill_when_written, state_file, poser.pid))
        killer.start()
        with pytest.raises(CprError, match=f"Their QEMU died during the save .*: {name}"):
            save(Selection(names=[name]), state_dir, SaveOptions(reboot="none", timeout=60))
        killer.join()
        with StateDir.open(state_dir) as directory:
            record = directory.read_stopped(name)
        assert record.argv[0] == QEMU and record.credentials["uid"] == NOBODY.pw_uid

        # The role's rescue starts every recorded VM: the binary the process ran, as the user it ran as.
        [started] = power_start(state_dir, timeout=60)["vms"]
        assert _uid(started["pid"]) == NOBODY.pw_uid
        assert os.readlink(f"/proc/{started['pid']}/exe") == QEMU
        assert not os.path.exists(ran_planted), "the planted script ran"
        os.kill(started["pid"], signal.SIGKILL)
    finally:
        poser.kill()
        poser.wait()

    # A QEMU binary that nobody could have replaced is not started again, whoever runs it: refused by name.
    copied = os.path.join(nobodys_dir, "bin")
    os.mkdir(copied)
    os.chown(copied, NOBODY.pw_uid, NOBODY.pw_gid)
    binary = shutil.copy(QEMU, copied)
    untrusted = _as_nobody([binary, "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", "-name",
                            f"{name}b", "-qmp", f"unix:{qmp},server=on,wait=off"], os.path.join(nobodys_dir, "b.log"))
    try:
        _wait(lambda: os.path.exists(qmp) and testbed.find_qemu_pid(qmp) == untrusted.pid)
        with pytest.raises(NotReadyError, match=f"VM {name}b is not ready: its QEMU binary {binary} could have been "
                                                f"planted by another user: {copied} is owned by uid {NOBODY.pw_uid}"):
            save(Selection(names=[f"{name}b"]), os.path.join(vm_dir, "state"), SaveOptions(reboot="none", timeout=60))
        assert untrusted.poll() is None
    finally:
        untrusted.kill()
        untrusted.wait()
    campaign("a process of nobody posing as QEMU", "argv[0] a planted script; it dies when asked to migrate",
             "started again from the binary it ran (/proc/<pid>/exe) as nobody, the planted script never ran; a "
             "QEMU binary another user could have replaced is refused before anything is touched", 0, 0, True)


def _kill_when_written(path, pid):
    _wait(lambda: os.path.exists(path) and os.path.getsize(path) > 0)
    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- 3. a racing rename


RACER = """
import os, shutil, sys, time
parent, planted = sys.argv[1], sys.argv[2]
state, real = os.path.join(parent, "state"), os.path.join(parent, "state.real")
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        os.rename(state, real)
        os.mkdir(state, 0o700)
        with open(os.path.join(state, "vm.json"), "w") as handle:
            handle.write(planted)
        time.sleep(0.001)
        shutil.rmtree(state)
        os.rename(real, state)
    except OSError:
        pass
"""


def test_a_racing_rename_of_the_state_directory_is_refused(nobodys_dir, vm_pool, tmp_path, campaign):
    name = f"race{os.getpid()}"
    vm = vm_pool.get(name)
    snapshot = testbed.memory_snapshot([vm])
    os.chmod(tmp_path, 0o755)
    parent = str(tmp_path / "parent")
    os.mkdir(parent, 0o755)
    state_dir = os.path.join(parent, "state")
    # Saved while the parent was root's.
    save(Selection(names=[name]), state_dir, SaveOptions(reboot="none", timeout=60))
    # Then another user gets the parent, and races renames with a manifest whose argv would run as root.
    os.chown(parent, NOBODY.pw_uid, NOBODY.pw_gid)
    ran = os.path.join(nobodys_dir, "planted-ran")
    planted = json.dumps({"name": "vm", "argv": ["/bin/sh", "-c", f"touch {ran}"], "format": 1})
    racer = _as_nobody(["/usr/bin/python3", "-c", RACER, parent, planted, "20"], os.path.join(nobodys_dir, "racer.log"))
    refusals = 0
    try:
        for _attempt in range(6):
            with pytest.raises(StateDirError, match=f"the parent directory {parent} of the state directory is owned "
                                                    f"by uid {NOBODY.pw_uid}") as refused:
                restore(state_dir, options=RestoreOptions(timeout=30))
            refusals += 1
    finally:
        racer.kill()
        racer.wait()
    assert refusals == 6 and not os.path.exists(ran)
    assert "another user could swap the state directory under us" in str(refused.value)

    # The operator gives the parent back to root, and the directory back where the racer left it.
    os.chown(parent, 0, 0)
    if os.path.isdir(state_dir + ".real"):
        shutil.rmtree(state_dir, ignore_errors=True)
        os.rename(state_dir + ".real", state_dir)
    restore(state_dir, options=RestoreOptions(timeout=60))
    vm.refresh_pid()
    assert testbed.survival_problems([vm], snapshot) == [] and not os.path.exists(ran)
    campaign("the state directory swapped under us", "another user races renames of it (a parent they may write)",
             "refused before anything was read, naming the parent, six times out of six; nothing planted ran; a "
             "re-run restored once the parent was root's", 0, 0, True)


# --------------------------------------------------------------------------- 4. an empty list


PLAYBOOK = """
- hosts: hypervisors
  gather_facts: false
  tasks:
    - name: Save the VMs the inventory names
      hypervisor.cpr.cpr_save:
        names: "{{ vms_to_update }}"
        state_dir: "{{ state_dir }}"
        reboot: none
      register: saved
      ignore_errors: "{{ expect_refusal }}"
    - name: Shut down the VMs the inventory names
      hypervisor.cpr.vm_power:
        names: "{{ vms_to_update }}"
        state_dir: "{{ state_dir }}"
      register: stopped
      ignore_errors: true
      when: expect_refusal
    - name: Suspend the VMs the inventory names
      hypervisor.cpr.qga_suspend:
        names: "{{ vms_to_update }}"
      register: suspended
      ignore_errors: true
      when: expect_refusal
    - name: Restore them
      hypervisor.cpr.cpr_restore:
        state_dir: "{{ state_dir }}"
      when: not expect_refusal
    - name: Tell what happened
      ansible.builtin.copy:
        content: "{{ {'saved': saved, 'stopped': stopped, 'suspended': suspended} | to_json }}"
        dest: "{{ report }}"
        mode: "0600"
      delegate_to: localhost
"""


def test_an_empty_list_from_an_inventory_variable_selects_nothing(vm_pool, tmp_path, campaign):
    names = [f"empty{os.getpid()}a", f"empty{os.getpid()}b"]
    vms = [vm_pool.get(n) for n in names]
    snapshot = testbed.memory_snapshot(vms)
    pids = [vm.pid for vm in vms]
    playbook = tmp_path / "empty.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    inventory = tmp_path / "inventory.yml"
    state_dir, report = str(tmp_path / "state"), str(tmp_path / "report.json")

    def run(vms_to_update, expect_refusal):
        # The inventory variable renders as an empty list, as a group variable with a typo or no hosts would.
        inventory.write_text(json.dumps({"hypervisors": {"hosts": {"local": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "vms_to_update": vms_to_update}}}}), encoding="utf-8")
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO_ROOT, ".cache", "collections"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false")
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                               str(playbook), "-e", json.dumps({"state_dir": state_dir, "report": report,
                                                                "expect_refusal": expect_refusal})],
                              capture_output=True, text=True, env=env, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        with open(report, encoding="utf-8") as handle:
            return json.load(handle)

    refused = run([], True)
    for task in ("saved", "stopped", "suspended"):
        assert refused[task]["failed"] and "names is an empty list, which would select every VM of the host" in (
            refused[task]["msg"]), refused[task]
    assert [vm.refresh_pid() for vm in vms] == pids and [vm.runstate() for vm in vms] == ["running", "running"]
    assert _files(state_dir) == []

    fixed = run(names, False)
    assert [vm["name"] for vm in fixed["saved"]["vms"]] == names
    for vm in vms:
        vm.refresh_pid()
    assert testbed.survival_problems(vms, snapshot) == []
    campaign("an empty list from an inventory variable", "names: [] given to cpr_save, vm_power and qga_suspend",
             "refused by each module (it would select every VM of the host), no VM touched; a re-run with the "
             "names saved and restored both VMs", 0, 0, True)
