"""The rolling playbook and the kernel_update role on real test-bed VMs.

Three inventory "hypervisors" (hv1, hv2, hv3) are this machine, reached with
the local connection; each has two test-bed VMs of its own, named in
kernel_update_vms (they share one /proc, so a host must never pick VMs by
discovery), and a state directory of its own. The reboot method is ``none``:
only QEMU is restarted, as after a QEMU upgrade. So that there is something to
do, the VMs run a copy of the QEMU binary that the tests "upgrade" by
replacing it on disk, which makes every QEMU run deleted code: exactly what
the role looks for with reboot method none.

Every restart is checked the hard way: the random marker in guest RAM is
identical and the guest's counter went on. The tests that inject a fault add
a row to the fault campaign's table (tests/conftest.py).

The tests share one fleet and run in file order; each leaves every VM
running and no state behind.
"""

import http.server
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
import zlib

import pytest
import testbed
from qemu.qmp import QMPError

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.filter import rollout_timeline
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(REPO_ROOT, "playbooks", "rolling_kernel_update.yml")
HOOKS = os.path.join(REPO_ROOT, "tests", "integration", "rolling")
ANSIBLE_PLAYBOOK = os.path.join(REPO_ROOT, ".venv", "bin", "ansible-playbook")
# Two VMs on hv1 (saved and restored together), one on each of the others: each
# TCG guest takes a tenth of a core, and the machine has two. The role finds VMs by
# name among every QEMU of the machine, and refuses a name two QEMUs have: the names
# carry this run's pid, so that test runs of other checkouts at the same time keep apart.
R1A, R1B, R2A, R3A = (f"{name}-{os.getpid()}" for name in ("r1a", "r1b", "r2a", "r3a"))
HOSTS = {"hv1": [R1A, R1B], "hv2": [R2A], "hv3": [R3A]}
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(not os.path.exists(ANSIBLE_PLAYBOOK), reason="no ansible-playbook in .venv"),
]


