"""The target kernel of an update, from what is installed in a boot directory."""

import subprocess
import time

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._host import (
    installed_kernels,
    is_running,
    process_identity,
    started_at,
    target_kernel,
    unit_of,
    version_key,
)


@pytest.mark.parametrize("older, newer", [
    ("6.1.0-9-amd64", "6.1.0-28-amd64"),
    ("6.9.0-1-amd64", "6.10.0-1-amd64"),
    ("5.14.0-427.el9.x86_64", "5.14.0-503.el9.x86_64"),
    ("6.1.0-28-amd64", "6.1.0-28-rt-amd64"),
    ("6.1.0-28-amd64", "6.12.0-1-amd64"),
])
def test_version_order(older, newer):
    assert version_key(older) < version_key(newer)


@pytest.fixture
def boot(tmp_path):
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-28-amd64", "initrd.img-6.1.0-28-amd64",
                 "vmlinuz-5.14.0-503.el9.x86_64", "initramfs-5.14.0-503.el9.x86_64.img", "config-6.1.0-28-amd64"):
        (tmp_path / name).write_text("x")
    (tmp_path / "vmlinuz-dir").mkdir()
    return str(tmp_path)


def test_installed_kernels_newest_first_with_their_initrd(boot):
    assert [(k["release"], k["initrd"] and k["initrd"].rsplit("/", 1)[1]) for k in installed_kernels(boot)] == [
        ("6.1.0-28-amd64", "initrd.img-6.1.0-28-amd64"),
        ("6.1.0-9-amd64", None),
        ("5.14.0-503.el9.x86_64", "initramfs-5.14.0-503.el9.x86_64.img"),
    ]


@pytest.mark.parametrize("kernel, initrd, release, image, expected_release, expected_initrd, exists", [
    # Empty: the newest installed.
    ("", "", "", "vmlinuz-6.1.0-28-amd64", "6.1.0-28-amd64", "initrd.img-6.1.0-28-amd64", True),
    # A release means <boot>/vmlinuz-<release>; the RHEL family's initramfs name is found too.
    ("5.14.0-503.el9.x86_64", "", "", "vmlinuz-5.14.0-503.el9.x86_64", "5.14.0-503.el9.x86_64",
     "initramfs-5.14.0-503.el9.x86_64.img", True),
    # An image without an initrd.
    ("6.1.0-9-amd64", "", "", "vmlinuz-6.1.0-9-amd64", "6.1.0-9-amd64", "", True),
    # A release that is not installed.
    ("9.9.9", "", "", "vmlinuz-9.9.9", "9.9.9", "", False),
    # The release the kernel reports, given, wins over the file name.
    ("6.1.0-28-amd64", "", "6.1.0-28-custom", "vmlinuz-6.1.0-28-amd64", "6.1.0-28-custom", "", True),
])
def test_target_kernel(boot, kernel, initrd, release, image, expected_release, expected_initrd, exists):
    target = target_kernel(kernel, initrd, release, boot)
    assert target["image"] == f"{boot}/{image}"
    assert target["image_exists"] is exists
    assert target["release"] == expected_release
    assert target["initrd"] == (f"{boot}/{expected_initrd}" if expected_initrd else "")


def test_a_path_not_named_vmlinuz_has_no_release(boot):
    target = target_kernel(f"{boot}/bzImage", "", "", boot)
    assert (target["release"], target["initrd_candidates"], target["image_exists"]) == ("", [], False)


def test_an_empty_boot_directory_has_no_target(tmp_path):
    assert target_kernel("", "", "", str(tmp_path))["image"] == ""


@pytest.mark.parametrize("cgroup, unit", [
    ("0::/system.slice/qemu@web1.service\n", "qemu@web1.service"),
    ("0::/machine.slice/machine-qemu\\x2d3\\x2dweb1.scope/libvirt/emulator\n", "machine-qemu\\x2d3\\x2dweb1.scope"),
    ("0::/qemu.slice/100.scope\n", "100.scope"),
    ("0::/system.slice/hypervisor-cpr-web1-1700000000.service\n", "hypervisor-cpr-web1-1700000000.service"),
    # A user's own session or units are not the system's.
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/vm.service\n", None),
    # cgroup v1: the named systemd hierarchy tells; the others do not.
    ("12:cpu,cpuacct:/\n1:name=systemd:/system.slice/qemu@db1.service\n", "qemu@db1.service"),
    ("0::/\n", None),
    ("", None),
])
def test_the_unit_of_a_process(cgroup, unit):
    assert unit_of(0, cgroup) == unit


def test_a_process_is_told_apart_from_one_that_reuses_its_pid():
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        identity = process_identity(sleeper.pid)
        assert is_running(identity)
        assert not is_running(dict(identity, start_time=identity["start_time"] - 1))
        assert not is_running(dict(identity, boot_id="another boot"))
        assert started_at(identity) == pytest.approx(time.time(), abs=60)
        sleeper.kill()
        sleeper.wait()
    assert not is_running(identity)
    assert not is_running(None) and not is_running({})
