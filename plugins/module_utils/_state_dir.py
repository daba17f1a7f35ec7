# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The state directory: the one owner of its files and their names.

For a VM named NAME it holds ``NAME.saving`` (a save in progress), ``NAME.json``
(its manifest: saved, not yet restored), ``NAME.state`` (its state file),
``NAME.restoring`` (the QEMU a restore started for it), ``NAME.transfer`` (a
cpr-transfer in progress: the old QEMU and the new one), ``NAME.stopped`` (shut
down, to be started again), ``NAME.log`` (the output of a QEMU we started) and,
kept by ``keep_state``, ``NAME.json.restored`` and ``NAME.state.restored``; for
the host ``.hypervisor-cpr.lock`` (the flock a module holds while it works) and
``.hypervisor-cpr.run`` (the run lock).

State files hold guest memory and manifests say what to run as root: the
directory is opened once by descriptor (_directory), QEMU gets state files as
descriptors, never as paths, and a manifest is used only when it names the VM
its file is named after and the state file in this directory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import os
import time
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils import _checksum as checksum
from ansible_collections.hypervisor.cpr.plugins.module_utils._directory import Directory
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, ManifestError
from ansible_collections.hypervisor.cpr.plugins.module_utils._flusher import Flusher
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import (
    FORMAT_VERSION,
    Manifest,
    StopRecord,
    check_name,
)

LOCK_NAME = ".hypervisor-cpr.lock"
LOCK_POLL_SECONDS = 0.1
RUN_LOCK_NAME = ".hypervisor-cpr.run"
MANIFEST_SUFFIX = ".json"
STATE_SUFFIX = ".state"
SAVING_SUFFIX = ".saving"
RESTORING_SUFFIX = ".restoring"
STOPPED_SUFFIX = ".stopped"
# A libvirt domain saved by libvirt_save (its image is libvirt's; _libvirt_state reads and writes the record).
LIBVIRT_SUFFIX = ".libvirt"
LOG_SUFFIX = ".log"
# A cpr-transfer in progress: the old QEMU and the new one it started (qemu_update), removed once it is over.
TRANSFER_SUFFIX = ".transfer"
# keep_state renames a restored VM's manifest and state file with this suffix: kept for inspection, not pending.
RESTORED_SUFFIX = ".restored"