class Fleet:
    """The three hosts, their VMs, and ansible-playbook runs against them."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.qemu = os.path.join(workdir, "bin", "qemu-system-x86_64")
        self.reports = os.path.join(workdir, "reports")
        self.inventory = os.path.join(workdir, "inventory.yml")
        self.vms = {}
        self.runs = 0
        self.run_id = None

    def state_dir(self, host):
        return os.path.join(self.workdir, f"state-{host}")

    def host_vms(self, host):
        return [self.vms[name] for name in HOSTS[host]]

    def write_inventory(self):
        hosts = {
            host: {"kernel_update_vms": names, "kernel_update_state_dir": self.state_dir(host)}
            for host, names in HOSTS.items()
        }
        inventory = {"all": {"children": {"hypervisors": {
            "hosts": hosts,
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "kernel_update_reboot_method": "none",
                "kernel_update_timeout": 60,
            },
        }}}}
        with open(self.inventory, "w", encoding="utf-8") as handle:
            json.dump(inventory, handle, indent=2)

    def upgrade_qemu(self):
        """Replace the QEMU binary on disk, as a package upgrade does: every running QEMU now runs deleted code."""
        fresh = self.qemu + ".new"
        shutil.copy2(self.qemu, fresh)
        os.replace(fresh, self.qemu)

    def command(self, *extra, run_id=None):
        # A run id of our own per run, to find its report; a new one each time, as a new run gets, unless
        # a run is to finish an earlier one (whose run lock it then takes again).
        self.run_id = run_id or f"test{self.runs}"
        return [ANSIBLE_PLAYBOOK, "-i", self.inventory, PLAYBOOK, "-e", f"kernel_update_run_id={self.run_id}",
                "-e", f"rolling_report_dir={self.reports}", *extra]

    def env(self):
        env = dict(os.environ)
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO_ROOT, ".cache", "collections"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_LOCAL_TEMP": os.path.join(self.workdir, "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(self.workdir, "ansible-remote"),
            "USER": "pytest",
        })
        return env

    def log_path(self):
        self.runs += 1
        return os.path.join(self.workdir, f"run-{self.runs}.log")

    def play(self, *extra, timeout=300, run_id=None):
        """Run the rolling playbook; return (exit code, output, recap by host)."""
        path = self.log_path()
        with open(path, "w", encoding="utf-8") as log:
            done = subprocess.run(self.command(*extra, run_id=run_id), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                  cwd=self.workdir, timeout=timeout, check=False)
        with open(path, encoding="utf-8") as log:
            output = log.read()
        recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
                 for m in RECAP.findall(output)}
        return done.returncode, output, recap

    def start(self, *extra):
        """Start the rolling playbook in the background, in a process group of its own."""
        log = open(self.log_path(), "w", encoding="utf-8")  # pylint: disable=consider-using-with
        return subprocess.Popen(self.command(*extra), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                cwd=self.workdir, start_new_session=True)

    def report(self, run_id=None):
        run_id = run_id or self.run_id
        with open(os.path.join(self.reports, f"rolling-kernel-update-{run_id}.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def memory(self, hosts=None):
        return {vm.name: (vm.marker(), vm.counter()) for host in hosts or HOSTS for vm in self.host_vms(host)}

    def pids(self, hosts=None):
        return {vm.name: vm.refresh_pid() for host in hosts or HOSTS for vm in self.host_vms(host)}

    def manifests(self, host):
        directory = self.state_dir(host)
        return sorted(f for f in os.listdir(directory) if f.endswith(".json")) if os.path.isdir(directory) else []


@pytest.fixture(scope="module")
def fleet():
    """Six test-bed VMs on a copy of the QEMU binary, two per inventory host."""
    # Short: unix socket paths are limited to 108 bytes.
    workdir = tempfile.mkdtemp(prefix="hcpr-roll-", dir=tempfile.gettempdir())
    os.chmod(workdir, 0o700)
    result = Fleet(workdir)
    os.makedirs(os.path.dirname(result.qemu))
    shutil.copy2(shutil.which("qemu-system-x86_64"), result.qemu)
    result.write_inventory()
    saved_qemu = testbed.QEMU
    testbed.QEMU = result.qemu
    try:
        vms = testbed.boot_vms(workdir, names=[n for names in HOSTS.values() for n in names], timeout=240)
        result.vms = {vm.name: vm for vm in vms}
        yield result
    finally:
        testbed.QEMU = saved_qemu
        testbed.kill_all(workdir)
        for host in HOSTS:
            subprocess.run(["umount", "-l", result.state_dir(host)], capture_output=True, check=False)
        # HYPERVISOR_CPR_KEEP_WORKDIR=1 keeps the logs, reports and state directories to look at.
        if not os.environ.get("HYPERVISOR_CPR_KEEP_WORKDIR"):
            shutil.rmtree(workdir, ignore_errors=True)


def _kill_tree(process, spare=None):
    """SIGKILL a process and everything under it, as a crash of the controller would.

    ansible-playbook (ansible-core 2.19) runs the playbook in a child that calls
    setsid, so killing the process group of the process we started is not enough.
    Processes whose command line mentions spare (the QEMUs a restore started, each
    in a session of its own) and everything under them live on, as they would on a
    remote hypervisor when the controller dies.
    """
    groups = {os.getpgid(process.pid)}
    parents = {process.pid}
    spared = set()
    while True:
        children = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in parents and int(entry) not in parents | spared:
                if spare and _running_with(spare, [int(entry)]):
                    spared.add(int(entry))
                    continue
                children.add(int(entry))
                groups.add(int(fields[2]))
        if not children:
            break
        parents |= children
    assert not groups & {os.getpgid(pid) for pid in spared}, "a spared process shares a group with ansible"
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in parents) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid):
    """Whether a process exists and is not a zombie (PID 1 here may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _running_with(argument, pids=None):
    """Live processes (of pids, or all) whose command line contains this argument."""
    found = []
    for entry in map(str, pids) if pids else os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if entry.isdigit() and any(argument in arg for arg in argv) and _alive(int(entry)):
            found.append(int(entry))
    return found


def _assert_survived(fleet_, before, hosts=None):
    for host in hosts or HOSTS:
        for vm in fleet_.host_vms(host):
            marker, counter = before[vm.name]
            assert vm.refresh_pid(), f"{vm.name} does not run"
            assert vm.runstate() == "running", vm.name
            assert vm.marker() == marker, f"{vm.name}: guest RAM changed"
            assert vm.counter() >= counter, f"{vm.name}: the counter went back"
            assert vm.agent("guest-ping") == {}


def _losses(fleet_, before, hosts):
    """(VMs lost, state files lost) on these hosts, counted from the real VMs and state directories.

    A VM is lost when no valid manifest and state file can bring it back and no QEMU runs it with its guest
    RAM intact (the marker it made at boot, its counter not gone back); a state file is lost when its
    manifest remains but the file is gone or does not match it.
    """
    restorable, files_lost = set(), 0
    for host in hosts:
        with StateDir.open(fleet_.state_dir(host)) as directory:
            for manifest in directory.manifests():
                try:
                    directory.verify_state(manifest)
                    restorable.add(manifest.name)
                except CprError:
                    files_lost += 1
    vms_lost = 0
    for host in hosts:
        for vm in fleet_.host_vms(host):
            if vm.name in restorable:
                continue
            if not vm.alive() or vm.runstate() != "running" or testbed.survival_problems([vm], before):
                vms_lost += 1
    return vms_lost, files_lost


def _hosts(report):
    return {entry["host"]: entry for entry in report["hosts"]}


def _explain(output):
    return output[-6000:]


def test_rolling_update_restarts_every_vm_and_a_second_run_changes_nothing(fleet):
    before = fleet.memory()
    old_pids = fleet.pids()
    fleet.upgrade_qemu()

    started = time.monotonic()
    code, output, recap = fleet.play("-e", "rolling_serial=1")
    first_seconds = time.monotonic() - started
    assert code == 0, _explain(output)
    for host in HOSTS:
        assert recap[host]["changed"] > 0 and recap[host]["failed"] == 0, recap
    new_pids = fleet.pids()
    assert all(new_pids[name] != old_pids[name] for name in old_pids), "every QEMU was restarted"
    for name, pid in new_pids.items():
        assert not os.readlink(f"/proc/{pid}/exe").endswith("(deleted)"), f"{name} runs the new QEMU binary"
    _assert_survived(fleet, before)
    for host in HOSTS:
        assert fleet.manifests(host) == []
        assert not os.path.exists(os.path.join(fleet.state_dir(host), ".hypervisor-cpr.run")), "lock released"

    report = fleet.report()
    assert report["complete"] and report["stopped"] is None
    assert report["counts"] == {"updated": 3} and report["vms"] == 4
    hosts = _hosts(report)
    for host, names in HOSTS.items():
        entry = hosts[host]
        assert entry["status"] == "updated" and entry["reboot_method"] == "none" and not entry["rebooted"]
        assert entry["kernel_before"] == entry["kernel_after"] == os.uname().release
        assert sorted(vm["name"] for vm in entry["vms"]) == names
        for vm in entry["vms"]:
            assert vm["runstate_before"] == vm["runstate"] == "running"
            assert 0 < vm["downtime_seconds"] < first_seconds
            assert vm["save_seconds"] >= 0 and vm["restore_seconds"] > 0
            assert vm["state_bytes"] > 0 and vm["ram_in_place"] is True
            assert not vm["saved_by_earlier_run"]
        # The blackout runs from the first VM stopped to the last one back.
        assert max(vm["downtime_seconds"] for vm in entry["vms"]) <= entry["blackout_seconds"] + 0.01
    assert report["max_downtime_seconds"] == max(vm["downtime_seconds"] for e in hosts.values() for vm in e["vms"])
    with open(os.path.join(fleet.reports, f"rolling-kernel-update-{report['run_id']}.md"), encoding="utf-8") as handle:
        markdown = handle.read()
    assert all(f"| {host} | updated | none |" in markdown for host in HOSTS)
    assert all(f"| {name} | running | running |" in markdown for names in HOSTS.values() for name in names)

    # Nothing runs replaced code any more: nothing to do, nothing changed.
    code, output, recap = fleet.play()
    assert code == 0, _explain(output)
    for host in HOSTS:
        assert recap[host]["changed"] == 0, (host, recap)
    assert fleet.pids() == new_pids
    assert _hosts(fleet.report())["hv2"]["status"] == "unchanged"
    _assert_survived(fleet, before)


def test_an_interrupted_run_is_finished_by_the_next(fleet, campaign):
    before = fleet.memory()
    old_pids = fleet.pids()
    held = os.path.join(fleet.workdir, "held")
    # Hold the run inside the blackout of the first host, then kill ansible-playbook there.
    run = fleet.start("-e", "kernel_update_force=true",
                      "-e", json.dumps({"kernel_update_pre_reboot_tasks": [os.path.join(HOOKS, "hold.yml")]}),
                      "-e", f"rolling_test_held_file={held}",
                      "-e", f"rolling_test_release_file={os.path.join(fleet.workdir, 'never')}")
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(held):
            assert run.poll() is None, "the playbook ended before it was held"
            assert time.monotonic() < deadline, "the playbook was never held"
            time.sleep(0.2)
    finally:
        _kill_tree(run, spare=fleet.qemu)
    assert not _running_with(f"rolling_test_held_file={held}"), "every process of the killed run is gone"
    assert fleet.manifests("hv1") == [f"{R1A}.json", f"{R1B}.json"]
    assert not any(vm.alive() for vm in fleet.host_vms("hv1")), "hv1's VMs were saved and their QEMUs quit"
    vms_lost, files_lost = _losses(fleet, before, HOSTS)
    assert fleet.pids(["hv2", "hv3"]) == {k: v for k, v in old_pids.items() if k in HOSTS["hv2"] + HOSTS["hv3"]}

    # Another run finds hv1 locked: the preflight stops the rollout before anything is touched.
    code, output, recap = fleet.play()
    assert code != 0, _explain(output)
    assert recap["hv1"]["failed"] == 1 and "locked by run" in output
    assert fleet.manifests("hv1") == [f"{R1A}.json", f"{R1B}.json"]
    report = fleet.report()
    assert report["stopped"] and _hosts(report)["hv1"]["status"] == "preflight_failed"
    assert {_hosts(report)[h]["status"] for h in ("hv2", "hv3")} == {"not_started"}

    # Taking the lock over finishes the job from the manifests.
    code, output, recap = fleet.play("-e", "kernel_update_lock_force=true")
    assert code == 0, _explain(output)
    assert recap["hv1"]["changed"] > 0 and recap["hv2"]["changed"] == 0 and recap["hv3"]["changed"] == 0
    _assert_survived(fleet, before)
    assert fleet.manifests("hv1") == []
    entry = _hosts(fleet.report())["hv1"]
    assert entry["status"] == "updated"
    assert sorted(vm["name"] for vm in entry["vms"]) == [R1A, R1B]
    assert all(vm["saved_by_earlier_run"] for vm in entry["vms"])
    # Their downtime includes the time the run was dead.
    assert min(vm["downtime_seconds"] for vm in entry["vms"]) > 1
    campaign("ansible-playbook killed (SIGKILL)", "role: after the save, before the reboot",
             "next run stopped in the preflight: host locked by the killed run, named; a run taking the lock over "
             "restored both VMs from their manifests", vms_lost, files_lost, True)


def _wait_for(condition, what, run=None, timeout=120):
    """Poll condition (an exception counts as not yet) while the playbook run, if any, goes on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, testbed.TestbedError, QMPError):
            pass  # a QEMU that is still starting
        assert run is None or run.poll() is None, f"the playbook ended before {what}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def _slow_qemu(fleet_, vm, started, release):
    """Make the fleet's QEMU binary a script that starts this VM only once release exists.

    The restore of that VM then really takes as long as the test wants, in its own
    time, with no fault injected into QEMU or the role: the new QEMU just comes up
    late. Every other QEMU starts at once. argv[0] stays the binary's path, as
    discovery and the manifests expect. Returns a function that puts the binary back.
    """
    real = fleet_.qemu + ".real"
    shutil.copy2(fleet_.qemu, real)
    script = fleet_.qemu + ".slow"
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(f"""#!/bin/bash
case " $* " in
    *" unix:{vm.qmp_socket},"*)
        touch {started}
        while [ ! -e {release} ]; do sleep 0.05; done ;;
