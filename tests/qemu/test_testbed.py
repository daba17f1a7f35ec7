"""The test bed itself: real TCG VMs boot, answer the agent, suspend, survive cpr-reboot.

Slow-ish (each boot takes a few seconds of TCG); select with
``pytest tests/unit/testbed``. Needs root the first time, to build the guest.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTBED_DIR = Path(__file__).resolve().parents[1] / "testbed"
sys.path.insert(0, str(TESTBED_DIR))
import testbed  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.skipif(shutil.which(testbed.QEMU) is None,
                                reason=f"{testbed.QEMU} is not installed")


@pytest.fixture(scope="module")
def guest():
    return testbed.build_guest()


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    testbed.kill_all(tmp_path)


def test_argv_is_absolute_and_per_ram_kind(tmp_path):
    fake = tmp_path / "guest"
    fake.mkdir()
    for name in ("vmlinuz", "initrd.img", "cmdline"):
        (fake / name).write_text("console=ttyS0\n")
    argv = testbed.qemu_argv("vm0", tmp_path / "work", ram="shm", machine="pc", guest=fake)
    assert Path(argv[0]).is_absolute()
    assert "guest=vm0,debug-threads=on" in argv
    assert "PIIX4_PM.disable_s3=0" in argv
    assert any(re.search(r"mem-path=/dev/shm/hypervisor-cpr-[0-9a-f]{8}-vm0\.ram,share=on", a) for a in argv)
    assert not [a for a in argv if "=" in a and "path=" in a and "path=/" not in a]
    assert "-object" not in testbed.qemu_argv("vm0", tmp_path, ram="private", guest=fake)
    assert "mem-path=/dev/pmem0" in " ".join(testbed.qemu_argv("vm0", tmp_path, ram="block:/dev/pmem0", guest=fake))
    with pytest.raises(testbed.TestbedError, match="ram 'tmpfs'"):
        testbed.qemu_argv("vm0", tmp_path, ram="tmpfs", guest=fake)
    with pytest.raises(testbed.GuestNotBuilt, match="build-guest.sh"):
        testbed.qemu_argv("vm0", tmp_path, guest=tmp_path / "nothing")


def test_two_vms_boot_with_their_own_marker_and_a_running_counter(guest, workdir):
    vms = testbed.boot_vms(workdir, count=2, guest=guest)
    markers = [vm.marker() for vm in vms]
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in markers)
    assert markers[0] != markers[1]
    assert f"MARKER={markers[0]}" in vms[0].serial_log.read_text()
    _counter_goes_on(vms[0])
    assert vms[0].runstate() == "running"
    assert vms[0].ram_path.stat().st_size == 256 << 20

    vms[0].kill()
    assert not vms[0].alive()
    assert not vms[0].qmp_socket.exists() and not vms[0].ram_path.exists()
    assert vms[1].alive()


def test_suspend_to_ram_and_wake_up(guest, workdir):
    (vm,) = testbed.boot_vms(workdir, names=["pc0"], ram="private", machine="pc", guest=guest)
    marker = vm.marker()
    vm.suspend()
    assert vm.runstate() == "suspended"
    vm.wakeup()
    assert vm.marker() == marker
    _counter_goes_on(vm)


def _counter_goes_on(vm, timeout=10):
    """The guest's counter (+1 every 0.1 s of guest time) grows: the guest runs."""
    first, deadline = vm.counter(), time.monotonic() + timeout
    while vm.counter() <= first:
        assert time.monotonic() < deadline, f"{vm.name}: the counter stays at {first}"
        time.sleep(0.02)


def _migrate(vm, command, **args):
    vm.qmp("migrate-set-parameters", mode="cpr-reboot")
    vm.qmp("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    vm.qmp(command, **args)
    deadline = time.monotonic() + 20
    while (status := vm.qmp("query-migrate")).get("status") != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def test_argv_reruns_for_a_cpr_reboot_restore(guest, workdir):
    """What cpr_restore does: re-run the recorded argv with -incoming defer."""
    (vm,) = testbed.boot_vms(workdir, guest=guest)
    marker, state, old_pid = vm.marker(), workdir / "vm0.state", vm.pid
    vm.qmp("stop")
    _migrate(vm, "migrate", uri=f"file:{state}")
    vm.qmp("quit")
    while vm.alive():
        time.sleep(0.02)

    testbed.start_qemu(vm.argv + ["-incoming", "defer"], vm.log)
    deadline = time.monotonic() + 20
    while not (vm.alive() and vm.qmp_socket.exists()):
        assert time.monotonic() < deadline, "the relaunched QEMU did not come up"
        time.sleep(0.05)
    assert vm.pid != old_pid
    _migrate(vm, "migrate-incoming", uri=f"file:{state}")
    vm.qmp("cont")
    assert vm.runstate() == "running"
    assert vm.marker() == marker


def test_cli_vms_outlive_the_cli_and_go_down(guest, workdir):  # pylint: disable=unused-argument
    cli = [sys.executable, str(TESTBED_DIR / "testbed.py")]
    up = subprocess.run(cli + ["up", "--workdir", str(workdir), "--prefix", "cli", "--no-agent"],
                        capture_output=True, text=True, check=True)
    (booted,) = json.loads(up.stdout)
    assert booted["name"] == "cli0" and booted["runstate"] == "running"
    listed = json.loads(subprocess.run(cli + ["list", "--workdir", str(workdir)],
                                       capture_output=True, text=True, check=True).stdout)
    assert [vm["pid"] for vm in listed] == [booted["pid"]]
    down = subprocess.run(cli + ["down", "--workdir", str(workdir)], capture_output=True, text=True, check=True)
    assert json.loads(down.stdout) == {"killed": [booted["pid"]]}
    assert testbed.find_qemu_pid(Path(booted["qmp_socket"])) is None
