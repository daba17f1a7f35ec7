# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The state directory: the one owner of its files and their names.

For a VM named NAME it holds ``NAME.saving`` (a save in progress), ``NAME.json``
(its manifest: saved, not yet restored), ``NAME.state`` (its state file),
``NAME.stopped`` (shut down, to be started again), ``NAME.log`` (the output of
a QEMU we started) and, kept by ``keep_state``, ``NAME.json.restored`` and
``NAME.state.restored``; for the host ``.hypervisor-cpr.lock`` (the flock a
module holds while it works) and ``.hypervisor-cpr.run`` (the run lock).

State files hold guest memory: the directory is mode 0700, owned by the user
that runs the engine and not writable by others, and every file in it 0600.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, ManifestError, StateDirError
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest, StopRecord

LOCK_NAME = ".hypervisor-cpr.lock"
RUN_LOCK_NAME = ".hypervisor-cpr.run"
MANIFEST_SUFFIX = ".json"
STATE_SUFFIX = ".state"
SAVING_SUFFIX = ".saving"
STOPPED_SUFFIX = ".stopped"
LOG_SUFFIX = ".log"
# keep_state renames a restored VM's manifest and state file with this suffix: kept for inspection, not pending.
RESTORED_SUFFIX = ".restored"


class StateDir:
    """A state directory, checked when opened; every file name in it is made here."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def open(cls, path: str, create: bool) -> "StateDir":
        """Check the directory (create it, mode 0700, when create and missing).

        A missing directory that is not created holds nothing: listing it finds no file.
        """
        state_dir = cls(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return state_dir
            os.makedirs(path, mode=0o700)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise StateDirError(f"the state directory {path} is a symlink",
                                hint="give the real path; a symlink could redirect guest memory elsewhere")
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"the state directory {path} is not a directory")
        if st.st_uid != os.geteuid():
            raise StateDirError(f"the state directory {path} is owned by uid {st.st_uid}, not by uid {os.geteuid()}",
                                hint="state files hold guest memory: use a directory owned by the user that runs QEMU")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StateDirError(f"the state directory {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                                hint=f"chmod 0700 {path}")
        return state_dir

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.path)

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

    def _names(self, suffix: str) -> List[str]:
        """The VMs with a file of this suffix, sorted."""
        if not self.exists:
            return []
        return sorted(entry[:-len(suffix)] for entry in os.listdir(self.path)
                      if entry.endswith(suffix) and not entry.startswith("."))

    # ----------------------------------------------------------------------- saved VMs

    def has_manifest(self, name: str) -> bool:
        return os.path.exists(self.manifest_path(name))

    def has_saving(self, name: str) -> bool:
        return os.path.exists(self.saving_path(name))

    def manifests(self) -> List[Manifest]:
        """Every VM saved and not yet restored, sorted by name."""
        return [self.read_manifest(name) for name in self._names(MANIFEST_SUFFIX)]

    def read_manifest(self, name: str, in_progress: bool = False) -> Manifest:
        path = self.saving_path(name) if in_progress else self.manifest_path(name)
        data = self._read_json(path, name, "the VM's state file is kept; fix or restore the manifest, then run again")
        return Manifest.from_dict(data, path)

    def write_manifest(self, manifest: Manifest, in_progress: bool = False) -> None:
        """Write a manifest; with in_progress, the .saving record a later run finishes an interrupted save from."""
        path = self.saving_path(manifest.name) if in_progress else self.manifest_path(manifest.name)
        self.write_json(path, manifest.to_dict())

    def seal(self, manifest: Manifest) -> None:
        """fsync and checksum a complete state file into its manifest (not yet written)."""
        with open(manifest.state_file, "rb") as handle, concurrent.futures.ThreadPoolExecutor(1) as pool:
            # The checksum reads the pages from the cache while the fsync writes them back: the two take as
            # long as the longer one, not their sum.
            synced = pool.submit(os.fsync, handle.fileno())
            digest = hashlib.file_digest(handle, "sha256")
            manifest.state_bytes = os.fstat(handle.fileno()).st_size
            synced.result()
        os.chmod(manifest.state_file, 0o600)
        manifest.state_sha256 = digest.hexdigest()

    def finish_save(self, manifest: Manifest) -> None:
        """Turn the .saving record of a sealed save into the manifest."""
        self.write_manifest(manifest)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.saving_path(manifest.name))

    @staticmethod
    def verify_state(manifest: Manifest) -> None:
        """Refuse to restore from a state file that does not match its manifest."""
        path = manifest.state_file
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise ManifestError(f"state file {path} is missing ({exc.strerror})", manifest.name,
                                hint="the VM cannot be restored from it; its manifest is kept for inspection") from None
        if size != manifest.state_bytes:
            raise ManifestError(f"state file {path} has {size} bytes, its manifest says {manifest.state_bytes}",
                                manifest.name, hint="the file was truncated or replaced; both files are kept")
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
        if digest.hexdigest() != manifest.state_sha256:
            raise ManifestError(f"state file {path} does not match the SHA-256 in its manifest", manifest.name,
                                hint="the file is corrupted; both files are kept")

    def remove_saved(self, name: str) -> None:
        """Remove a VM's state file and manifest (after a restore, or a rolled-back save)."""
        self._unlink(self.state_path(name), self.manifest_path(name), self.saving_path(name))

    def keep_restored(self, name: str) -> None:
        """Keep a restored VM's manifest and state file for inspection, as ``<file>.restored``.

        Under their own names they would say the VM is saved and waits for a restore: a later save would skip
        the running VM (reboot none) or refuse it (kexec, reboot). Files kept by an earlier restore are replaced;
        the mode (0600) stays. The state file goes first: a manifest left alone after a crash is still finished
        by the next cpr_restore.
        """
        for path in (self.state_path(name), self.manifest_path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path + RESTORED_SUFFIX)
        self._unlink(self.saving_path(name))

    # ----------------------------------------------------------------------- shut-down VMs

    def stop_records(self) -> List[StopRecord]:
        """Every VM recorded as shut down, sorted by name."""
        return [self.read_stopped(name) for name in self._names(STOPPED_SUFFIX)]

    def read_stopped(self, name: str) -> StopRecord:
        path = self.stopped_path(name)
        hint = "start the VM by hand with the command line it had, then remove the record"
        return StopRecord.from_dict(self._read_json(path, name, hint, "the record {path} of a shut-down VM"), path)

    def write_stopped(self, record: StopRecord) -> None:
        self.write_json(self.stopped_path(record.name), record.to_dict())

    def remove_stopped(self, name: str) -> None:
        self._unlink(self.stopped_path(name))

    def pending(self, current_boot_id: str) -> Dict[str, List[Dict[str, Any]]]:
        """What vm_status reports of the directory: VMs saved and not restored, shut down and not started."""
        return {"saved": [m.summary(current_boot_id) for m in self.manifests()],
                "stopped": [r.summary() for r in self.stop_records()]}

    # ----------------------------------------------------------------------- QEMU's output

    def open_log(self, name: str) -> IO[bytes]:
        """The log of a QEMU we start, appended to (mode 0600)."""
        path = self.log_path(name)
        log = open(path, "ab")  # pylint: disable=consider-using-with
        os.chmod(path, 0o600)
        return log

    def log_tail(self, name: str) -> str:
        """The last lines a QEMU we started wrote, for an error message."""
        try:
            with open(self.log_path(name), encoding="utf-8", errors="replace") as handle:
                return " ".join(handle.read().strip().splitlines()[-3:]) or "no output"
        except OSError:
            return "no output"

    # ----------------------------------------------------------------------- locks

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's flock, so two modules never work on one host at once; released when we exit."""
        path = os.path.join(self.path, LOCK_NAME)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
                raise LockedError(f"another hypervisor.cpr run (pid {holder}) holds the lock {path}",
                                  hint="wait for it to finish; the lock is released when that process exits") from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(descriptor)

    def remove_run_lock(self) -> None:
        self._unlink(self.run_lock_path)

    def create_exclusive(self, path: str, data: Dict[str, Any]) -> bool:
        """Create a JSON file (0600) that must not exist yet; False when it does."""
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            _dump(data, out)
        self.fsync()
        return True

    # ----------------------------------------------------------------------- files

    def write_json(self, path: str, data: Dict[str, Any]) -> None:
        """Write JSON (mode 0600) so a reader sees the old or the new file, never half of one.

        Temp file in the same directory, fsync, rename over the target, fsync the directory.
        """
        handle, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                _dump(data, out)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.fsync()

    def read_json(self, path: str) -> Tuple[Optional[Any], Optional[str]]:
        """(data, None), (None, None) when the file does not exist, or (None, why) when it cannot be read."""
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle), None
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, str(exc)

    def _read_json(self, path: str, name: str, hint: str, what: str = "manifest {path}") -> Dict[str, Any]:
        data, error = self.read_json(path)
        if data is None and error is None:
            error = "it does not exist"
        if error is None and not isinstance(data, dict):
            error = "it is not a JSON object"
        if error is not None:
            raise ManifestError(f"{what.format(path=path)} cannot be read: {error}", name, hint=hint)
        return data  # type: ignore[return-value]

    def _unlink(self, *paths: str) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.fsync()

    def fsync(self) -> None:
        descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _dump(data: Dict[str, Any], out: IO[str]) -> None:
    json.dump(data, out, indent=2, sort_keys=True)
    out.write("\n")
    out.flush()
    os.fsync(out.fileno())