esac
exec -a "$0" {real} "$@"
""")
    os.chmod(script, 0o755)
    os.replace(script, fleet_.qemu)

    def put_back():
        fresh = fleet_.qemu + ".new"
        shutil.copy2(real, fresh)
        os.replace(fresh, fleet_.qemu)

    return put_back


def test_a_run_killed_in_the_middle_of_the_restores_is_finished_by_the_next(fleet, campaign):
    before = fleet.memory(["hv1"])
    old_pids = fleet.pids(["hv1"])
    r1a, r1b = fleet.host_vms("hv1")
    started, release = os.path.join(fleet.workdir, "r1b-starting"), os.path.join(fleet.workdir, "r1b-go")
    put_back = _slow_qemu(fleet, r1b, started, release)
    try:
        # cpr_save and cpr_restore as tasks of their own (the fault is injected into cpr_restore's call).
        run = fleet.start("--limit", "hv1", "-e", "kernel_update_force=true", "-e", "kernel_update_qemu_update=separate")
        killed_run = fleet.run_id
        try:
            # cpr_restore runs: r1a is back (its manifest removed), r1b's new QEMU is still starting.
            _wait_for(lambda: os.path.exists(started) and fleet.manifests("hv1") == [f"{R1B}.json"],
                      "r1a was restored while r1b's QEMU starts", run)
            assert _running_with(f"{fleet.workdir}/ansible-remote/", _running_with("AnsiballZ_cpr_restore")), \
                "cpr_restore runs"
        finally:
            _kill_tree(run, spare=fleet.qemu)
        assert not _running_with(f"{fleet.workdir}/ansible-"), "every process of the killed run is gone"
        assert r1a.refresh_pid() != old_pids[R1A] and r1a.runstate() == "running"
        assert r1b.refresh_pid() is None, "r1b's new QEMU has not started yet"
        vms_lost, files_lost = _losses(fleet, before, ["hv1"])
    finally:
        put_back()
        with open(release, "w", encoding="utf-8"):
            pass
    # The new QEMU comes up in its own time and waits for a state to load.
    _wait_for(lambda: r1b.alive() and r1b.runstate() == "inmigrate", "r1b's QEMU was up", timeout=60)

    # Running again with the killed run's id (as the lock's message says) finishes the restore.
    code, output, recap = fleet.play("--limit", "hv1", run_id=killed_run)
    assert code == 0, _explain(output)
    assert recap["hv1"]["changed"] > 0 and recap["hv1"]["failed"] == 0, recap
    _assert_survived(fleet, before, ["hv1"])
    assert fleet.manifests("hv1") == []
    assert not os.path.exists(os.path.join(fleet.state_dir("hv1"), ".hypervisor-cpr.run")), "lock released"
    entry = _hosts(fleet.report())["hv1"]
    assert entry["status"] == "updated", entry
    assert [vm["name"] for vm in entry["vms"] if vm["saved_by_earlier_run"]] == [R1B], entry["vms"]
    campaign("ansible-playbook killed (SIGKILL)", "role: in the middle of the restores (1 of 2 VMs back)",
             "the VM back stays; the other's state file, manifest and starting QEMU are kept; a re-run with the "
             "killed run's id loaded its state", vms_lost, files_lost, True)


def test_a_run_killed_after_the_verify_is_finished_by_the_next(fleet, campaign):
    before = fleet.memory(["hv1"])
    old_pids = fleet.pids(["hv1"])
    held = os.path.join(fleet.workdir, "held-after-verify")
    # Hold the run in kernel_update_post_tasks, after the verify and before the report, then kill it there.
    run = fleet.start("--limit", "hv1", "-e", "kernel_update_force=true",
                      "-e", json.dumps({"kernel_update_post_tasks": [os.path.join(HOOKS, "hold.yml")]}),
                      "-e", f"rolling_test_held_file={held}",
                      "-e", f"rolling_test_release_file={os.path.join(fleet.workdir, 'never')}")
    killed_run = fleet.run_id
    try:
        _wait_for(lambda: os.path.exists(held), "the playbook was held", run)
    finally:
        _kill_tree(run, spare=fleet.qemu)
    assert not _running_with(f"rolling_test_held_file={held}"), "every process of the killed run is gone"
    assert all(pid != old_pids[name] for name, pid in fleet.pids(["hv1"]).items()), "hv1's VMs were restarted"
    assert fleet.manifests("hv1") == []
    assert os.path.exists(os.path.join(fleet.state_dir("hv1"), ".hypervisor-cpr.run")), "the run lock stays"
    vms_lost, files_lost = _losses(fleet, before, ["hv1"])

    new_pids = fleet.pids(["hv1"])
    code, output, recap = fleet.play("--limit", "hv1", run_id=killed_run)
    assert code == 0, _explain(output)
    assert recap["hv1"]["changed"] == 0 and recap["hv1"]["failed"] == 0, recap
    assert fleet.pids(["hv1"]) == new_pids
    _assert_survived(fleet, before, ["hv1"])
    assert not os.path.exists(os.path.join(fleet.state_dir("hv1"), ".hypervisor-cpr.run")), "lock released"
    assert _hosts(fleet.report())["hv1"]["status"] == "unchanged"
    campaign("ansible-playbook killed (SIGKILL)", "role: after the restore and verify, before the report",
             "VMs already back; the run lock stays until a re-run with the killed run's id finds nothing left to do",
             vms_lost, files_lost, True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_host_whose_vms_cannot_be_saved_fails_untouched_and_stops_the_rollout(fleet, campaign):
    before = fleet.memory()
    old_pids = fleet.pids()
    state_dir = fleet.state_dir("hv2")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    # Room for the preflight (its VM needs 64 MiB of device-state margin), then filled by a pre_tasks hook.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96M,mode=0700", "tmpfs", state_dir], check=True)
    try:
        # The save's own refusal is the point: a transfer (method none's default) writes no state file.
        code, output, recap = fleet.play(
            "-e", "kernel_update_force=true", "-e", "kernel_update_qemu_update=separate",
            "-e", json.dumps({"kernel_update_pre_tasks": [os.path.join(HOOKS, "fill.yml")]}),
            "-e", "rolling_test_fill_host=hv2", "-e", "rolling_test_fill_size=64M")
    finally:
        subprocess.run(["umount", "-l", state_dir], check=True)
    assert code != 0, _explain(output)
    assert recap["hv1"]["failed"] == 0 and recap["hv2"]["failed"] == 1, recap
    # hv2's only change is the test's own ballast.
    assert recap["hv2"]["changed"] == 1 and recap["hv3"]["changed"] == 0, recap
    assert "the save needs about 64 MiB" in output
    pids = fleet.pids()
    assert all(pids[name] != old_pids[name] for name in HOSTS["hv1"]), "hv1 was updated"
    assert all(pids[name] == old_pids[name] for name in HOSTS["hv2"] + HOSTS["hv3"]), "hv2 and hv3 were not touched"
    _assert_survived(fleet, before)

    report = fleet.report()
    hosts = _hosts(report)
    assert [hosts[h]["status"] for h in ("hv1", "hv2", "hv3")] == ["updated", "failed", "not_started"]
    assert "the save needs about 64 MiB" in hosts["hv2"]["error"]
    assert report["stopped"].startswith("1 of 1 hosts of a batch failed (hv2)")
    assert not report["complete"]
    vms_lost, files_lost = _losses(fleet, before, HOSTS)

    # With the space back (the tmpfs is gone), the same run without the ballast updates hv2.
    _rerun_updates(fleet, "hv2", before, old_pids)
    campaign("disk full (role)", "role: state directory filled after the preflight passed",
             "the save refused with the space it needs, before any VM stopped; the rollout stopped there",
             vms_lost, files_lost, True)


def _rerun_updates(fleet_, host, before, pids_before):
    """The campaign's re-run: the same playbook on this host alone restarts its VMs and reports it updated."""
    code, output, _recap = fleet_.play("--limit", host, "-e", "kernel_update_force=true")
    assert code == 0, _explain(output)
    assert all(pid != pids_before[name] for name, pid in fleet_.pids([host]).items())
    _assert_survived(fleet_, before, [host])
    assert _hosts(fleet_.report())[host]["status"] == "updated"


