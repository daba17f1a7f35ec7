"""The libvirt path's pure logic: a managed save image's header, libvirt-guests' settings, a domain's verdict."""

import hashlib
import os
import struct

import pytest
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import ManifestError
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import (
    Domain,
    Record,
    read_image,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_state import check_image, seal
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_host import (
    read_assignments,
)

# libvirt's virQEMUSaveHeader: magic, version, data_len, was_running, format (then unused words).
HEADER = struct.Struct("<16sIIII")
# The smallest checksum chunk (_checksum): the images below span four.
CHUNK = 16 << 20


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


def _saved_image(tmp_path):
    """A complete sparse image: header, data, a hole of several chunks, data (as libvirt's sparse format leaves)."""
    path = tmp_path / "web.save"
    with open(path, "wb") as handle:
        handle.write(HEADER.pack(b"LibvirtQemudSave", 2, 4096, 1, 6) + os.urandom(5000))
        handle.seek(3 * CHUNK)
        handle.write(os.urandom(70000))
    return path


@pytest.mark.parametrize("recorded", ["chunks", "whole-file sha256"])
@pytest.mark.parametrize("damage, refused", [
    (None, None),
    (2 * CHUNK + 10, r"does not match the XXH3-128 its save recorded \(chunk 3 of 4, from byte 33554432\)"),
    (3 * CHUNK + 1, r"does not match the XXH3-128 its save recorded \(chunk 4 of 4, from byte 50331648\)"),
])
def test_an_image_is_checked_against_the_checksum_its_save_recorded(tmp_path, recorded, damage, refused):
    path = _saved_image(tmp_path)
    record = Record(name="web", uuid="u", uri="qemu:///system", runstate_before="running", autostart_before=False,
                    agent_before=False, boot_id="b", paused_at=1.0, image=str(path))
    seal(record, str(path))
    assert (record.stage, record.image_checksum, len(record.image_chunks)) == ("saved", "xxh3-128", 4)
    assert record.image_chunk_bytes == CHUNK and "image_chunks" not in record.report()
    if recorded == "whole-file sha256":
        # Saved by an earlier version: one SHA-256 over the whole image.
        record.image_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        record.image_checksum, record.image_chunk_bytes, record.image_chunks = None, 0, []
    if damage is not None:
        with open(path, "r+b") as handle:
            handle.seek(damage)
            handle.write(b"\xff")
    if refused is None:
        check_image(record, str(path))
        return
    if recorded == "whole-file sha256":
        refused = "does not match the SHA-256 its save recorded"
    with pytest.raises(ManifestError, match=refused):
        check_image(record, str(path))


def test_an_image_whose_record_names_an_unknown_checksum_is_refused(tmp_path):
    path = _saved_image(tmp_path)
    record = Record(name="web", uuid="u", uri="qemu:///system", runstate_before="running", autostart_before=False,
                    agent_before=False, boot_id="b", paused_at=1.0, image=str(path), image_checksum="md5",
                    image_bytes=path.stat().st_size)
    with pytest.raises(ManifestError, match="names an unknown checksum 'md5'"):
        check_image(record, str(path))
