"""Fault campaign rows that need a host that really kexecs: one L1 test hypervisor of the kexec lab.

Everything kexecs inside the L1 host (a TCG VM, tests/kexec/lab.py), never this machine. Slow (a real kexec
under TCG takes minutes) and needs root, QEMU 10 and kexec-tools, so it runs only when asked, as
scripts/test.sh (CI) does:

    HYPERVISOR_CPR_KEXEC_FAULTS=1 .venv/bin/pytest tests/kexec/test_kexec_faults.py

1. The host comes back on the wrong kernel: the playbook names a release the kexec'd kernel does not report.
   The role's check fails after the reboot, its rescue restores every VM on the running kernel, the rollout
   stops; a re-run with the right release finds nothing left to do.
2. ansible-playbook is killed (SIGKILL, its whole process tree) right after the kexec, while the role waits
   for the host, and at that boot something starts g1 cold from its saved command line before the boot restore:
   the boot restore (run by the L1 host's init) brings g0 back anyway and leaves the cold g1 alone; a re-run with
   the killed run's id verifies g0, cleans up and refuses g1 naming the process; once it is stopped, a re-run
   restores g1, without a second kexec.
3. ansible-playbook is killed right after `kexec --load` (as soon as /sys/kernel/kexec_loaded says 1), before
   the save. The controller may already have started the save on the host, which then finishes without it:
   the test waits until no module runs there and accepts either outcome, both VMs untouched or both saved
   with manifests and state files; a re-run with the killed run's id kexecs the host and restores them.
4. The target kernel is missing, then not loadable by kexec: each run fails before any VM stops; a re-run
   naming a kernel that is there kexecs the host and restores both VMs.
5. One VM's state file is damaged between the save and the kexec (an operator's pre-reboot task does it): the
   boot restore restores the other VM and keeps this one down with its files; the role fails the host naming it;
   once the file is mended, a re-run with the run's id restores it.
The rows land in the fault campaign table (tests/conftest.py, tests/output/faults.json).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
LAB = os.path.join(HERE, "lab.py")
PLAYBOOK = os.path.join(REPO_ROOT, "playbooks", "rolling_kernel_update.yml")
ANSIBLE_PLAYBOOK = os.path.join(REPO_ROOT, ".venv", "bin", "ansible-playbook")
STATE_DIR = "/var/lib/qemu-cpr"
GUESTS = ["g0:pattern:pmem:running", "g1:pattern:private:running"]

if os.environ.get("HYPERVISOR_CPR_KEXEC_FAULTS") != "1":
    # Skipped at collection: the default pytest run (and --collect-only) neither runs nor lists these tests.
    pytest.skip("real kexecs in a kexec-lab L1 host, minutes each: run with "
                "HYPERVISOR_CPR_KEXEC_FAULTS=1 pytest tests/kexec/test_kexec_faults.py", allow_module_level=True)

pytestmark = pytest.mark.timeout(2400)


def _log(msg):
    print(f"[kexec-faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Lab:
    """One L1 host of the kexec lab, and the rolling playbook run against it."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.inventory = os.path.join(workdir, "inventory.yml")
        # Its own: a lab shared with the kexec-ci scenario holds that scenario's reports in reports/.
        self.reports = os.path.join(workdir, "reports-faults")
        self.runs = 0
        self.info = {}

    def lab(self, *args, timeout=900, check=True):
        run = subprocess.run([sys.executable, LAB, args[0], "--workdir", self.workdir, *args[1:]], capture_output=True,
                             text=True, timeout=timeout, check=False)
        if check:
            assert run.returncode == 0, f"lab.py {args[0]} failed:\n{run.stdout[-4000:]}{run.stderr[-4000:]}"
        return run

    def ssh(self, command):
        cmd = ["--", "sh", "-c", command]
        return self.lab("ssh", "h0", *cmd, timeout=120).stdout

    def facts(self):
        kernel, boot_id = self.ssh("cat /proc/sys/kernel/osrelease /proc/sys/kernel/random/boot_id").split()
        return kernel, boot_id

    def check(self, expect_kernel):
        """lab.py check: the kernel, and every L2 guest in its old runstate with identical RAM."""
        run = self.lab("check", "--expect-kernel", expect_kernel, check=False)
        return run.returncode == 0, json.loads(run.stdout)

    def left(self):
        """(manifests left, manifests whose state file is gone) in the host's state directory."""
        out = self.ssh(f"cd {STATE_DIR} && for m in *.json; do [ -e \"$m\" ] || continue; "
                       "s=${m%.json}.state; [ -e \"$s\" ] && echo \"kept $m\" || echo \"lost $m\"; done")
        lines = out.split("\n")
        return ([line.split()[1] for line in lines if line.strip()],
                sum(1 for line in lines if line.startswith("lost ")))

    def serial_boots(self):
        with open(os.path.join(self.workdir, "h0", "serial.log"), encoding="utf-8", errors="replace") as handle:
            return [line.strip() for line in handle if "kexec-l1 rc: up:" in line]

    def command(self, run_id, *extra):
        return [ANSIBLE_PLAYBOOK, "-i", self.inventory, PLAYBOOK, "-e", "kernel_update_reboot_method=kexec",
                "-e", f"kernel_update_run_id={run_id}", "-e", f"rolling_report_dir={self.reports}", *extra]

    @staticmethod
    def env(log_path):
        env = dict(os.environ)
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO_ROOT, ".cache", "collections"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            # When each task of the run started and ended, beside its log (where the time of a row goes).
            "ANSIBLE_CALLBACK_PLUGINS": os.path.join(REPO_ROOT, "benchmarks", "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "bench_timer",
            "BENCH_TIMER_OUT": log_path[:-len(".log")] + ".tasks.json",
        })
        return env

    def log_path(self):
        self.runs += 1
        return os.path.join(self.workdir, f"run-{self.runs}.log")

    def play(self, run_id, *extra, timeout=1200):
        path = self.log_path()
        with open(path, "w", encoding="utf-8") as log:
            done = subprocess.run(self.command(run_id, *extra), stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, env=self.env(path), cwd=self.workdir, timeout=timeout,
                                  check=False)
        with open(path, encoding="utf-8") as log:
            return done.returncode, log.read()

    def start(self, run_id, *extra):
        path = self.log_path()
        log = open(path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
        # stdin from /dev/null: an inherited one that an ssh made non-blocking makes ansible-playbook refuse to start.
        return subprocess.Popen(self.command(run_id, *extra), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=self.env(path), cwd=self.workdir, start_new_session=True)

    def report(self, run_id):
        with open(os.path.join(self.reports, f"rolling-kernel-update-{run_id}.json"), encoding="utf-8") as handle:
            return {entry["host"]: entry for entry in json.load(handle)["hosts"]}["h0"]


def _descendants(pid):
    """pid and every process under it (ansible-playbook's worker calls setsid: groups are not enough)."""
    found, frontier = {pid}, {pid}
    while frontier:
        children = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent in frontier and int(entry) not in found:
                children.add(int(entry))
        found |= children
        frontier = children
    return found


def _kill_tree(process):
    """SIGKILL ansible-playbook and everything under it, as a crash of the controller would."""
    for _round in range(3):
        for pid in _descendants(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    process.wait()


def _explain(output):
    return output[-6000:]


def _host_blackout(entry):
    """The report's host blackout as a short text for the log and the campaign table."""
    blackout = entry.get("host_blackout")
    if not blackout:
        return "no host blackout reported"
    to_userspace = blackout["to_userspace_seconds"]
    return (f"host blackout {blackout['seconds']:.1f} s from the {blackout['from']}, "
            f"{to_userspace:.1f} s of it to the new userspace" if to_userspace is not None else
            f"host blackout {blackout['seconds']:.1f} s from the {blackout['from']}")


def _next_kernel(lab):
    """(kernel, boot id) now, the lab's other kernel to kexec into, and the -e options that name it."""
    kernel, boot_id = lab.facts()
    target = lab.info["old_kernel"] if kernel == lab.info["new_kernel"] else lab.info["new_kernel"]
    pin = ["-e", f"kernel_update_kernel=/boot/vmlinuz-{target}", "-e", f"kernel_update_initrd=/boot/initrd.img-{target}"]
    return kernel, boot_id, target, pin


def _rerun_kexecs_and_restores(lab, run_id, pin, target, boot_before, what):
    """Run the playbook again: it must kexec the host into target and restore both VMs as they were."""
    started = time.monotonic()
    code, output = lab.play(run_id, *pin)
    seconds = time.monotonic() - started
    _log(f"{what}: {seconds:.0f} s, exit {code}")
    assert code == 0, _explain(output)
    entry = lab.report(run_id)
    assert entry["status"] == "updated" and entry["rebooted"] and len(entry["vms"]) == 2, entry
    kernel, boot_id = lab.facts()
    assert kernel == target and boot_id != boot_before
    ok, report = lab.check(target)
    assert ok, json.dumps(report, indent=2)
    assert lab.left() == ([], 0)
    return seconds


def _guest_losses(report, manifests):
    """Guests that are neither back as they were nor restorable from a manifest."""
    return sum(1 for guest in report["hosts"][0]["guests"]
               if not guest["ok"] and f"{guest['name']}.json" not in manifests)


@pytest.fixture(scope="module")
def lab():
    """One L1 host on the old kernel with the two guests; booted here, or the lab HYPERVISOR_CPR_KEXEC_LAB names.

    scripts/test.sh boots that lab while other steps run and hands it on to the kexec-ci scenario afterwards:
    one L1 boot for both. `lab.py guests` resets the host either way (guests, state directory, kexec kernel).
    """
    shared = os.environ.get("HYPERVISOR_CPR_KEXEC_LAB")
    workdir = shared or tempfile.mkdtemp(prefix="kexec-faults-", dir="/tmp")
    handle = Lab(workdir)
    started = time.monotonic()
    try:
        if not shared:
            handle.lab("up", "--hosts", "1", timeout=1200)
        args = ["guests", "--kernel", "old"] + [arg for guest in GUESTS for arg in ("--guest", guest)]
        handle.info = json.loads(handle.lab(*args, timeout=1200).stdout)
        _log(f"lab ready in {time.monotonic() - started:.0f} s: {handle.info['old_kernel']} -> {handle.info['new_kernel']}"
             f" ({'shared, ' if shared else ''}{handle.info['hosts'][0]['timings']})")
        yield handle
    finally:
        if not shared:
            handle.lab("down", "--keep", check=False)
            if not os.environ.get("HYPERVISOR_CPR_KEEP_WORKDIR"):
                shutil.rmtree(workdir, ignore_errors=True)


def test_a_host_back_on_the_wrong_kernel_gets_its_vms_back_and_stops_the_rollout(lab, campaign):
    new = lab.info["new_kernel"]
    kernel_before, boot_before = lab.facts()
    assert kernel_before == lab.info["old_kernel"]
    wrong = f"{new}-wrong"
    started = time.monotonic()
    code, output = lab.play("wrong1", "-e", f"kernel_update_kernel=/boot/vmlinuz-{new}",
                            "-e", f"kernel_update_initrd=/boot/initrd.img-{new}",
                            "-e", f"kernel_update_kernel_release={wrong}")
    seconds = time.monotonic() - started
    _log(f"wrong-kernel run: {seconds:.0f} s, exit {code}")
    assert code != 0, _explain(output)
    assert f"runs kernel {new}, not the target {wrong}" in output, _explain(output)
    kernel, boot_id = lab.facts()
    assert kernel == new and boot_id != boot_before, "the host kexec'd into the new kernel"
    ok, report = lab.check(new)
    manifests, files_lost = lab.left()
    assert ok, json.dumps(report, indent=2)
    assert manifests == [], f"manifests left: {manifests}"
    entry = lab.report("wrong1")
    assert entry["status"] == "failed" and entry["rebooted"], entry
    assert entry["still_saved"] == [] and sorted(vm["name"] for vm in entry["vms"]) == ["g0", "g1"], entry
    # The boot restore does not know the target: it restored both on the kernel that runs, before the check.
    assert all(vm["restored_at_boot"] for vm in entry["vms"]), entry
    _log("wrong-kernel report: " + json.dumps({k: entry[k] for k in ("status", "phase", "error", "blackout_seconds")})
         + "; " + _host_blackout(entry))

    # A re-run with the right release: the host already runs it, nothing is left to do.
    started = time.monotonic()
    code, output = lab.play("wrong2", "-e", f"kernel_update_kernel=/boot/vmlinuz-{new}",
                            "-e", f"kernel_update_initrd=/boot/initrd.img-{new}")
    _log(f"re-run with the right release: {time.monotonic() - started:.0f} s, exit {code}")
    assert code == 0, _explain(output)
    assert lab.report("wrong2")["status"] == "unchanged"
    assert lab.facts() == (new, boot_id), "the re-run did not reboot the host again"
    ok, report = lab.check(new)
    assert ok, json.dumps(report, indent=2)
    campaign("host back on the wrong kernel", "role: after the kexec (kexec lab, real L1 host)",
             f"failed naming the running kernel and the target; the boot restore had restored both VMs (pmem, private "
             f"RAM) on it, the rescue verified them, RAM identical; rollout stopped (run {seconds:.0f} s); a re-run "
             f"with the right release: unchanged",
             _guest_losses(report, manifests), files_lost, True)


def _with_cold_boot(lab, name, boot_id):
    """-e options for a kexec whose next boot starts VM name cold before the boot restore (l1/rc, kexecl1.coldboot)."""
    cmdline = [arg for arg in lab.ssh("cat /proc/cmdline").split() if not arg.startswith("kexecl1.coldboot=")]
    return ["-e", json.dumps({"kernel_update_cmdline": " ".join(cmdline + [f"kexecl1.coldboot={name}:{boot_id}"])})]


def test_a_run_killed_after_the_kexec_is_finished_by_a_rerun_with_its_id(lab, campaign):
    # The host runs the new kernel after the test above (or the old one, alone): kexec into the other. At that boot
    # something starts g1 (private RAM) cold from its own command line before the boot restore runs, as an enabled
    # unit or a hypervisor manager would.
    _kernel_before, boot_before, target, pin = _next_kernel(lab)
    boots = len(lab.serial_boots())
    started = time.monotonic()
    run = lab.start("killed1", *pin, *_with_cold_boot(lab, "g1", boot_before))
    try:
        deadline = time.monotonic() + 900
        while len(lab.serial_boots()) == boots:
            assert run.poll() is None, "the playbook ended before the kexec"
            assert time.monotonic() < deadline, "no kexec"
            time.sleep(0.2)
    finally:
        _kill_tree(run)
    _log(f"killed after the kexec at {time.monotonic() - started:.0f} s: {lab.serial_boots()[-1]}")
    assert lab.serial_boots()[-1].startswith(f"kexec-l1 rc: up: {target} ")
    # Wait until the host answers, then look, with no controller since the kexec.
    deadline = time.monotonic() + 600
    while True:
        try:
            kernel, boot_id = lab.facts()
            break
        except (AssertionError, ValueError, subprocess.TimeoutExpired):
            assert time.monotonic() < deadline, "the host did not come back"
            time.sleep(2)
    assert kernel == target and boot_id != boot_before
    cold = int(lab.ssh("cat /run/kexec-l1/coldboot").strip())
    # The boot restore brought g0 back anyway and left the cold g1 alone: its manifest and state file are kept.
    manifests, files_lost = lab.left()
    assert manifests == ["g0.json", "g1.json"], manifests
    ok, report = lab.check(target)
    guests = {guest["name"]: guest["ok"] for guest in report["hosts"][0]["guests"]}
    assert guests == {"g0": True, "g1": False}, json.dumps(report, indent=2)
    vms_lost = _guest_losses(report, manifests)

    started = time.monotonic()
    code, output = lab.play("killed1", *pin)
    _log(f"re-run with a cold g1 running: {time.monotonic() - started:.0f} s, exit {code}")
    assert code != 0 and f"VM g1: a QEMU of this name runs that no restore started (pid {cold}" in output, _explain(output)
    entry = lab.report("killed1")
    assert entry["still_saved"] == ["g1"], entry
    assert [(vm["name"], vm["restored_at_boot"]) for vm in entry["vms"]] == [("g0", True)], entry
    assert [vm["name"] for vm in entry["boot_restore"]["failed"]] == ["g1"], entry["boot_restore"]
    cold_left = lab.left()
    assert cold_left == (["g1.json"], 0), cold_left
    lab.ssh(f"kill -9 {cold}")
    campaign("saved VM started cold from its command line", "at boot after the kexec, before the boot restore (kexec lab)",
             "the boot restore and then cpr_restore left it alone, naming the process; its state file and manifest "
             "kept; the other VM came back at boot; after the cold one was stopped, a re-run restored it, RAM "
             "identical", vms_lost, cold_left[1], True)

    started = time.monotonic()
    code, output = lab.play("killed1", *pin)
    seconds = time.monotonic() - started
    _log(f"re-run with the killed run's id: {seconds:.0f} s, exit {code}")
    assert code == 0, _explain(output)
    entry = lab.report("killed1")
    assert entry["status"] == "updated" and not entry["rebooted"], entry
    assert [(vm["name"], vm["saved_by_earlier_run"], vm["restored_at_boot"]) for vm in entry["vms"]] == [
        ("g1", True, False)], entry
    assert lab.facts() == (target, boot_id), "the re-run did not reboot the host again"
    ok, report = lab.check(target)
    assert ok, json.dumps(report, indent=2)
    assert lab.left() == ([], 0)
    assert lab.ssh(f"ls -A {STATE_DIR}/.boot-restore 2>/dev/null || true").split() == [], "the boot entry is gone"
    campaign("ansible-playbook killed (SIGKILL)", "role: after the kexec, before cpr_restore (kexec lab)",
             f"the controller never came back: the boot restore brought the VM it could back on the kernel it kexec'd "
             f"into, RAM identical; re-runs with the killed run's id verified it, cleaned up and restored the other "
             f"without a second kexec ({seconds:.0f} s)", vms_lost, files_lost, True)


def _modules_running(lab):
    """Ansible modules still running on the host (pipelined: `/bin/sh -c '/usr/bin/python3 && sleep 0'`)."""
    return int(lab.ssh("ps -eo args | grep -c -e '[A]nsiballZ' -e '[s]leep 0' || true").strip() or 0)


def test_a_run_killed_after_kexec_load_is_finished_by_a_rerun_with_its_id(lab, campaign):
    kernel_before, boot_before, target, pin = _next_kernel(lab)
    assert lab.ssh("cat /sys/kernel/kexec_loaded").strip() == "0"
    run = lab.start("loaded1", *pin)
    try:
        deadline = time.monotonic() + 600
        while lab.ssh("cat /sys/kernel/kexec_loaded").strip() != "1":
            assert run.poll() is None, "the playbook ended before kexec --load"
            assert time.monotonic() < deadline, "kexec --load never ran"
            time.sleep(0.2)
    finally:
        _kill_tree(run)
    _log("killed after kexec --load")
    # A module the controller had already started on the host runs to its end without it.
    deadline, quiet = time.monotonic() + 300, 0
    while quiet < 3:
        quiet = quiet + 1 if _modules_running(lab) == 0 else 0
        assert time.monotonic() < deadline, "a module still runs on the host"
        time.sleep(1)
    assert lab.facts() == (kernel_before, boot_before), "no kexec happened"
    assert lab.ssh(f"ls {STATE_DIR} | grep -e '[.]saving$' || true").split() == [], "no save left half done"
    manifests, files_lost = lab.left()
    ok, report = lab.check(kernel_before)
    if manifests:
        assert manifests == ["g0.json", "g1.json"] and files_lost == 0, (manifests, files_lost)
        left = "the save the controller had started finished on the host: both VMs saved, manifests and state files kept"
    else:
        guests = report["hosts"][0]["guests"]
        assert len(guests) == 2 and all(g["ok"] for g in guests), "both VMs untouched: " + json.dumps(report, indent=2)
        left = "no VM touched: both running, RAM identical, same boot"
    _log(f"after the kill: {left}")
    vms_lost = _guest_losses(report, manifests)

    seconds = _rerun_kexecs_and_restores(lab, "loaded1", pin, target, boot_before, "re-run with the killed run's id")
    campaign("ansible-playbook killed (SIGKILL)", "role: after kexec --load, before the save (kexec lab)",
             f"{left}; a re-run with the killed run's id kexec'd the host and restored both VMs, RAM identical "
             f"({seconds:.0f} s)", vms_lost, files_lost, True)


def test_a_missing_or_unloadable_kernel_touches_nothing_and_a_rerun_with_the_kernel_finishes(lab, campaign):
    kernel_before, boot_before, target, pin = _next_kernel(lab)
    missing = "/var/tmp/vmlinuz-9.9.9-missing"
    bad_kernel, bad_initrd = "/var/tmp/vmlinuz-9.9.9-bad", "/var/tmp/initrd.img-9.9.9-bad"
    lab.ssh(f"rm -f {missing}; for f in {bad_kernel} {bad_initrd}; do echo 'not a kernel' > $f; done")
    rows = []
    for run_id, kernel, initrd, expected in (
            ("missing1", missing, f"/boot/initrd.img-{target}", f"The kernel image {missing} does not exist on h0"),
            ("badkernel1", bad_kernel, bad_initrd, f"kexec --load {bad_kernel} failed")):
        code, output = lab.play(run_id, "-e", f"kernel_update_kernel={kernel}", "-e", f"kernel_update_initrd={initrd}")
        assert code != 0, _explain(output)
        assert expected in output, _explain(output)
        assert lab.facts() == (kernel_before, boot_before), "no kexec happened"
        manifests, files_lost = lab.left()
        ok, report = lab.check(kernel_before)
        assert manifests == [] and ok, json.dumps(report, indent=2)
        rows.append((_guest_losses(report, manifests), files_lost))
        _log(f"{run_id}: refused, both VMs untouched")

    # The operator installs the kernel (here: names the one that is there) and runs the playbook again.
    seconds = _rerun_kexecs_and_restores(lab, "kernel2", pin, target, boot_before, "re-run with the kernel")
    rerun = f"a re-run with the kernel kexec'd the host and restored both VMs, RAM identical ({seconds:.0f} s)"
    campaign("target kernel missing", "preflight (kernel_update_kernel names no file; kexec lab)",
             f"refused in the preflight naming the file; no VM touched; {rerun}", *rows[0], True)
    campaign("target kernel not loadable by kexec", "role: kexec --load, before any VM stops (kexec lab)",
             f"failed naming the kernel and kexec's words; no VM touched; {rerun}", *rows[1], True)


# An operator's task before the reboot (kernel_update_pre_reboot_tasks) that damages g0's state file, keeping a copy
# on the state disk (the L1 host's /var/tmp does not outlive the kexec; the engine reads no *.good file).
DAMAGE_TASKS = """- name: Damage g0's state file after the save, keeping a good copy (fault campaign)
  ansible.builtin.shell: >-
    cp {state_dir}/g0.state {state_dir}/g0.state.good &&
    printf 'damaged' | dd of={state_dir}/g0.state bs=1 seek=512 conv=notrunc status=none
  changed_when: true
"""


def test_a_state_file_damaged_before_the_kexec_keeps_that_vm_down_and_the_others_come_back(lab, campaign):
    _kernel_before, boot_before, target, pin = _next_kernel(lab)
    damage = os.path.join(lab.workdir, "damage-g0.yml")
    with open(damage, "w", encoding="utf-8") as handle:
        handle.write(DAMAGE_TASKS.format(state_dir=STATE_DIR))
    started = time.monotonic()
    code, output = lab.play("damaged1", *pin, "-e", json.dumps({"kernel_update_pre_reboot_tasks": [damage]}))
    seconds = time.monotonic() - started
    _log(f"run with g0's state damaged before the kexec: {seconds:.0f} s, exit {code}")
    assert code != 0 and "Still saved, not restored: g0" in output, _explain(output)
    kernel, boot_id = lab.facts()
    assert kernel == target and boot_id != boot_before
    entry = lab.report("damaged1")
    assert entry["still_saved"] == ["g0"], entry
    assert [(vm["name"], vm["restored_at_boot"]) for vm in entry["vms"]] == [("g1", True)], entry
    assert [vm["name"] for vm in entry["boot_restore"]["failed"]] == ["g0"], entry["boot_restore"]
    manifests, files_lost = lab.left()
    assert manifests == ["g0.json"] and files_lost == 0, (manifests, files_lost)
    ok, report = lab.check(target)
    guests = {guest["name"]: guest["ok"] for guest in report["hosts"][0]["guests"]}
    assert guests == {"g0": False, "g1": True}, json.dumps(report, indent=2)
    vms_lost = _guest_losses(report, manifests)
    _log(f"damaged g0: kept down with its files, g1 back at boot; {_host_blackout(entry)}")

    # The operator mends the file (here: puts the good copy back) and runs again with the run's id.
    lab.ssh(f"mv {STATE_DIR}/g0.state.good {STATE_DIR}/g0.state")
    code, output = lab.play("damaged1", *pin)
    assert code == 0, _explain(output)
    entry = lab.report("damaged1")
    assert entry["status"] == "updated" and [vm["name"] for vm in entry["vms"]] == ["g0"], entry
    assert lab.facts() == (target, boot_id), "the re-run did not reboot the host again"
    ok, report = lab.check(target)
    assert ok, json.dumps(report, indent=2)
    assert lab.left() == ([], 0)
    campaign("state file damaged before the reboot", "boot restore, after the kexec (kexec lab)",
             "the boot restore refused that VM (checksum), kept it down with its files and restored the other; the "
             "role failed the host naming it; once the file was mended a re-run with the run's id restored it, RAM "
             "identical", vms_lost, files_lost, True)