def test_a_failure_inside_the_blackout_restores_every_vm(fleet, campaign):
    before = fleet.memory()
    old_pids = fleet.pids()
    code, output, recap = fleet.play(
        "-e", "kernel_update_force=true", "-e", "rolling_serial=2",
        "-e", json.dumps({"kernel_update_pre_reboot_tasks": [os.path.join(HOOKS, "fail.yml")]}),
        "-e", "rolling_test_fail_host=hv1")
    assert code != 0, _explain(output)
    assert recap["hv1"]["failed"] == 1 and recap["hv2"]["failed"] == 0 and recap["hv3"]["changed"] == 0, recap
    pids = fleet.pids()
    # hv1's VMs were saved (their QEMUs quit) and restored by the rescue; hv2, in the same batch, was updated;
    # 1 of 2 hosts failed, more than 0 %: hv3 is never started.
    assert all(pids[name] != old_pids[name] for name in HOSTS["hv1"] + HOSTS["hv2"])
    assert all(pids[name] == old_pids[name] for name in HOSTS["hv3"])
    _assert_survived(fleet, before)
    assert fleet.manifests("hv1") == []

    hosts = _hosts(fleet.report())
    assert [hosts[h]["status"] for h in ("hv1", "hv2", "hv3")] == ["failed", "updated", "not_started"]
    assert hosts["hv1"]["phase"] == "pre_reboot" and hosts["hv1"]["still_saved"] == []
    assert "the test fails the run here" in hosts["hv1"]["error"]
    vms_lost, files_lost = _losses(fleet, before, HOSTS)

    # The same run without the failing task updates hv1.
    _rerun_updates(fleet, "hv1", before, fleet.pids(["hv1"]))
    campaign("a task fails inside the blackout", "role: after the save, before the reboot (a pre_reboot task)",
             "the role's rescue restored every VM of the host as it was; the error names the task; rollout stopped",
             vms_lost, files_lost, True)


