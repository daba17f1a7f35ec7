"""Shared fixtures: the collection on sys.path, hand-started QEMUs, test-bed VMs, and the fault campaign's table."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO_ROOT, ".cache", "collections")
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "testbed"))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "libvirt"))
# fault_table.py, beside this file: not on the path when ansible-test units loads this conftest.
sys.path.append(os.path.join(REPO_ROOT, "tests"))


def _link_collection() -> None:
    link = os.path.join(COLLECTIONS, "ansible_collections", "hypervisor", "cpr")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(REPO_ROOT, link)


if "ansible_collections.hypervisor.cpr" not in sys.modules and not REPO_ROOT.endswith("ansible_collections/hypervisor/cpr"):
    _link_collection()
    sys.path.insert(0, COLLECTIONS)


class QemuFactory:
    """Firmware-only QEMU processes with hand-written command lines."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []

    def start(self, *args, binary="qemu-system-x86_64", wait_for=None, env=None):
        """Start QEMU (TCG, no display) with these arguments; wait until wait_for (a socket path) exists."""
        argv = [binary, "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", *args]
        log_path = os.path.join(self.workdir, f"qemu-{len(self.processes)}.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=env)
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while wait_for and not os.path.exists(wait_for):
            if process.poll() is not None or time.monotonic() > deadline:
                with open(log_path, encoding="utf-8", errors="replace") as handle:
                    raise RuntimeError(f"QEMU did not start: {handle.read()}")
            time.sleep(0.05)
        return process

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.wait()


def pytest_configure(config):  # pylint: disable=unused-argument
    # Tests put RAM files "on disk" under tmp_path; on Debian 13 /tmp is tmpfs, so use /var/tmp there.
    from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import filesystem_of  # pylint: disable=import-outside-toplevel

    temp = tempfile.gettempdir()
    if "TMPDIR" not in os.environ and not filesystem_of(temp, os.stat(temp).st_dev, None)[2]:
        os.environ["TMPDIR"] = tempfile.tempdir = "/var/tmp"


@pytest.fixture
def qemu(tmp_path):
    factory = QemuFactory(str(tmp_path))
    yield factory
    factory.stop_all()


@pytest.fixture
def vm_dir():
    """A short work directory (unix socket paths are limited to 108 bytes); every VM in it is killed afterwards."""
    import testbed  # pylint: disable=import-outside-toplevel

    # The temp dir, not /tmp: test VMs keep their RAM files here, and they must be on disk (see pytest_configure).
    workdir = tempfile.mkdtemp(prefix="hcpr-", dir=tempfile.gettempdir())
    os.chmod(workdir, 0o700)
    yield workdir
    testbed.kill_all(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


class VmPool:
    """Test-bed VMs that the tests of a module share, each booted once (see the vm_pool fixture)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.vms = {}

    def get(self, name, **boot):
        """The VM of this name running, with its agent answering: as the last test left it, else booted anew."""
        import testbed  # pylint: disable=import-outside-toplevel

        vm, booted_with = self.vms.get(name, (None, None))
        if vm is not None and (booted_with != boot or not self._healthy(vm)):
            vm.kill()
            vm = None
        if vm is None:
            [vm] = testbed.boot_vms(self.workdir, names=[name], **boot)
            self.vms[name] = (vm, boot)
        return vm

    @staticmethod
    def _healthy(vm):
        from qemu.qmp import QMPError  # pylint: disable=import-outside-toplevel
        import testbed  # pylint: disable=import-outside-toplevel

        try:
            return vm.refresh_pid() is not None and vm.runstate() == "running" and vm.agent_answers(5)
        except (testbed.TestbedError, QMPError, OSError):
            return False


@pytest.fixture(scope="module")
def vm_pool():
    """VMs shared by the tests of a module where a test needs a running guest, not a fresh boot.

    Each test puts back what it changed (a saved VM restored, a paused one continued); a VM that a failed test
    left otherwise is booted again for the next one.
    """
    import testbed  # pylint: disable=import-outside-toplevel

    workdir = tempfile.mkdtemp(prefix="hcpr-pool-", dir=tempfile.gettempdir())
    os.chmod(workdir, 0o700)
    yield VmPool(workdir)
    testbed.kill_all(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


# The fault campaign: one row per injected fault, from tests/faults (the engine), tests/integration (the role and
# the rolling playbook) and tests/kexec (the kexec lab), printed as one table at the end of the run and written to
# tests/output/faults.json (tests/fault_table.py). A row travels with its test's report, so that it reaches the
# process that prints the table also when pytest-xdist runs the test in a worker.
CAMPAIGN_ROWS = []


@pytest.fixture
def campaign(request):
    """record(fault, injected_at, outcome, vms_lost, files_lost, rerun_finished) adds a row.

    rerun_finished: True when a real re-run finished the job, False when it could not, None when no re-run is
    possible here (say why in the outcome).
    """

    import fault_table  # pylint: disable=import-outside-toplevel

    def record(*fields):
        request.node.user_properties.append(("fault_campaign_row", fault_table.row(*fields)))

    return record


def pytest_runtest_logreport(report):
    if report.when == "call":
        CAMPAIGN_ROWS.extend((report.location[:2], value) for key, value in report.user_properties
                             if key == "fault_campaign_row")


def pytest_terminal_summary(terminalreporter):
    if not CAMPAIGN_ROWS or hasattr(terminalreporter.config, "workerinput"):
        return
    import fault_table  # pylint: disable=import-outside-toplevel

    # In file order, as a run without workers has them (a test's own rows in the order it recorded them).
    rows = [value for _place, value in sorted(CAMPAIGN_ROWS, key=lambda entry: entry[0])]
    terminalreporter.section("fault campaign")
    for line in fault_table.lines(rows):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {fault_table.write(rows)}")


# A real libvirt daemon (libvirtd in a mount namespace of its own, tests/libvirt/libvirtlab.py) with TCG domains
# of the test bed's guest. One daemon per test session (per xdist worker); its image directory is a tmpfs of
# its own, so that a test can fill it up.
LIBVIRT_SAVE_FS_MIB = 2048


@pytest.fixture(scope="session")
def libvirt_lab():
    """The session's libvirt daemon (a LibvirtLab): lab.uri for the modules' uri option, lab.define_domain()."""
    import libvirtlab  # pylint: disable=import-outside-toplevel

    why = libvirtlab.available()
    if why:
        pytest.skip(why)
    workdir = tempfile.mkdtemp(prefix="hcpr-lv-", dir=tempfile.gettempdir())
    lab = libvirtlab.LibvirtLab.start(workdir, save_fs_mib=LIBVIRT_SAVE_FS_MIB)
    yield lab
    lab.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def libvirt_domain(libvirt_lab):  # pylint: disable=redefined-outer-name
    """One running, persistent TCG domain of the session's libvirt daemon, its guest agent answering.

    Yields (lab, name). vm_status lists its QEMU as managed_by libvirt; the domain is removed after the module.
    """
    dom = libvirt_lab.define_domain(f"dom{len(libvirt_lab.domains)}")
    yield libvirt_lab, dom.name()
    libvirt_lab.remove_domain(dom.name())
