"""Firmware-only QEMU processes started with hand-written command lines.

These exercise discovery and the readiness verdict against real QEMU; guests
with a kernel and a guest agent come from the test bed (tests/testbed).
"""

import os
import signal
import subprocess
import time

import pytest


class QemuFactory:
    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []

    def start(self, *args, binary="qemu-system-x86_64", wait_for=None, env=None):
        """Start QEMU (TCG, no display) with these arguments; wait until wait_for (a socket path) exists."""
        argv = [binary, "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", *args]
        log = open(os.path.join(self.workdir, f"qemu-{len(self.processes)}.log"), "wb")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while wait_for and not os.path.exists(wait_for):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                with open(log.name, encoding="utf-8", errors="replace") as handle:
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