class StateDir(Directory):
    """A state directory, opened by descriptor (StateDir.open); every file name in it is made here."""

    # ----------------------------------------------------------------------- names

    def _file(self, name: str, suffix: str) -> str:
        return os.path.join(self.path, name + suffix)

    def manifest_path(self, name: str) -> str:
        return self._file(name, MANIFEST_SUFFIX)

    def state_path(self, name: str) -> str:
        return self._file(name, STATE_SUFFIX)

    def saving_path(self, name: str) -> str:
        """The record of a save in progress: what the manifest will say, written before QEMU starts writing."""
        return self._file(name, SAVING_SUFFIX)

    def stopped_path(self, name: str) -> str:
        return self._file(name, STOPPED_SUFFIX)

    def log_path(self, name: str) -> str:
        return self._file(name, LOG_SUFFIX)

    @property
    def run_lock_path(self) -> str:
        return os.path.join(self.path, RUN_LOCK_NAME)

    # ----------------------------------------------------------------------- saved VMs

    def has_manifest(self, name: str) -> bool:
        return self.has(name + MANIFEST_SUFFIX)

    def has_saving(self, name: str) -> bool:
        return self.has(name + SAVING_SUFFIX)

    def manifests(self) -> List[Manifest]:
        """Every VM saved and not yet restored, sorted by name."""
        return [self.read_manifest(name) for name in self.entries(MANIFEST_SUFFIX)]

    def read_manifest(self, name: str, in_progress: bool = False) -> Manifest:
        suffix = SAVING_SUFFIX if in_progress else MANIFEST_SUFFIX
        data = self._read_record(name, suffix, "the VM's state file is kept; fix or restore the manifest, then run again")
        manifest = Manifest.from_dict(data, self._file(name, suffix))
        if manifest.name != name or manifest.state_file != self.state_path(name):
            raise ManifestError(
                f"manifest {self._file(name, suffix)} names VM {manifest.name!r} and state file {manifest.state_file}, "
                f"not VM {name!r} and {self.state_path(name)}", name,
                hint="a manifest is only used where it was written; it is kept for inspection")
        return manifest

    def write_manifest(self, manifest: Manifest, in_progress: bool = False) -> None:
        """Write a manifest; with in_progress, the .saving record a later run finishes an interrupted save from."""
        check_name(manifest.name)
        self.write_json(manifest.name + (SAVING_SUFFIX if in_progress else MANIFEST_SUFFIX), manifest.to_dict())

    def open_state(self, name: str, write: bool) -> int:
        """A VM's state file as a descriptor: for QEMU (add-fd) and for our checksum. A new one is created 0600."""
        flags = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if write else os.O_RDONLY
        try:
            return self.open_file(name + STATE_SUFFIX, flags)
        except OSError as exc:
            raise ManifestError(f"state file {self.state_path(name)} cannot be opened: {exc.strerror}", name,
                                hint="the VM cannot be saved or restored from it; its manifest is kept for inspection"
                                ) from None

    def flusher(self, name: str, appended_bytes: Optional[int] = None) -> "Flusher":
        """Write a VM's state file back to disk while QEMU writes it (stop() it once the migration ended).

        appended_bytes, for a file QEMU only appends to, is about how big it grows: its chunks are then hashed
        as QEMU writes past them, in chunks of the size a file of that many bytes gets.
        """
        descriptor = self.open_state(name, write=False)
        hasher = None if appended_bytes is None else checksum.AppendedFileHasher(
            descriptor, checksum.chunk_bytes(appended_bytes), checksum.PREFERRED)
        return Flusher(descriptor, hasher)

    def seal(self, manifest: Manifest, hashed: Optional[checksum.AppendedFileHasher] = None) -> None:
        """fsync a complete state file and put its size and chunk checksums into its manifest (not yet written).

        hashed holds the chunks hashed while QEMU wrote the file, if any: only the rest are hashed here.
        """
        descriptor = self.open_state(manifest.name, write=False)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                # The checksum threads read the pages from the cache while the fsync writes them back: the two
                # take as long as the longer one, not their sum.
                synced = pool.submit(os.fsync, descriptor)
                size = os.fstat(descriptor).st_size
                if hashed is None:
                    chunk, algorithm = checksum.chunk_bytes(size), checksum.PREFERRED
                    chunks = checksum.digests(descriptor, size, chunk, algorithm)
                else:
                    chunk, algorithm, chunks = hashed.chunk, hashed.algorithm, hashed.finish(descriptor, size)
                synced.result()
        finally:
            os.close(descriptor)
        manifest.state_bytes, manifest.state_chunk_bytes, manifest.state_chunks = size, chunk, chunks
        manifest.state_checksum = algorithm
        # A save finished for an earlier run's .saving record is written in this format too.
        manifest.state_sha256, manifest.format = "", FORMAT_VERSION

    def finish_save(self, manifest: Manifest) -> None:
        """Turn the .saving record of a sealed save into the manifest."""
        self.write_manifest(manifest)
        self.unlink(manifest.name + SAVING_SUFFIX)

    def check_state(self, manifest: Manifest) -> None:
        """The quick part of verify_state: the state file is there and has the size its manifest says."""
        os.close(self._open_sized(manifest))

    def verify_state(self, manifest: Manifest) -> None:
        """Refuse to restore from a state file that does not match its manifest (size and checksum)."""
        title = checksum.title(manifest.state_checksum, f"the manifest of {manifest.state_file}", manifest.name,
                               "restore the VM with the version of hypervisor.cpr that saved it")
        descriptor = self._open_sized(manifest)
        try:
            if manifest.state_chunk_bytes:
                chunks = checksum.digests(descriptor, manifest.state_bytes, manifest.state_chunk_bytes,
                                          manifest.state_checksum)
                damaged = checksum.damaged_chunk(manifest.state_chunks, chunks, manifest.state_chunk_bytes)
                matches, where = damaged is None, f" ({damaged})" if damaged else ""
            else:
                # Format 1: one SHA-256 over the whole file.
                with os.fdopen(os.dup(descriptor), "rb") as handle:
                    matches = hashlib.file_digest(handle, "sha256").hexdigest() == manifest.state_sha256
                where = ""
            size = os.fstat(descriptor).st_size
        finally:
            os.close(descriptor)
        if not matches or size != manifest.state_bytes:
            raise ManifestError(f"state file {manifest.state_file} does not match the {title} in its manifest{where}",
                                manifest.name, hint="the file is damaged; both files are kept")

    def _open_sized(self, manifest: Manifest) -> int:
        """The state file, open for reading, when it has the size its manifest says."""
        path = manifest.state_file
        try:
            descriptor = self.open_file(manifest.name + STATE_SUFFIX, os.O_RDONLY)
        except OSError as exc:
            raise ManifestError(f"state file {path} is missing ({exc.strerror})", manifest.name,
                                hint="the VM cannot be restored from it; its manifest is kept for inspection") from None
        size = os.fstat(descriptor).st_size
        if size != manifest.state_bytes:
            os.close(descriptor)
            raise ManifestError(f"state file {path} has {size} bytes, its manifest says {manifest.state_bytes}",
                                manifest.name, hint="the file was truncated or replaced; both files are kept")
        return descriptor

    def remove_saved(self, name: str) -> None:
        """Remove a VM's state file and manifest (after a restore, or a rolled-back save)."""
        self.unlink(*(name + suffix for suffix in (STATE_SUFFIX, MANIFEST_SUFFIX, SAVING_SUFFIX, RESTORING_SUFFIX)))

    def keep_restored(self, name: str) -> None:
        """Keep a restored VM's manifest and state file for inspection, as ``<file>.restored``.

        Under their own names they would say the VM is saved and waits for a restore: a later save would skip
        the running VM (reboot none) or refuse it (kexec, reboot). Files kept by an earlier restore are replaced;
        the mode (0600) stays. The state file goes first: a manifest left alone after a crash is still finished
        by the next cpr_restore.
        """
        for entry in (name + STATE_SUFFIX, name + MANIFEST_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                self.rename(entry, entry + RESTORED_SUFFIX)
        self.unlink(name + SAVING_SUFFIX, name + RESTORING_SUFFIX)

    # ----------------------------------------------------------------------- restores in progress

    def read_restoring(self, name: str) -> Optional[Dict[str, Any]]:
        """The QEMU a restore started for this VM (pid, start time, boot id), or None."""
        if not self.has(name + RESTORING_SUFFIX):
            return None
        return self._read_record(name, RESTORING_SUFFIX, "remove it once no restore of the VM runs", "record {path}")

    def write_restoring(self, name: str, process: Dict[str, Any]) -> None:
        self.write_json(name + RESTORING_SUFFIX, dict(process, name=name))

    # ----------------------------------------------------------------------- transfers in progress

    def transfer_path(self, name: str) -> str:
        return self._file(name, TRANSFER_SUFFIX)

    def read_transfer(self, name: str) -> Optional[Dict[str, Any]]:
        """The old and the new QEMU of a transfer an earlier call did not finish, or None."""
        if not self.has(name + TRANSFER_SUFFIX):
            return None
        return self._read_record(name, TRANSFER_SUFFIX, "remove it once no transfer of the VM runs", "record {path}")

    def write_transfer(self, name: str, record: Dict[str, Any]) -> None:
        check_name(name)
        self.write_json(name + TRANSFER_SUFFIX, dict(record, name=name))

    def remove_transfer(self, name: str) -> None:
        self.unlink(name + TRANSFER_SUFFIX)

    # ----------------------------------------------------------------------- shut-down VMs

    def stop_records(self) -> List[StopRecord]:
        """Every VM recorded as shut down, sorted by name."""
        return [self.read_stopped(name) for name in self.entries(STOPPED_SUFFIX)]

    def read_stopped(self, name: str) -> StopRecord:
        hint = "start the VM by hand with the command line it had, then remove the record"
        data = self._read_record(name, STOPPED_SUFFIX, hint, "the record {path} of a shut-down VM")
        record = StopRecord.from_dict(data, self.stopped_path(name))
        if record.name != name:
            raise ManifestError(f"the record {self.stopped_path(name)} names VM {record.name!r}, not {name!r}", name,
                                hint=hint)
        return record

    def write_stopped(self, record: StopRecord) -> None:
        check_name(record.name)
        self.write_json(record.name + STOPPED_SUFFIX, record.to_dict())

    def remove_stopped(self, name: str) -> None:
        self.unlink(name + STOPPED_SUFFIX)

    def pending(self, current_boot_id: str) -> Dict[str, List[Any]]:
        """What vm_status reports of the directory: VMs saved and not restored, shut down and not started, and the
        names of the libvirt domains libvirt_save saved."""
        return {"saved": [m.summary(current_boot_id) for m in self.manifests()],
                "stopped": [r.summary() for r in self.stop_records()],
                "libvirt_saved": self.entries(LIBVIRT_SUFFIX)}

    # ----------------------------------------------------------------------- QEMU's output

    def open_log(self, name: str) -> IO[bytes]:
        """The log of a QEMU we start, appended to (mode 0600)."""
        check_name(name)
        return os.fdopen(self.open_file(name + LOG_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")

    def log_tail(self, name: str) -> str:
        """The last lines a QEMU we started wrote, for an error message."""
        try:
            with os.fdopen(self.open_file(name + LOG_SUFFIX, os.O_RDONLY), encoding="utf-8", errors="replace") as handle:
                return " ".join(handle.read().strip().splitlines()[-3:]) or "no output"
        except OSError:
            return "no output"

    # ----------------------------------------------------------------------- locks

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the directory's flock, so two modules never work on one host at once; released when we exit.

        wait: how many seconds to wait for another holder to finish (the boot restore, for cpr_restore) before
        giving up.
        """
        descriptor = self.open_file(LOCK_NAME, os.O_RDWR | os.O_CREAT)
        try:
            if not _flock_within(descriptor, wait):
                holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
                raise LockedError(f"another hypervisor.cpr run (pid {holder}) holds the lock "
                                  f"{os.path.join(self.path, LOCK_NAME)}",
                                  hint="wait for it to finish; the lock is released when that process exits")
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(descriptor)

    def read_run_lock(self) -> Tuple[Optional[Any], Optional[str]]:
        """(data, None), (None, None) when there is no run lock, or (None, why) when it cannot be read."""
        return self.read_json(RUN_LOCK_NAME)

    def write_run_lock(self, data: Dict[str, Any]) -> None:
        self.write_json(RUN_LOCK_NAME, data)

    def remove_run_lock(self) -> None:
        self.unlink(RUN_LOCK_NAME)

    # ----------------------------------------------------------------------- records

    def _read_record(self, name: str, suffix: str, hint: str, what: str = "manifest {path}") -> Dict[str, Any]:
        path = self._file(name, suffix)
        data, error = self.read_json(name + suffix)
        if data is None and error is None:
            error = "it does not exist"
        if error is None and not isinstance(data, dict):
            error = "it is not a JSON object"
        if error is not None:
            raise ManifestError(f"{what.format(path=path)} cannot be read: {error}", name, hint=hint)
        return data  # type: ignore[return-value]


def _flock_within(descriptor: int, wait: float) -> bool:
    """Take the flock, waiting up to wait seconds for its holder; whether we got it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(LOCK_POLL_SECONDS)
