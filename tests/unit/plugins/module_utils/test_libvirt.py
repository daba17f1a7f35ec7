"""The libvirt path's pure logic: a managed save image's header, libvirt-guests' settings, a domain's verdict."""

import struct

import pytest
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import (
    Domain,
    read_image,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_host import (
    read_assignments,
)

# libvirt's virQEMUSaveHeader: magic, version, data_len, was_running, format (then unused words).
HEADER = struct.Struct("<16sIIII")


@pytest.mark.parametrize("content, complete, image_format, was_running", [
    (HEADER.pack(b"LibvirtQemudSave", 2, 4096, 1, 6) + bytes(64), True, "sparse", True),
    (HEADER.pack(b"LibvirtQemudSave", 2, 4096, 0, 0) + bytes(64), True, "raw", False),
    (HEADER.pack(b"LibvirtQemudSave", 2, 4096, 1, 5), True, "zstd", True),
    # libvirt writes the partial magic first and the complete one only once QEMU finished.
    (HEADER.pack(b"LibvirtQemudPart", 2, 4096, 1, 6), False, None, True),
    (b"LibvirtQemudSave", False, None, None),
    (bytes(4096), False, None, None),
    (b"", False, None, None),
], ids=["sparse-running", "raw-paused", "zstd", "partial", "truncated-header", "zeros", "empty"])
def test_image_header(tmp_path, content, complete, image_format, was_running):
    path = tmp_path / "web1.save"
    path.write_bytes(content)
    image = read_image(str(path))
    assert (image.exists, image.complete, image.image_format, image.was_running) == (
        True, complete, image_format, was_running)
    assert image.size == len(content)


def test_missing_image_is_not_complete(tmp_path):
    image = read_image(str(tmp_path / "gone.save"))
    assert not image.exists and not image.complete and image.size == 0


@pytest.mark.parametrize("text, expected", [
    ("ON_BOOT=start\nON_SHUTDOWN=suspend\n", {"ON_BOOT": "start", "ON_SHUTDOWN": "suspend"}),
    ('#ON_BOOT=start\nON_SHUTDOWN="shutdown"  # the default\n', {"ON_SHUTDOWN": "shutdown"}),
    ('save_image_format = "sparse"\n', {"save_image_format": "sparse"}),
    ("  PARALLEL_SHUTDOWN=4\nnot an assignment\n", {"PARALLEL_SHUTDOWN": "4"}),
    ("", {}),
], ids=["shell", "commented-and-quoted", "libvirt-conf", "indented", "empty"])
def test_settings_files(tmp_path, text, expected):
    path = tmp_path / "libvirt-guests"
    path.write_text(text)
    assert read_assignments(str(path)) == expected


def test_unreadable_settings_file_reads_as_nothing(tmp_path):
    assert read_assignments(str(tmp_path / "none")) == {}


def _domain(**changes):
    fields = dict(name="web1", uuid="u", state="running", reason=1, persistent=True, autostart=False,
                  managed_save=False, memory_bytes=1 << 30, agent_channel=True)
    return Domain(**dict(fields, **changes))


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"state": "paused"}, None),
    ({"state": "shutoff"}, "it is shutoff: only a running or paused domain is saved"),
    ({"state": "pmsuspended"}, "it is pmsuspended"),
    ({"persistent": False}, "it is transient"),
    ({"managed_save": True, "image": {"path": "/var/lib/libvirt/qemu/save/web1.save"}},
     "a managed save image of it exists (/var/lib/libvirt/qemu/save/web1.save)"),
], ids=["running", "paused", "shutoff", "pmsuspended", "transient", "stale-image"])
def test_domain_verdict(changes, problem):
    verdict = _domain(**changes).problem
    if problem is None:
        assert verdict is None
    else:
        assert verdict is not None and problem in verdict
