# -*- coding: utf-8 -*-
"""The state file's checksum per chunk: sizes, spans, holes, and the first chunk that differs."""

import hashlib
import os
import subprocess
import sys

import pytest
import xxhash

from ansible_collections.hypervisor.cpr.plugins.module_utils import _checksum as checksum
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import MissingDependencyError

MIB = 1 << 20
# Each checksum a manifest may name, and the library function that computes it over bytes in memory.
REFERENCE = {
    checksum.SHA256: lambda data: hashlib.sha256(data).hexdigest(),
    checksum.XXH3_128: xxhash.xxh3_128_hexdigest,
}
ALGORITHMS = pytest.mark.parametrize("algorithm", sorted(REFERENCE))


@pytest.mark.parametrize("size, chunk", [
    (0, 16 * MIB),
    (1, 16 * MIB),
    (16 * MIB * 1024, 16 * MIB),
    (16 * MIB * 1024 + 1, 32 * MIB),
    (1 << 40, 1 << 30),
])
def test_chunk_size_keeps_the_manifest_at_most_max_chunks(size, chunk):
    assert checksum.chunk_bytes(size) == chunk
    assert len(checksum.spans(size, chunk)) <= checksum.MAX_CHUNKS


@pytest.mark.parametrize("size, chunk, spans", [
    (0, 4, []),
    (3, 4, [(0, 3)]),
    (4, 4, [(0, 4)]),
    (9, 4, [(0, 4), (4, 4), (8, 1)]),
])
def test_spans_cover_the_file_once(size, chunk, spans):
    assert checksum.spans(size, chunk) == spans


@pytest.mark.parametrize("expected, actual, index", [
    (["a", "b"], ["a", "b"], None),
    (["a", "b"], ["a", "x"], 1),
    (["x", "b"], ["a", "x"], 0),
    (["a", "b"], ["a"], 1),
    (["a"], ["a", "b"], 1),
    ([], [], None),
])
def test_first_mismatch(expected, actual, index):
    assert checksum.first_mismatch(expected, actual) == index


def test_new_saves_use_xxh3_where_xxhash_is_installed():
    assert checksum.HAS_XXHASH and checksum.PREFERRED == checksum.XXH3_128


@ALGORITHMS
@pytest.mark.parametrize("length", [1, checksum.READ_BYTES - 1, checksum.READ_BYTES, 3 * checksum.READ_BYTES + 5])
def test_zero_digest_is_that_of_as_many_zero_bytes(length, algorithm):
    assert checksum.zero_digest(length, algorithm) == REFERENCE[algorithm](bytes(length))


def _digests(path, chunk, algorithm=checksum.XXH3_128):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return checksum.digests(descriptor, os.fstat(descriptor).st_size, chunk, algorithm)
    finally:
        os.close(descriptor)


@ALGORITHMS
@pytest.mark.parametrize("chunk", [4096, 3 * 4096, MIB])
def test_a_sparse_file_and_its_filled_copy_have_the_digests_of_their_bytes(tmp_path, chunk, algorithm):
    # Data, a hole of several chunks, data, and a hole at the end (mapped-ram files look so).
    sparse, filled = tmp_path / "sparse", tmp_path / "filled"
    size = 4 * MIB + 123
    data = {0: os.urandom(5000), 2 * MIB: os.urandom(70000)}
    with open(sparse, "wb") as handle:
        for offset, block in data.items():
            handle.seek(offset)
            handle.write(block)
        handle.truncate(size)
    content = sparse.read_bytes()
    filled.write_bytes(content)
    expected = [REFERENCE[algorithm](content[offset:offset + length]) for offset, length in checksum.spans(size, chunk)]
    assert _digests(sparse, chunk, algorithm) == expected
    assert _digests(filled, chunk, algorithm) == expected


@ALGORITHMS
def test_a_changed_byte_changes_the_digest_of_its_chunk_only(tmp_path, algorithm):
    path = tmp_path / "state"
    path.write_bytes(os.urandom(10 * 4096))
    before = _digests(path, 4096, algorithm)
    with open(path, "r+b") as handle:
        handle.seek(7 * 4096 + 11)
        byte = handle.read(1)
        handle.seek(7 * 4096 + 11)
        handle.write(bytes([byte[0] ^ 1]))
    assert checksum.first_mismatch(before, _digests(path, 4096, algorithm)) == 7


def test_a_file_shorter_than_its_size_is_an_error(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"x" * 100)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="the file ended at byte 100"):
            checksum.digests(descriptor, 200, 4096, checksum.XXH3_128)
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("writes", [
    [],                                   # QEMU wrote nothing before it was done
    [10],                                 # less than a chunk
    [4096, 4096],                         # exactly two chunks, each seen complete
    [5000, 3 * 4096, 1],                  # chunks completed mid-write, a short last chunk
    [4 * 4096 + 7],                       # several chunks in one write, seen at once
])
def test_chunks_hashed_as_a_file_grows_are_those_of_the_complete_file(tmp_path, writes):
    path = tmp_path / "state"
    # QEMU's descriptor and ours, as in a save: a hole check moves the offset of our own only.
    writer = os.open(path, os.O_WRONLY | os.O_CREAT)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        hasher = checksum.AppendedFileHasher(descriptor, 4096, checksum.XXH3_128)
        for length in writes:
            os.write(writer, os.urandom(length))
            hasher.advance()
        os.write(writer, os.urandom(100))  # written after the last look, before QEMU is done
        assert hasher.finish(descriptor, os.fstat(descriptor).st_size) == _digests(path, 4096)
    finally:
        os.close(descriptor)
        os.close(writer)


def test_a_file_hashed_as_it_grew_is_refused_when_bytes_changed_after(tmp_path):
    # What the hasher relies on: nothing writes below the end. A file changed there afterwards (mapped-ram would)
    # no longer matches, so such a file is never hashed this way.
    path = tmp_path / "state"
    path.write_bytes(os.urandom(3 * 4096))
    descriptor = os.open(path, os.O_RDONLY)
    try:
        hasher = checksum.AppendedFileHasher(descriptor, 4096, checksum.XXH3_128)
        hasher.advance()
        with open(path, "r+b") as handle:
            handle.seek(4096 + 1)
            handle.write(b"\xff" * 8)
        assert checksum.first_mismatch(hasher.finish(descriptor, 3 * 4096), _digests(path, 4096)) == 1
    finally:
        os.close(descriptor)


def test_without_xxhash_new_saves_use_sha256(tmp_path):
    # A fresh interpreter in which importing xxhash fails, as on a host that lacks it.
    program = ("import sys; sys.modules['xxhash'] = None\n"
               "from ansible_collections.hypervisor.cpr.plugins.module_utils import _checksum as c\n"
               "print(c.HAS_XXHASH, c.PREFERRED)")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.stdout.split() == ["False", "sha256"]


def test_a_file_with_xxh3_digests_without_xxhash_names_the_library_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(checksum, "HAS_XXHASH", False)
    path = tmp_path / "state"
    path.write_bytes(b"x" * 100)
    with pytest.raises(MissingDependencyError, match="checksum is XXH3-128, and the Python library xxhash is not installed"):
        _digests(path, 4096, checksum.XXH3_128)
    assert len(_digests(path, 4096, checksum.SHA256)) == 1
