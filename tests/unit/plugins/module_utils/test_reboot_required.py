"""_reboot_required: what the distribution says about a reboot, from its own files and tools.

The Debian family's answer is a file: the cases write real files under a root of their own. The RHEL family's is
the exit status of needs-restarting -r: the cases run the real `dnf needs-restarting -r` (Debian packages it in
dnf-plugins-core) against an RPM database of their own, in which an RPM named kernel, built here with rpmbuild, is
installed after this machine booted, as a kernel update leaves it.
"""

import os
import shutil
import subprocess

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._reboot_required import (
    from_needs_restarting, needs_restarting_command, os_family, reboot_required)

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
UBUNTU = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n'
ROCKY = 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
FEDORA = "ID=fedora\n"
ARCH = "ID=arch\n"


@pytest.mark.parametrize("text, family", [
    (DEBIAN, "debian"), (UBUNTU, "debian"), ("ID=linuxmint\nID_LIKE='ubuntu debian'\n", "debian"),
    (ROCKY, "rhel"), (FEDORA, "rhel"), ('ID="rhel"\n', "rhel"), ("ID=almalinux\nID_LIKE=\"rhel centos fedora\"\n", "rhel"),
    (ARCH, None), ("", None), ("# ID=debian\nVERSION_ID=12\n", None),
])
def test_os_family(text, family):
    assert os_family(text) == family


def _root(tmp_path, os_release, files=None):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text(os_release)
    (tmp_path / "var" / "run").mkdir(parents=True)
    for name, text in (files or {}).items():
        (tmp_path / "var" / "run" / name).write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("os_release, files, expected", [
    # Debian and Ubuntu: the sentinel decides.
    (DEBIAN, {}, {"required": False, "source": "/var/run/reboot-required", "packages": [],
                  "detail": "/var/run/reboot-required does not exist"}),
    (UBUNTU, {"reboot-required": "*** System restart required ***\n",
              "reboot-required.pkgs": "linux-image-6.8.0-49-generic\nlinux-base\nlinux-image-6.8.0-49-generic\n"},
     {"required": True, "source": "/var/run/reboot-required", "packages": ["linux-image-6.8.0-49-generic", "linux-base"],
      "detail": "/var/run/reboot-required exists (System restart required), asked for by linux-image-6.8.0-49-generic, "
                "linux-base"}),
    # An empty sentinel without .pkgs (touched by hand) still asks.
    (DEBIAN, {"reboot-required": ""}, {"required": True, "source": "/var/run/reboot-required", "packages": [],
                                       "detail": "/var/run/reboot-required exists"}),
    # Another distribution: a sentinel counts where one exists, else nobody can tell.
    (ARCH, {"reboot-required": "*** System restart required ***\n"},
     {"required": True, "source": "/var/run/reboot-required", "packages": [],
      "detail": "/var/run/reboot-required exists (System restart required)"}),
    (ARCH, {}, {"required": None, "source": None, "packages": [],
                "detail": "the distribution has no known way to say (neither the Debian nor the RHEL family)"}),
])
def test_debian_family_and_others(tmp_path, os_release, files, expected):
    assert reboot_required(_root(tmp_path, os_release, files)) == expected


def test_rhel_family_without_needs_restarting(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    root = _root(tmp_path, ROCKY, {"reboot-required": "ignored on the RHEL family\n"})
    assert reboot_required(root, search_path=str(empty)) == {
        "required": None, "source": "needs-restarting -r", "packages": [],
        "detail": "needs-restarting is not installed (dnf-utils or yum-utils has it)"}


def test_the_command_found(tmp_path):
    for name in ("dnf", "needs-restarting"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert needs_restarting_command(str(tmp_path)) == [str(tmp_path / "needs-restarting"), "-r"]
    (tmp_path / "needs-restarting").unlink()
    assert needs_restarting_command(str(tmp_path)) == [str(tmp_path / "dnf"), "needs-restarting", "-r"]
    (tmp_path / "dnf").unlink()
    assert needs_restarting_command(str(tmp_path)) is None


def test_a_command_that_cannot_run_or_fails(tmp_path):
    assert from_needs_restarting([str(tmp_path / "missing"), "-r"])["required"] is None
    result = from_needs_restarting(["/bin/false"])
    assert result == {"required": True, "source": "false", "packages": [], "detail": "false exited 1"}
    result = from_needs_restarting(["/bin/sh", "-c", "echo 'Error: rpmdb open failed' >&2; exit 3"])
    assert result["required"] is None and result["detail"] == "sh -c echo 'Error: rpmdb open failed' >&2; exit 3 exited 3: " \
        "Error: rpmdb open failed"


DNF = shutil.which("dnf")
RPMBUILD = shutil.which("rpmbuild")


@pytest.fixture(scope="module")
def kernel_rpm(tmp_path_factory):
    """An RPM named kernel, built here."""
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "SPECS").mkdir()
    (top / "SPECS" / "kernel.spec").write_text(
        "Name: kernel\nVersion: 9.9.9\nRelease: 1\nSummary: a kernel package for the test\nLicense: GPL\n"
        "BuildArch: noarch\n%description\nA kernel package for the test.\n%files\n")
    subprocess.run([RPMBUILD, "--define", f"_topdir {top}", "-bb", str(top / "SPECS" / "kernel.spec")],
                   check=True, capture_output=True)
    return str(top / "RPMS" / "noarch" / "kernel-9.9.9-1.noarch.rpm")


@pytest.mark.skipif(not DNF or not RPMBUILD, reason="dnf-plugins-core and rpm are not installed "
                    "(scripts/install-host-deps.sh installs them)")
def test_real_needs_restarting(tmp_path, kernel_rpm):
    root = str(tmp_path / "root")
    os.makedirs(root)
    subprocess.run(["rpm", "--root", root, "--initdb"], check=True, capture_output=True)
    command = [DNF, f"--installroot={root}", "needs-restarting", "-r"]
    before = from_needs_restarting(command)
    assert before["required"] is False and before["packages"] == []
    assert before["detail"].endswith(": Reboot should not be necessary.")

    # A kernel installed after this machine booted: a reboot is required.
    subprocess.run(["rpm", "--root", root, "-i", "--nodeps", kernel_rpm], check=True, capture_output=True)
    after = from_needs_restarting(command)
    assert after["required"] is True and after["packages"] == ["kernel"]
    assert after["detail"].endswith(": Reboot is required to fully utilize these updates.")
    assert after["source"].startswith("dnf --installroot=")


def test_this_machine():
    """What host_status returns here."""
    result = reboot_required()
    assert set(result) == {"required", "source", "detail", "packages"}
    if os_family(open("/etc/os-release", encoding="utf-8").read()) == "debian":
        assert result["required"] is os.path.exists("/var/run/reboot-required")
