# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""A state file written back to disk, and hashed if it is a plain stream, while QEMU writes it.

What is left after QEMU is done, the fsync and the checksum in StateDir.seal, then has little to do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._checksum import AppendedFileHasher

# How often a Flusher writes back what QEMU wrote since: often enough that the disk never idles.
FLUSH_SECONDS = 0.02
# How often it looks for chunks QEMU has written past: a chunk (16 MiB or more) takes QEMU about 10 ms.
HASH_SECONDS = 0.01


class Flusher:
    """Threads that fdatasync a state file while QEMU writes it, and hash the chunks QEMU has written past.

    The disk then writes while QEMU does, instead of all at the fsync after it. Chunks are hashed only with a
    hasher, for a file QEMU only appends to (the plain stream). Errors are left to the seal after it, which
    fsyncs the file and hashes what is left.
    """

    def __init__(self, descriptor: int, hasher: Optional[AppendedFileHasher] = None) -> None:
        self._descriptor = descriptor
        self._stopped = threading.Event()
        self.hasher = hasher
        self._threads: List[threading.Thread] = [threading.Thread(target=self._flush, name="state-file-flusher",
                                                                  daemon=True)]
        if hasher is not None:
            self._threads.append(threading.Thread(target=self._hash, args=(hasher,), name="state-file-hasher",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()

    def _flush(self) -> None:
        with contextlib.suppress(OSError):
            while not self._stopped.wait(FLUSH_SECONDS):
                os.fdatasync(self._descriptor)

    def _hash(self, hasher: AppendedFileHasher) -> None:
        with contextlib.suppress(OSError):
            while not self._stopped.wait(HASH_SECONDS):
                hasher.advance(self._stopped)

    def stop(self) -> None:
        """Stop (after the fdatasync and chunk in flight, if any) and close the file."""
        self._stopped.set()
        for thread in self._threads:
            thread.join()
        os.close(self._descriptor)