def test_a_missing_target_kernel_is_refused_before_anything_is_touched(fleet):
    missing = os.path.join(fleet.workdir, "vmlinuz-9.9.9-missing")
    before = fleet.memory(["hv3"])
    old_pids = fleet.pids(["hv3"])
    code, output, recap = fleet.play("--limit", "hv3", "-e", "kernel_update_reboot_method=kexec",
                                     "-e", f"kernel_update_kernel={missing}")
    assert code != 0, _explain(output)
    assert list(recap) == ["hv3"] and recap["hv3"]["failed"] == 1, recap
    assert f"The kernel image {missing} does not exist on hv3. Install it" in output
    assert fleet.pids(["hv3"]) == old_pids
    assert fleet.manifests("hv3") == []
    report = fleet.report()
    assert _hosts(report)["hv3"]["status"] == "preflight_failed" and report["stopped"].startswith("preflight")
    assert _hosts(report)["hv3"]["kernel_before"] == platform.release()
    assert _losses(fleet, before, ["hv3"]) == (0, 0)
    # A re-run would kexec this machine, the one that runs the tests: the campaign's row, with its re-run, comes
    # from the kexec lab (tests/kexec/test_kexec_faults.py).


def test_kexec_preflight_passes_and_a_kernel_that_cannot_be_loaded_touches_nothing(fleet):
    """The kexec path up to the point of no return, on one host picked with --limit."""
    kernel = os.path.join(fleet.workdir, "vmlinuz-9.9.9-test")
    initrd = os.path.join(fleet.workdir, "initrd.img-9.9.9-test")
    for path in (kernel, initrd):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("not a kernel\n")
    before = fleet.memory(["hv3"])
    old_pids = fleet.pids(["hv3"])
    # The fleet's three hosts are one machine: a kexec of hv3 would take down hv1's and hv2's VMs too, which the
    # preflight refuses unless told to let them go (skip); the kexec itself never happens here.
    code, output, recap = fleet.play("--limit", "hv3", "-e", "kernel_update_reboot_method=kexec",
                                     "-e", f"kernel_update_kernel={kernel}", "-e", f"kernel_update_initrd={initrd}",
                                     "-e", "kernel_update_unsupported_vms=skip")
    assert code != 0, _explain(output)
    assert list(recap) == ["hv3"] and recap["hv3"]["failed"] == 1, recap
    # The preflight found the kernel, its initrd and kexec, and the VM ready for a kexec (its RAM is a file on disk).
    assert f"kexec --load {kernel} failed" in output and "no VM was touched" in output
    assert fleet.pids(["hv3"]) == old_pids
    assert fleet.manifests("hv3") == []
    entry = _hosts(fleet.report())["hv3"]
    assert entry["status"] == "failed" and entry["phase"] == "prepare" and entry["vms"] == []
    assert entry["kernel_target"] == "9.9.9-test" and entry["planned_vms"] == [R3A]
    assert _losses(fleet, before, ["hv3"]) == (0, 0)
    # The campaign's row, with a re-run that kexecs, comes from the kexec lab (tests/kexec/test_kexec_faults.py).


