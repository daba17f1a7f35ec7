"""What we would run as root: binaries only root could have put there, and the credentials a process ran with."""

import os
import subprocess

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import Credentials, binary_problem, credentials_of

NOBODY = 65534


@pytest.fixture
def tree(tmp_path):
    """tmp_path/dir/qemu-system-x86_64: a root-owned binary in a root-owned directory, 0755 both."""
    directory = tmp_path / "dir"
    directory.mkdir()
    binary = directory / "qemu-system-x86_64"
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    os.chmod(directory, 0o755)
    return directory, binary


@pytest.mark.parametrize("change, problem", [
    (lambda d, b: None, None),
    (lambda d, b: os.chmod(b, 0o775), "mode 0775"),
    (lambda d, b: os.chmod(b, 0o757), "mode 0757"),
    (lambda d, b: os.chown(b, NOBODY, -1), f"owned by uid {NOBODY}"),
    # A directory above it that another user may write: they could have replaced the binary.
    (lambda d, b: os.chmod(d, 0o777), "dir is owned by uid 0 with mode 0777"),
    (lambda d, b: os.chown(d, NOBODY, -1), f"dir is owned by uid {NOBODY}"),
    # A sticky directory (like /tmp) lets nobody replace a root-owned file in it.
    (lambda d, b: os.chmod(d, 0o1777), None),
    (lambda d, b: (os.unlink(b), os.symlink("/usr/bin/true", b)), "is a symlink"),
    (lambda d, b: os.unlink(b), "cannot be checked"),
])
def test_binary_problem(tree, change, problem):
    directory, binary = tree
    change(directory, binary)
    found = binary_problem(str(binary))
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize("exe", [None, "", "relative/qemu"])
def test_a_binary_we_cannot_tell_is_not_run(exe):
    assert "cannot be read from /proc" in binary_problem(exe)


def test_credentials_of_a_process_as_nobody():
    with subprocess.Popen(["sleep", "30"], user=NOBODY, group=NOBODY, extra_groups=[NOBODY, 100]) as sleeper:
        try:
            assert credentials_of(sleeper.pid) == Credentials(NOBODY, NOBODY, [100, NOBODY])
        finally:
            sleeper.kill()
    assert credentials_of(os.getpid()).uid == os.geteuid()
    assert credentials_of(999999999) is None
    assert Credentials.from_dict(Credentials(1, 2, [3]).to_dict()) == Credentials(1, 2, [3])
