# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The sockets of a cpr-transfer: the VM's private directory for the two channels, and the old QEMU's own QMP and
agent sockets, kept under a second name while a new QEMU may replace them, and put back if it fails.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import describe_process
from ansible_collections.hypervisor.cpr.plugins.module_utils._socket import socket_owners
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_ready import SOCKET_BASE, Channels
from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import Credentials


def prepare_channels(name: str, credentials: Optional[Credentials], base: str = SOCKET_BASE) -> Channels:
    """The VM's private socket directory, made or checked, with no other process listening on its two paths.

    Only the VM's user (and root) can put a socket there: the old QEMU hands guest RAM as descriptors to whatever
    listens on the cpr path. A socket left by an earlier call that nobody listens on is removed.
    """
    uid, gid = (credentials.uid, credentials.gid) if credentials else (os.geteuid(), os.getegid())
    _checked_dir(base, os.geteuid(), 0o755, None)
    channels = Channels.for_vm(name, base)
    _checked_dir(channels.directory, uid, 0o700, gid)
    for path in channels.paths:
        owners = socket_owners(path)
        if owners:
            raise CprError(
                f"the {os.path.basename(path)} socket path {path} of its transfer is taken: "
                + "; ".join(describe_process(pid) for pid in owners) + " listens on it", name,
                hint="nothing was touched and the VM runs on in its QEMU; if that is the new QEMU of an interrupted "
                "transfer, end it (it does not run the guest), then run again")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return channels


def _checked_dir(path: str, uid: int, mode: int, gid: Optional[int]) -> None:
    """A directory of this owner that nobody else may write (and with gid, nobody else may enter)."""
    try:
        os.mkdir(path, mode)
        if gid is not None:
            os.chown(path, uid, gid)
        os.chmod(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    private = st.st_mode & (0o077 if gid is not None else 0o022)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or private:
        raise CprError(f"the socket directory {path} is not a directory of uid {uid} that only it may "
                       f"{'use' if gid is not None else 'write'} (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
                       hint="remove it (hypervisor.cpr makes it again) or fix its owner and mode; nothing was touched")


# The old QEMU's sockets, kept under a second name while the new QEMU may replace them (see keep_sockets).
KEPT_SUFFIX = ".cpr-old"


def keep_sockets(paths: List[Optional[str]]) -> List[Tuple[str, int]]:
    """A second name (a hard link) for each of the old QEMU's sockets: (path, inode).

    A new QEMU binds the VM's QMP and agent socket paths as soon as it has the descriptors, replacing the old QEMU's
    socket files; should it fail after that (a device it cannot open), those paths lead nowhere while the old QEMU
    still runs the guest. The link lets the undo put the old QEMU's own socket back at its path.
    """
    kept = []
    for path in dict.fromkeys(p for p in paths if p):
        backup = path + KEPT_SUFFIX
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)
        os.link(path, backup)
        kept.append((path, os.stat(backup).st_ino))
    return kept


def put_back_sockets(kept: List[Tuple[str, int]]) -> List[str]:
    """Each socket path a failed new QEMU replaced leads to the old QEMU again; the paths put back."""
    restored = []
    for path, inode in kept:
        try:
            current: Optional[int] = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != inode:
            os.rename(path + KEPT_SUFFIX, path)
            restored.append(path)
    return restored


def forget_sockets(kept: List[Tuple[str, int]]) -> None:
    for path, _inode in kept:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + KEPT_SUFFIX)


def remove_channels(channels: Channels) -> None:
    """The two sockets, and the VM's directory once empty (VM names come and go)."""
    for path in channels.paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(channels.directory)
