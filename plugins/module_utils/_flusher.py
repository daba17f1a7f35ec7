# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""A state file written back to disk while QEMU writes it, so that the fsync after the save has little left."""

from __future__ import annotations

import contextlib
import os
import threading

# How often a Flusher writes back what QEMU wrote since: often enough that the disk never idles.
FLUSH_SECONDS = 0.02


class Flusher:
    """A thread that fdatasyncs a state file while QEMU writes it.

    The disk then writes while QEMU does, instead of all at the fsync after it; nothing is read or hashed before
    QEMU is done with the file. Errors are left to the fsync that seals the file.
    """

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-file-flusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while not self._stopped.wait(FLUSH_SECONDS):
                os.fdatasync(self._descriptor)

    def stop(self) -> None:
        """Stop (after the fdatasync in flight, if any) and close the file."""
        self._stopped.set()
        self._thread.join()
        os.close(self._descriptor)
