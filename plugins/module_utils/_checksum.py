# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""A state file's checksum: one digest per fixed-size chunk, computed by several threads at once.

New saves use XXH3-128 (the xxhash library) where it is installed, SHA-256 otherwise; a manifest names the one
its digests are (Manifest.state_checksum). The checksum is there to refuse a damaged file, not a forged one (the
state directory is root's alone, _directory): XXH3-128 tells any damage apart as surely and hashes a cached file
at about 13 GB/s on 2 threads here, against 1.6 GB/s for SHA-256 with the CPU's SHA extensions, so on a host whose
cores QEMU also needs the checksum no longer costs a pass of its own.

Per chunk, a restore hashes the file on every core while QEMU loads it, and a save while it is flushed to disk; a
plain-stream save, whose file QEMU only appends to, hashes each chunk as soon as QEMU has written past it
(AppendedFileHasher), so that only the last chunks are left once QEMU is done. A chunk that is a hole in the file
(mapped-ram state files are sparse) is not read: its digest is that of as many zero bytes, which it holds, so a
copy of the file that filled the holes still matches.
"""

from __future__ import annotations

import concurrent.futures
import errno
import functools
import hashlib
import os
import threading
from typing import Any, Callable, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import ManifestError, MissingDependencyError

try:
    import xxhash

    HAS_XXHASH = True
except ImportError:
    HAS_XXHASH = False

# The smallest chunk, doubled for big files so that a manifest lists at most MAX_CHUNKS digests.
MIN_CHUNK_BYTES = 16 << 20
MAX_CHUNKS = 1024
READ_BYTES = 1 << 20
# hashlib lets go of the GIL while it hashes, and preadv while it reads: threads use every core.
THREADS = max(2, min(8, os.cpu_count() or 1))

Span = Tuple[int, int]

SHA256 = "sha256"
XXH3_128 = "xxh3-128"
# What a manifest's state_checksum may name, as an operator reads it.
TITLES = {SHA256: "SHA-256", XXH3_128: "XXH3-128"}
# The one a new save uses.
PREFERRED = XXH3_128 if HAS_XXHASH else SHA256


def _hasher(algorithm: str) -> Callable[[], Any]:
    if algorithm == SHA256:
        return hashlib.sha256
    if algorithm == XXH3_128:
        if not HAS_XXHASH:
            raise MissingDependencyError(
                "this state file's checksum is XXH3-128, and the Python library xxhash is not installed for the "
                "Python that runs this module", hint="install it on the hypervisor (pip install xxhash, or the "
                "distribution's python3-xxhash), or let the kernel_update role do it with kernel_update_install_deps=true")
        return xxhash.xxh3_128
    raise ValueError(f"unknown checksum {algorithm!r}")


def chunk_bytes(size: int) -> int:
    """The chunk size for a file of this many bytes."""
    chunk = MIN_CHUNK_BYTES
    while size > chunk * MAX_CHUNKS:
        chunk *= 2
    return chunk


def spans(size: int, chunk: int) -> List[Span]:
    """(offset, length) of each chunk of a file of this size; the last one may be shorter."""
    return [(offset, min(chunk, size - offset)) for offset in range(0, size, chunk)]


def digests(descriptor: int, size: int, chunk: int, algorithm: str, first: int = 0) -> List[str]:
    """The digest (hex) of each chunk of the first size bytes of an open file, from chunk first on, by several threads."""
    parts = spans(size, chunk)[first:]
    hash_one = functools.partial(_digest, descriptor, algorithm)
    if len(parts) <= 1:
        return [hash_one(part) for part in parts]
    with concurrent.futures.ThreadPoolExecutor(min(THREADS, len(parts))) as pool:
        return list(pool.map(hash_one, parts))


class AppendedFileHasher:
    """Hashes the chunks of a file that is only ever appended to, each once the file has grown past its end.

    A thread calls advance() while the file grows; finish() hashes what is left once it is complete. A chunk
    below the file's size is final only because nothing writes before the end of the file: that holds for
    QEMU's plain migration stream, not for mapped-ram, which writes RAM pages at fixed offsets. The descriptor
    is our own open file, not the writer's: the check for holes moves its offset.
    """

    def __init__(self, descriptor: int, chunk: int, algorithm: str) -> None:
        self.chunk = chunk
        self.algorithm = algorithm
        self._descriptor = descriptor
        self._digests: List[str] = []
        self._lock = threading.Lock()

    def advance(self, stop: Optional[threading.Event] = None) -> None:
        """Hash every chunk the file has grown past since the last call, or until stop is set.

        Once the writer is done, finish() hashes what is left on several threads: a backlog is not worked off
        here on one.
        """
        with self._lock:
            size = os.fstat(self._descriptor).st_size
            while (len(self._digests) + 1) * self.chunk <= size and not (stop and stop.is_set()):
                self._digests.append(_digest(self._descriptor, self.algorithm,
                                             (len(self._digests) * self.chunk, self.chunk)))

    def finish(self, descriptor: int, size: int) -> List[str]:
        """The digests of all chunks of the complete file of size bytes: those hashed already, then the rest."""
        with self._lock:
            return self._digests + digests(descriptor, size, self.chunk, self.algorithm, first=len(self._digests))


def title(algorithm: str, owner: str, vm: str, hint: str) -> str:
    """The recorded checksum's name as an operator reads it; owner (a manifest, a record) naming one unknown here is
    refused."""
    if algorithm not in TITLES:
        raise ManifestError(f"{owner} names an unknown checksum {algorithm!r}", vm, hint=hint)
    return TITLES[algorithm]


def damaged_chunk(expected: List[str], actual: List[str], chunk: int) -> Optional[str]:
    """Where a file first differs from the digests recorded for it ("chunk 3 of 4, from byte N"), None if nowhere."""
    bad = first_mismatch(expected, actual)
    return None if bad is None else f"chunk {bad + 1} of {len(expected)}, from byte {bad * chunk}"


def first_mismatch(expected: List[str], actual: List[str]) -> Optional[int]:
    """The index of the first chunk whose digest differs, or None when the lists are equal."""
    if expected == actual:
        return None
    return next((index for index, (want, got) in enumerate(zip(expected, actual)) if want != got),
                min(len(expected), len(actual)))


@functools.lru_cache(maxsize=4)
def zero_digest(length: int, algorithm: str) -> str:
    """The digest of length zero bytes: that of a chunk that is a hole."""
    digest = _hasher(algorithm)()
    zeros = bytes(min(READ_BYTES, length))
    for offset in range(0, length, READ_BYTES):
        digest.update(zeros[:min(READ_BYTES, length - offset)])
    return digest.hexdigest()


def _is_hole(descriptor: int, offset: int, length: int) -> bool:
    try:
        return os.lseek(descriptor, offset, os.SEEK_DATA) >= offset + length
    except OSError as exc:
        # ENXIO: no data from offset to the end of the file (a file system without holes reports none).
        if exc.errno == errno.ENXIO:
            return True
        raise


def _digest(descriptor: int, algorithm: str, span: Span) -> str:
    offset, length = span
    if _is_hole(descriptor, offset, length):
        return zero_digest(length, algorithm)
    digest = _hasher(algorithm)()
    view = memoryview(bytearray(min(READ_BYTES, length)))
    done = 0
    while done < length:
        count = os.preadv(descriptor, [view[:min(READ_BYTES, length - done)]], offset + done)
        if count == 0:
            raise OSError(f"the file ended at byte {offset + done} while its checksum was computed")
        digest.update(view[:count])
        done += count
    return digest.hexdigest()
