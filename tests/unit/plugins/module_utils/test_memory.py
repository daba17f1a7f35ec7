"""Where RAM lives: real files, tmpfs, directories and block devices on this host."""

import os
import shutil
import subprocess

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import QemuBackend, classify, mount_of, read_mountinfo


def test_file_on_disk_is_persistent_and_mappable(tmp_path):
    path = tmp_path / "vm.ram"
    path.write_bytes(b"\0" * 4096)
    backend = classify(QemuBackend("ram0", "memory-backend-file", 4096, True, str(path), False), None)
    assert (backend.kind, backend.mappable, backend.persistent) == ("file", True, True)
    assert backend.filesystem not in ("tmpfs", None)


def test_file_on_dev_shm_is_volatile():
    path = f"/dev/shm/hypervisor-cpr-test-{os.getpid()}"
    with open(path, "wb") as handle:
        handle.write(b"\0" * 4096)
    try:
        backend = classify(QemuBackend("ram0", "memory-backend-file", 4096, True, path, False), None)
    finally:
        os.unlink(path)
    assert (backend.filesystem, backend.mappable, backend.persistent) == ("tmpfs", True, False)
    assert "lives in RAM" in backend.note


def test_directory_mem_path_is_not_mappable(tmp_path):
    backend = classify(QemuBackend("ram0", "memory-backend-file", 4096, True, str(tmp_path), False), None)
    assert (backend.kind, backend.mappable) == ("directory", False)


def test_missing_mem_path(tmp_path):
    backend = classify(QemuBackend("ram0", "memory-backend-file", 4096, True, str(tmp_path / "gone"), False), None)
    assert (backend.kind, backend.mappable, backend.persistent) == ("missing", False, False)


def test_discard_data_is_not_mappable(tmp_path):
    path = tmp_path / "vm.ram"
    path.write_bytes(b"\0")
    backend = classify(QemuBackend("ram0", "memory-backend-file", 1, True, str(path), True), None)
    assert not backend.mappable
    assert "discard-data" in backend.note


@pytest.mark.parametrize("qom_type", ["memory-backend-ram", "memory-backend-memfd"])
def test_anonymous_memory_is_volatile(qom_type):
    backend = classify(QemuBackend("pc.ram", qom_type, 1 << 20, qom_type.endswith("memfd"), None, False), None)
    assert (backend.kind, backend.mappable, backend.persistent) == ("anonymous", False, False)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and losetup")
def test_loop_block_device_over_disk_file_is_persistent(tmp_path):
    image = tmp_path / "backing.img"
    image.write_bytes(b"\0" * (1 << 20))
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        backend = classify(QemuBackend("ram0", "memory-backend-file", 1 << 20, True, device, False), None)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert (backend.kind, backend.mappable, backend.persistent) == ("block-device", True, True)
    assert str(image) in backend.note


def test_mount_of_root():
    mounts = read_mountinfo(None)
    mount = mount_of("/", os.stat("/").st_dev, mounts)
    assert mount is not None and mount.mount_point == "/"