def test_a_vm_that_cannot_be_saved_is_shut_down_and_started_again(fleet):
    """kernel_update_unsupported_vms=shutdown: a clean guest shutdown before the save, a fresh start after it."""
    vm = fleet.vms[R3A]
    old_marker, old_pid = vm.marker(), vm.refresh_pid()
    # A capability cpr-reboot cannot save with: the VM is not ready, for a real reason QEMU reports.
    # (x-ignore-shared, still on from a restore, excludes it.)
    vm.qmp("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": False},
                                                     {"capability": "postcopy-ram", "state": True}])
    code, output, recap = fleet.play("--limit", "hv3", "-e", "kernel_update_force=true",
                                     "-e", "kernel_update_unsupported_vms=shutdown")
    assert code == 0, _explain(output)
    assert recap["hv3"]["failed"] == 0 and recap["hv3"]["changed"] > 0, recap
    entry = _hosts(fleet.report())["hv3"]
    assert entry["status"] == "updated" and entry["shut_down"] == [R3A] and entry["started"] == [R3A]
    assert [left["name"] for left in entry["left_out"]] == [R3A] and "postcopy-ram" in " ".join(
        entry["left_out"][0]["reasons"])
    assert entry["vms"] == [] and entry["still_stopped"] == []
    # Started again with the same command line: a new process, a fresh boot (a new marker), its agent answering.
    assert vm.refresh_pid() not in (None, old_pid)
    assert vm.runstate() == "running" and vm.agent("guest-ping") == {}
    assert vm.marker() != old_marker
    assert not [f for f in os.listdir(fleet.state_dir("hv3")) if f.endswith((".stopped", ".json"))]


# --- rollouts left running: windows, gates, notifications, the timeline (issue 16) ---------------------------------

