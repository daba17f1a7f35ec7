"""Shared fixtures: the collection on sys.path, hand-started QEMUs, and test-bed VMs."""

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


@pytest.fixture
def qemu(tmp_path):
    factory = QemuFactory(str(tmp_path))
    yield factory
    factory.stop_all()


@pytest.fixture
def vm_dir():
    """A short work directory (unix socket paths are limited to 108 bytes); every VM in it is killed afterwards."""
    import testbed  # pylint: disable=import-outside-toplevel

    workdir = tempfile.mkdtemp(prefix="hcpr-", dir="/tmp")
    os.chmod(workdir, 0o700)
    yield workdir
    testbed.kill_all(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
