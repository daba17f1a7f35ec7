"""Shared fixtures: the collection on sys.path, hand-started QEMUs, test-bed VMs, and the fault campaign's table."""

import json
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


# The fault campaign: one row per injected fault, from tests/faults (the engine) and tests/integration (the role
# and the rolling playbook), printed as one table at the end of the run and written to tests/output/faults.json.
CAMPAIGN_ROWS = []
CAMPAIGN_COLUMNS = ("fault", "injected at", "outcome", "VMs lost", "state files lost", "re-run finished")


@pytest.fixture
def campaign():
    """record(fault, injected_at, outcome, vms_lost, files_lost, rerun_finished) adds a row.

    rerun_finished: True when a real re-run finished the job, False when it could not, None when no re-run is
    possible here (say why in the outcome).
    """

    def record(fault, injected_at, outcome, vms_lost, files_lost, rerun_finished):
        rerun = {True: "yes", False: "no", None: "n/a"}[rerun_finished]
        CAMPAIGN_ROWS.append(dict(zip(CAMPAIGN_COLUMNS, (fault, injected_at, outcome, vms_lost, files_lost, rerun))))

    return record


def pytest_terminal_summary(terminalreporter):
    if not CAMPAIGN_ROWS:
        return
    header = dict(zip(CAMPAIGN_COLUMNS, CAMPAIGN_COLUMNS))
    widths = [max(len(str(row[c])) for row in CAMPAIGN_ROWS + [header]) for c in CAMPAIGN_COLUMNS]
    terminalreporter.section("fault campaign")
    for row in [header] + CAMPAIGN_ROWS:
        terminalreporter.write_line(" | ".join(str(row[c]).ljust(w) for c, w in zip(CAMPAIGN_COLUMNS, widths)))
    output = os.path.join(REPO_ROOT, "tests", "output", "faults.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(CAMPAIGN_ROWS, handle, indent=2)
