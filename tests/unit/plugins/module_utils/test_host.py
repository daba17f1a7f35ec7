"""The target kernel of an update, from what is installed in a boot directory."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._host import installed_kernels, target_kernel, version_key


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
