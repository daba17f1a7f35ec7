# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""What we may run as root: only what root could have started, with no more rights than it had.

A QEMU is started again from the binary its process runs (``/proc/<pid>/exe``,
never argv[0], which any user can set), and only when that binary and every
directory above it are root's and nobody else may write them. It runs with the
credentials its process had (uid, gid, supplementary groups): a QEMU a user
started, or one that dropped to a user with ``-run-with user=`` or ``-runas``,
is started again as that user, never as root.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Credentials:
    """Who a process runs as."""

    uid: int
    gid: int
    groups: List[int] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Credentials":
        return cls(int(data["uid"]), int(data["gid"]), [int(g) for g in data.get("groups", [])])


def credentials_of(pid: int, proc: str = "/proc") -> Optional[Credentials]:
    """The effective uid, gid and supplementary groups of a process, from /proc/<pid>/status."""
    fields: Dict[str, List[str]] = {}
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="utf-8") as handle:
            for line in handle:
                key, _sep, value = line.partition(":")
                fields[key] = value.split()
        # Uid and Gid: real, effective, saved, filesystem.
        return Credentials(int(fields["Uid"][1]), int(fields["Gid"][1]), [int(g) for g in fields.get("Groups", [])])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def binary_problem(exe: Optional[str], what: str = "its QEMU binary", follow: bool = False) -> Optional[str]:
    """Why we would not run this binary as root: None when it and every directory above it are root's alone.

    follow: the binary may be a symlink (a virtual environment's python) in such a directory, to such a binary.
    """
    if not exe or not os.path.isabs(exe):
        return f"{what} cannot be read from /proc, so it could not be started again"
    if follow and os.path.islink(exe):
        return _root_only(os.path.dirname(exe), exe, what) or binary_problem(os.path.realpath(exe), what)
    return _root_only(exe, exe, what)


def _root_only(path: str, exe: str, what: str) -> Optional[str]:
    """Why path (exe, or a directory on the way to it) could have been changed by a user who is not root."""
    while True:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"{what} {exe} cannot be checked ({path}: {exc.strerror}), so it is not started"
        if stat.S_ISLNK(st.st_mode) and path == exe:
            return f"{what} {exe} is a symlink"
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_uid != 0 or (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir):
            return (f"{what} {exe} could have been planted by another user: {path} is owned by uid "
                    f"{st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}, and hypervisor.cpr starts only what "
                    "root could have started (a root-owned binary in root-owned directories nobody else may write)")
        if path == "/":
            return None
        path = os.path.dirname(path)
