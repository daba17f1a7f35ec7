# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-VM record that survives the reboot, and the state directory that holds it.

``<state_dir>/<vm>.json`` is written (atomically) before QEMU is told to quit
and removed only once the new QEMU has the VM back in its old runstate. A
run that dies anywhere can therefore be finished from the manifests.

``<state_dir>/<vm>.stopped`` records how to start a VM again whose guest
was shut down (vm_power) or whose QEMU died in the middle of a save.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Dict, Iterator, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils.errors import CprError

FORMAT_VERSION = 1
LOCK_NAME = ".hypervisor-cpr.lock"
# keep_state renames a restored VM's manifest and state file with this suffix: kept for inspection, not pending.
RESTORED_SUFFIX = ".restored"
# A VM name becomes a file name: keep it to characters that are safe there.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")


class StateDirError(CprError):
    """The state directory is unsafe or unusable."""


class ManifestError(CprError):
    """A manifest or its state file is missing, unreadable or inconsistent."""


class LockedError(CprError):
    """Another hypervisor.cpr run holds the host's lock."""


@dataclass
class Manifest:
    """Everything needed to bring one VM back after its QEMU is gone."""

    name: str
    argv: List[str]
    cwd: str
    qmp_socket: str
    qga_socket: Optional[str]
    machine_type: str
    qemu_version: str
    runstate_before: str
    suspended_by_us: bool
    agent_answered: bool
    ram_in_place: bool
    memory_backends: List[Dict[str, Any]]
    capabilities: Dict[str, bool]
    parameters: Dict[str, Any]
    state_file: str
    reboot: str
    paused_at: float
    boot_id: str
    kernel: str
    state_bytes: int = 0
    state_sha256: str = ""
    saved_at: float = 0.0
    # Seconds from QEMU's migrate command to the state file synced and checksummed.
    save_seconds: float = 0.0
    format: int = FORMAT_VERSION
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: str) -> "Manifest":
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls)
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if data.get("format") != FORMAT_VERSION or missing:
            raise ManifestError(
                f"manifest {path} has format {data.get('format')!r}"
                + (f" and lacks {', '.join(missing)}" if missing else ""),
                data.get("name"),
                hint=f"it was not written by this version of hypervisor.cpr (format {FORMAT_VERSION}); "
                "restore the VM with the version that saved it",
            )
        return cls(**{k: v for k, v in data.items() if k in known})


def check_name(name: str) -> None:
    """A VM name must be usable as a file name in the state directory."""
    if not _SAFE_NAME.match(name):
        raise CprError(
            f"the VM name {name!r} cannot name a state file", name,
            hint="use letters, digits, dot, dash, underscore or plus, starting with a letter or digit",
        )


def manifest_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, f"{name}.json")


def state_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, f"{name}.state")


