# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""A directory opened once, by descriptor, so that nobody can swap it, or a file in it, under us.

Every directory on its path is checked on the way down: owned by root (or by
the user running us) and writable only by its owner, or sticky like /tmp. The
directory itself must be ours and writable only by us. Every file in it is then
opened relative to its descriptor, never following a symlink, and created with
its final mode (0600); JSON is written to a temporary file and renamed over the
old one, so a reader sees one or the other, never half of one. A JSON file is
read only when we own it and nobody else may read or write it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import StateDirError

D = TypeVar("D", bound="Directory")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def check_path(path: str) -> None:
    """An absolute, normal path that is not /: refused before anything is opened or created."""
    if not os.path.isabs(path) or os.path.normpath(path) != path.rstrip("/") or path.rstrip("/") in ("", "/"):
        raise StateDirError(f"the state directory {path!r} must be an absolute path below /, without . or .. in it",
                            hint="give the real path, for example /var/lib/qemu-cpr")


class Directory:
    """The state directory by descriptor; a directory that does not exist holds nothing until create() makes it.

    Use it as a context manager: the descriptors are closed at the end.
    """

    def __init__(self, path: str, parent_fd: int) -> None:
        self.path = path
        self._parent_fd = parent_fd
        self._fd: Optional[int] = None

    @classmethod
    def open(cls: Type[D], path: str) -> D:
        """Check every directory on the path and open the directory (if it exists) by descriptor."""
        check_path(path)
        path = path.rstrip("/")
        fd = _checked_parent(os.open("/", DIR_FLAGS), "/")
        try:
            walked = ""
            for part in path.split("/")[1:-1]:
                walked += "/" + part
                below = _step(fd, part, walked)
                os.close(fd)
                fd = below
            directory = cls(path, fd)
            directory._fd = directory._open_self()
            return directory
        except BaseException:
            os.close(fd)
            raise

    def _open_self(self) -> Optional[int]:
        try:
            fd = os.open(os.path.basename(self.path), DIR_FLAGS, dir_fd=self._parent_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _is_symlink(self._parent_fd, os.path.basename(self.path)):
                raise StateDirError(f"the state directory {self.path} is a symlink",
                                    hint="give the real path; a symlink could redirect guest memory elsewhere") from None
            if exc.errno == errno.ENOTDIR:
                raise StateDirError(f"the state directory {self.path} is not a directory") from None
            raise StateDirError(f"the state directory {self.path} cannot be opened: {exc.strerror}") from None
        st = os.fstat(fd)
        problem = None
        if st.st_uid != os.geteuid():
            problem = StateDirError(f"the state directory {self.path} is owned by uid {st.st_uid}, not by uid "
                                    f"{os.geteuid()}", hint="state files hold guest memory: use a directory owned by "
                                    "the user that runs QEMU")
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = StateDirError(f"the state directory {self.path} is writable by others (mode "
                                    f"{stat.S_IMODE(st.st_mode):04o})", hint=f"chmod 0700 {self.path}")
        if problem is not None:
            os.close(fd)
            raise problem
        return fd

    def create(self) -> None:
        """Make the directory (0700) if it does not exist."""
        if self._fd is not None:
            return
        try:
            os.mkdir(os.path.basename(self.path), 0o700, dir_fd=self._parent_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateDirError(f"the state directory {self.path} cannot be created: {exc.strerror}",
                                hint="choose a state_dir on a writable, local filesystem") from None
        self._fd = self._open_self()

    def close(self) -> None:
        for fd in (self._fd, self._parent_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = None

    def __enter__(self: D) -> D:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def exists(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise StateDirError(f"the state directory {self.path} does not exist")
        return self._fd

    # ----------------------------------------------------------------------- entries

    def entries(self, suffix: str) -> List[str]:
        """The names (suffix stripped) of the entries with this suffix, sorted; hidden ones left out."""
        if self._fd is None:
            return []
        return sorted(entry[:-len(suffix)] for entry in os.listdir(self._fd)
                      if entry.endswith(suffix) and not entry.startswith("."))

    def has(self, entry: str) -> bool:
        if self._fd is None:
            return False
        try:
            os.stat(entry, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def open_file(self, entry: str, flags: int, mode: int = 0o600) -> int:
        """A descriptor of an entry, never through a symlink; a new file is created with this mode."""
        return os.open(entry, flags | FILE_FLAGS, mode, dir_fd=self.fd)

    def rename(self, entry: str, new: str) -> None:
        os.replace(entry, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, *entries: str) -> None:
        """Remove entries that exist, then make it durable."""
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=self.fd)
        os.fsync(self.fd)

    def read_json(self, entry: str) -> Tuple[Optional[Any], Optional[str]]:
        """(data, None), (None, None) when the entry does not exist, or (None, why) when it cannot be trusted or read."""
        if self._fd is None:
            return None, None
        try:
            descriptor = self.open_file(entry, os.O_RDONLY)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, exc.strerror
        with os.fdopen(descriptor, encoding="utf-8") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                return None, (f"it is not a regular file of uid {os.geteuid()} that only its owner may read and write "
                              f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
            try:
                return json.load(handle), None
            except ValueError as exc:
                return None, str(exc)

    def write_json(self, entry: str, data: Dict[str, Any]) -> None:
        """Write JSON (0600), atomically (write_file)."""
        self.write_file(entry, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def write_file(self, entry: str, content: bytes, mode: int = 0o600) -> None:
        """Write a file: temp file created exclusively with its mode, fsync, rename over the entry, fsync the directory."""
        tmp = f".{entry}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.fd)
        try:
            with os.fdopen(self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            self.rename(tmp, entry)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        os.fsync(self.fd)


def _step(parent_fd: int, part: str, walked: str) -> int:
    """Open and check the next directory of the path below parent_fd (which the caller closes)."""
    try:
        fd = os.open(part, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise StateDirError(f"the parent directory {walked} of the state directory does not exist",
                            hint="create it (owned by root, not writable by others) or choose another state_dir") from None
    except OSError as exc:
        why = "is a symlink" if _is_symlink(parent_fd, part) else f"cannot be opened ({exc.strerror})"
        raise StateDirError(f"the parent directory {walked} of the state directory {why}",
                            hint="give the real path: every directory on it must be a directory owned by root") from None
    return _checked_parent(fd, walked)


def _is_symlink(parent_fd: int, entry: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(entry, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _checked_parent(fd: int, walked: str) -> int:
    """fd, when nobody but root (or we) can change what the directory holds; else it is closed and refused."""
    st = os.fstat(fd)
    owner_ok = st.st_uid in (0, os.geteuid())
    if owner_ok and not (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX):
        return fd
    os.close(fd)
    raise StateDirError(
        f"the parent directory {walked} of the state directory is owned by uid {st.st_uid} with mode "
        f"{stat.S_IMODE(st.st_mode):04o}: another user could swap the state directory under us",
        hint="every directory above state_dir must be owned by root and writable only by it (or sticky, like /tmp)")