PROMETHEUS = shutil.which("prometheus")
CHROMIUM = shutil.which("chromium")
# Days and times of a window; the clock (rolling_now) is fixed, inside or outside it.
WINDOW = {"days": "mon-fri", "start": "22:00", "end": "05:00", "timezone": "Europe/Berlin"}
INSIDE = "2026-11-30T23:30:00+01:00"   # a Monday night
OUTSIDE = "2026-11-28T12:00:00+01:00"  # a Saturday noon
RULES = """groups:
  - name: hypervisor-cpr-test
    interval: 1s
    rules:
      - alert: HypervisorOnFire
        expr: vector(1)
        labels: {severity: critical, team: infra}
        annotations: {summary: the test's alert that always fires}
      - alert: Watchdog
        expr: vector(1)
        labels: {severity: critical}
      - alert: DiskAlmostFull
        expr: vector(1)
        labels: {severity: warning, team: db}
      - alert: DatabaseDown
        expr: vector(0) > 1
        labels: {severity: critical, team: db}
"""


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(fleet):
    """A real Prometheus on localhost whose rules fire (HypervisorOnFire, Watchdog, DiskAlmostFull) or never do."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (scripts/install-host-deps.sh installs it)")
    home = os.path.join(fleet.workdir, "prometheus")
    os.makedirs(home)
    with open(os.path.join(home, "rules.yml"), "w", encoding="utf-8") as handle:
        handle.write(RULES)
    with open(os.path.join(home, "prometheus.yml"), "w", encoding="utf-8") as handle:
        handle.write("global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n")
    url = f"http://127.0.0.1:{_free_port()}"
    with open(os.path.join(home, "log"), "w", encoding="utf-8") as log:
        server = subprocess.Popen([PROMETHEUS, f"--config.file={home}/prometheus.yml", f"--storage.tsdb.path={home}/data",
                                   f"--web.listen-address={url[7:]}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def firing():
            with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=2) as answer:
                alerts = json.load(answer)["data"]["alerts"]
            return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"} == {
                "HypervisorOnFire", "Watchdog", "DiskAlmostFull"}
        _wait_for(lambda: server.poll() is None and firing(), "Prometheus fired its alerts", timeout=60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # pylint: disable=invalid-name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


@pytest.fixture(name="receiver")
def fixture_receiver():
    """A real HTTP receiver on localhost that records every notification: (path, payload)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _events(receiver, path="/hook"):
    return [body["event"] for got, body in receiver.received if got == path]


def test_outside_the_window_the_rollout_stops_cleanly_and_leaves_every_host(fleet, receiver):
    old_pids = fleet.pids()
    hook = f"http://127.0.0.1:{receiver.server_port}/hook"
    code, output, recap = fleet.play("-e", "kernel_update_force=true", "-e", json.dumps(
        {"rolling_window": WINDOW, "rolling_now": OUTSIDE, "rolling_notify": [hook]}))
    assert code == 0, _explain(output)
    assert all(recap[h]["failed"] == 0 for h in HOSTS), recap
    assert fleet.pids() == old_pids and not any(fleet.manifests(h) for h in HOSTS), "no VM was touched"
    report = fleet.report()
    assert report["stopped"] == ("window: outside the window (mon,tue,wed,thu,fri 22:00-05:00 Europe/Berlin) at Sat "
                                 "2026-11-28 12:00 CET; it opens next at Mon 2026-11-30 22:00 CET")
    assert report["stopped_cleanly"] and report["hosts_left"] == list(HOSTS)
    assert {e["status"] for e in report["hosts"]} == {"not_started"}
    assert all(e["why"] == ["kernel_update_force is set"] and e["needed"] for e in report["hosts"])
    assert _events(receiver) == ["started", "stopped"]
    stopped = receiver.received[-1][1]
    assert stopped["data"]["hosts_left"] == list(HOSTS) and stopped["data"]["report"].endswith(".html")
    assert os.path.exists(stopped["data"]["report"])


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_a_firing_alert_and_an_operator_check_hold_the_batch_then_stop_it_cleanly(fleet, prometheus, receiver):
    old_pids = fleet.pids()
    flag = os.path.join(fleet.workdir, "maintenance-flag")
    open(flag, "w", encoding="utf-8").close()  # pylint: disable=consider-using-with
    hook = f"http://127.0.0.1:{receiver.server_port}/hook"
    started = time.monotonic()
    code, output, recap = fleet.play("-e", "kernel_update_force=true", "-e", json.dumps({
        "rolling_window": WINDOW, "rolling_now": INSIDE, "rolling_notify": [hook, "slack:" + hook + "/slack"],
        "rolling_block_on_alerts": {"url": prometheus, "match": ["severity=critical"], "ignore": ["Watchdog"]},
        "rolling_gate_tasks": [os.path.join(HOOKS, "gate.yml")], "rolling_test_gate_file": flag,
        "rolling_gate_wait_seconds": 4, "rolling_gate_interval_seconds": 2}))
    held_seconds = time.monotonic() - started
    os.unlink(flag)
    assert code == 0, _explain(output)
    assert all(recap[h]["failed"] == 0 for h in HOSTS), recap
    assert fleet.pids() == old_pids and not any(fleet.manifests(h) for h in HOSTS), "no VM was touched"
    report = fleet.report()
    # Held for the wait (4 s: three looks), then stopped, naming each blocker; Watchdog and the warning never block.
    assert report["stopped"].startswith('gate: held for 4 s by alert HypervisorOnFire {severity="critical", '
                                        'team="infra"} firing since '), report["stopped"]
    assert report["stopped"].endswith(f"; Hold while the maintenance flag is set: the maintenance flag {flag} is set")
    assert "Watchdog" not in report["stopped"] and "DiskAlmostFull" not in report["stopped"]
    assert report["stopped_cleanly"] and report["hosts_left"] == list(HOSTS)
    assert held_seconds > 4
    assert _events(receiver) == ["started", "held", "stopped"]
    held = [body for path, body in receiver.received if path == "/hook"][1]
    assert held["data"]["batch_hosts"] == ["hv1"] and len(held["data"]["blockers"]) == 2
    assert [body["text"] for path, body in receiver.received if path == "/hook/slack"][1].startswith(
        "Rolling kernel update test")