def ensure_state_dir(state_dir: str, create: bool = True) -> None:
    """Create the state directory (0700) or check that an existing one is safe.

    State files hold guest memory: refuse a symlink, a directory owned by
    another user, or one others can write to.
    """
    try:
        st = os.lstat(state_dir)
    except FileNotFoundError:
        if not create:
            raise StateDirError(f"the state directory {state_dir} does not exist") from None
        os.makedirs(state_dir, mode=0o700)
        st = os.lstat(state_dir)
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"the state directory {state_dir} is a symlink",
                            hint="give the real path; a symlink could redirect guest memory elsewhere")
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"the state directory {state_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"the state directory {state_dir} is owned by uid {st.st_uid}, not by uid {os.geteuid()}",
                            hint="state files hold guest memory: use a directory owned by the user that runs QEMU")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(f"the state directory {state_dir} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                            hint=f"chmod 0700 {state_dir}")


def saving_path(state_dir: str, name: str) -> str:
    """The record of a save in progress: what the manifest will say, written before QEMU starts writing."""
    return os.path.join(state_dir, f"{name}.saving")


def write_manifest(state_dir: str, manifest: Manifest, in_progress: bool = False) -> str:
    """Write a manifest atomically.

    With in_progress, it goes to the .saving record instead, which a later run
    uses to finish a save that QEMU completed but this run did not see through.
    """
    path = (saving_path if in_progress else manifest_path)(state_dir, manifest.name)
    write_json_atomically(path, manifest.to_dict())
    return path


def write_json_atomically(path: str, data: Dict[str, Any]) -> None:
    """Write JSON (mode 0600) so a reader sees the old or the new file, never half of one.

    Temp file in the same directory, fsync, rename over the target, fsync the directory.
    """
    directory = os.path.dirname(path)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_manifest(path: str) -> Manifest:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        name = os.path.basename(path)[:-len(".json")]
        raise ManifestError(f"manifest {path} cannot be read: {exc}", name,
                            hint="the VM's state file is kept; fix or restore the manifest, then run again") from None
    return Manifest.from_dict(data, path)


def list_manifests(state_dir: str) -> List[Manifest]:
    """Every manifest in the state directory, sorted by VM name."""
    if not os.path.isdir(state_dir):
        return []
    return [read_manifest(os.path.join(state_dir, entry))
            for entry in sorted(os.listdir(state_dir))
            if entry.endswith(".json") and not entry.startswith(".")]


def sync_and_digest(path: str) -> Dict[str, Any]:
    """fsync a finished state file; return its size and SHA-256.

    The checksum reads the pages from the cache while the fsync writes them
    back: the two take as long as the longer one, not their sum.
    """
    with open(path, "rb") as handle, concurrent.futures.ThreadPoolExecutor(1) as pool:
        synced = pool.submit(os.fsync, handle.fileno())
        digest = hashlib.file_digest(handle, "sha256")
        size = os.fstat(handle.fileno()).st_size
        synced.result()
    os.chmod(path, 0o600)
    return {"state_bytes": size, "state_sha256": digest.hexdigest()}


def verify_state_file(manifest: Manifest) -> None:
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


def remove_saved(state_dir: str, name: str) -> None:
    """Remove a VM's state file and manifest (after a restore, or a rolled-back save)."""
    for path in (state_path(state_dir, name), manifest_path(state_dir, name), saving_path(state_dir, name)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    fsync_dir(state_dir)


def keep_restored(state_dir: str, name: str) -> None:
    """Keep a restored VM's manifest and state file for inspection, as ``<file>.restored``.

    Under their own names they would say the VM is saved and waits for a restore: a later save would skip
    the running VM (reboot none) or refuse it (kexec, reboot). Files kept by an earlier restore are replaced;
    the mode (0600) stays. The state file goes first: a manifest left alone after a crash is still finished
    by the next cpr_restore.
    """
    for path in (state_path(state_dir, name), manifest_path(state_dir, name)):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path + RESTORED_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(saving_path(state_dir, name))
    fsync_dir(state_dir)


# --------------------------------------------------------------------------- shut-down VMs

STOPPED_SUFFIX = ".stopped"


@dataclass
class StopRecord:
    """What starting a shut-down VM again needs."""

    name: str
    argv: List[str]
    cwd: str
    qmp_socket: str
    qga_socket: Optional[str]
    agent_answered: bool
    how: str
    stopped_at: float


def stopped_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, f"{name}{STOPPED_SUFFIX}")


def read_stopped(path: str) -> StopRecord:
    try:
        with open(path, encoding="utf-8") as handle:
            return StopRecord(**json.load(handle))
    except (OSError, ValueError, TypeError) as exc:
        raise ManifestError(f"the record {path} of a shut-down VM cannot be read: {exc}",
                            os.path.basename(path)[:-len(STOPPED_SUFFIX)],
                            hint="start the VM by hand with the command line it had, then remove the record") from None


def list_stopped(state_dir: str) -> List[StopRecord]:
    """Every VM recorded as shut down in the state directory, sorted by name."""
    if not os.path.isdir(state_dir):
        return []
    return [read_stopped(os.path.join(state_dir, entry))
            for entry in sorted(os.listdir(state_dir)) if entry.endswith(STOPPED_SUFFIX)]


def pending(state_dir: str, current_boot_id: str) -> Dict[str, List[Dict[str, Any]]]:
    """The VMs a state directory holds: saved and not yet restored, and shut down and not yet started."""
    saved = [{
        "name": m.name, "runstate_before": m.runstate_before, "suspended_by_us": m.suspended_by_us,
        "agent_answered": m.agent_answered, "ram_in_place": m.ram_in_place, "state_bytes": m.state_bytes,
        "paused_at": m.paused_at, "saved_at": m.saved_at, "save_seconds": m.save_seconds, "reboot": m.reboot,
        "kernel": m.kernel, "boot_id": m.boot_id, "saved_this_boot": m.boot_id == current_boot_id,
    } for m in list_manifests(state_dir)]
    stopped = [{"name": r.name, "how": r.how, "stopped_at": r.stopped_at, "agent_answered": r.agent_answered}
               for r in list_stopped(state_dir)]
    return {"saved": saved, "stopped": stopped}


@contextlib.contextmanager
def host_lock(state_dir: str) -> Iterator[None]:
    """Hold the state directory's lock, so two runs never work on one host at once."""
    path = os.path.join(state_dir, LOCK_NAME)
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