def _png_colors(path):
    """The set of (r, g, b) of a PNG's pixels (8-bit RGB or RGBA, not interlaced), decoded here."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _c, _f, interlace = header
    assert depth == 8 and color in (2, 6) and not interlace, header
    step = 3 if color == 2 else 4
    raw, stride, prior, colors = zlib.decompress(idat), width * step, bytearray(width * step), set()
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left, up = line[i - step] if i >= step else 0, prior[i]
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                corner = prior[i - step] if i >= step else 0
                guess = left + up - corner
                best = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))[2]
                line[i] = (line[i] + best) & 255
        colors.update(tuple(line[i:i + 3]) for i in range(0, stride, step))
        prior = line
    return colors


def _rgb(color):
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_inside_the_window_with_quiet_gates_the_rollout_notifies_and_draws_its_timeline(fleet, prometheus, receiver):
    before = fleet.memory()
    old_pids = fleet.pids()
    hook = f"http://127.0.0.1:{receiver.server_port}/hook"
    code, output, _recap = fleet.play("-e", "kernel_update_force=true", "-e", "rolling_serial=2", "-e", json.dumps({
        "rolling_window": WINDOW, "rolling_now": INSIDE, "rolling_notify": [hook],
        # Only the database team's critical alerts block: DatabaseDown never fires.
        "rolling_block_on_alerts": {"url": prometheus, "match": 'severity="critical", team=~"db|storage"'},
        "rolling_gate_tasks": [os.path.join(HOOKS, "gate.yml")],
        "rolling_test_gate_file": os.path.join(fleet.workdir, "no-flag")}))
    assert code == 0, _explain(output)
    assert all(pid != old_pids[name] for name, pid in fleet.pids().items()), "every VM was restarted"
    _assert_survived(fleet, before)
    report = fleet.report()
    assert report["stopped"] is None and report["hosts_left"] == [] and report["counts"] == {"updated": 3}
    hosts = _hosts(report)
    assert [hosts[h]["batch"] for h in HOSTS] == [1, 1, 2]
    for entry in hosts.values():
        names = [p["name"] for p in entry["phases"]]
        assert names == ["preflight", "prepare", "save", "pre_reboot", "reboot", "restore", "verify"], names
        assert all(a["finished_at"] == b["started_at"] for a, b in zip(entry["phases"][1:], entry["phases"][2:]))

    assert _events(receiver) == ["started", "host_updated", "host_updated", "host_updated", "finished"]
    bodies = [body for path, body in receiver.received if path == "/hook"]
    assert bodies[0]["data"]["needing"] == list(HOSTS) and bodies[0]["data"]["window"].startswith("mon,tue")
    assert sorted(b["data"]["host"] for b in bodies[1:4]) == list(HOSTS)
    assert all(b["data"]["blackout_seconds"] > 0 and b["data"]["vms"] for b in bodies[1:4])
    assert bodies[4]["data"]["counts"] == {"updated": 3} and bodies[4]["text"].endswith(".html")

    page = os.path.join(fleet.reports, f"rolling-kernel-update-{report['run_id']}.html")
    with open(page, encoding="utf-8") as handle:
        text = handle.read()
    assert text.count('<g class="row">') == 3 and all(f">{name} " in text for names in HOSTS.values() for name in names)
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: the timeline was written but not looked at in a browser")
    shot = _screenshot(fleet, page, "timeline.png", 640)
    colors = _png_colors(shot)
    # The browser drew every phase the hosts went through, the VMs' blackouts, and no failure.
    for phase in ("preflight", "prepare", "save", "restore", "verify"):
        assert _rgb(rollout_timeline.COLORS[phase]) in colors, phase
    assert _rgb(rollout_timeline.BLACKOUT) in colors and _rgb(rollout_timeline.FAILED) not in colors
    if os.environ.get("HYPERVISOR_CPR_SCREENSHOT"):
        shutil.copy(shot, os.environ["HYPERVISOR_CPR_SCREENSHOT"])

    # 300 hosts in batches of 25, made of this run's real entries, one failed: a row per batch, the failure marked.
    real = list(hosts.values())
    fleet_of_300 = []
    for index in range(300):
        entry, shift = json.loads(json.dumps(real[index % 3])), (index // 25) * 90
        for item in entry["phases"] + entry["vms"]:
            for key in ("started_at", "finished_at", "paused_at"):
                if key in item:
                    item[key] += shift
        fleet_of_300.append({**entry, "host": f"hv{index}", "batch": index // 25 + 1,
                             "status": "failed" if index == 130 else "updated"})
    svg = rollout_timeline.rollout_timeline({"run_id": "300", "hosts": fleet_of_300})
    assert svg.count('<g class="row">') == 12 and "batch 6: 25 hosts, 1 failed" in svg
    large = os.path.join(fleet.workdir, "timeline-300.html")
    with open(large, "w", encoding="utf-8") as handle:
        handle.write(f"<!DOCTYPE html><html><body>{svg}</body></html>")
    colors = _png_colors(_screenshot(fleet, large, "timeline-300.png", 560))
    assert _rgb(rollout_timeline.FAILED) in colors and _rgb(rollout_timeline.BLACKOUT) in colors


def _screenshot(fleet_, page, name, height):
    """A PNG of the page as headless Chromium draws it."""
    shot = os.path.join(fleet_.workdir, name)
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={fleet_.workdir}/chromium", f"--window-size=1100,{height}", f"--screenshot={shot}",
                    f"file://{page}"], capture_output=True, timeout=120, check=True)
    return shot
