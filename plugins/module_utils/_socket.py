# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Unix sockets of QEMU monitors and guest agents: connected with a timeout and errors that name the VM, and
who is at the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from typing import List, Optional, Sequence

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    ConnectionFailedError,
    NotAnsweringError,
    SocketMissingError,
    SocketPermissionError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll


def peer_pid(sock: socket.socket) -> Optional[int]:
    """The pid of the process at the other end of a connected unix socket."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid or None


async def connect_unix(path: str, *, vm: str, what: str, timeout: float) -> socket.socket:
    """Connect to a unix socket, turning every failure into an error naming the VM."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SocketMissingError(
            f"{what} socket {path} does not exist", vm,
            hint="check that the VM runs and was started with this socket, or give its path explicitly",
        ) from None
    except PermissionError:
        raise SocketPermissionError(
            f"permission denied reading {what} socket {path}", vm,
            hint="run as root (become: true) or as the user that owns the VM",
        ) from None
    if not stat.S_ISSOCK(mode):
        raise SocketMissingError(f"{what} socket {path} is not a unix socket", vm, hint="give the path of the socket itself")

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await _connect_until(sock, path, timeout)
    except PermissionError:
        sock.close()
        raise SocketPermissionError(
            f"permission denied connecting to {what} socket {path}", vm,
            hint="run as root (become: true) or as the user that owns the socket",
        ) from None
    except ConnectionRefusedError:
        sock.close()
        raise ConnectionFailedError(
            f"nothing listens on {what} socket {path}", vm,
            hint="QEMU has exited and left a stale socket; if the VM was saved, restore it with cpr_restore",
        ) from None
    except asyncio.TimeoutError:
        sock.close()
        raise NotAnsweringError(
            f"connecting to {what} socket {path} timed out after {timeout:g} s: its QEMU accepts no new connection "
            "(stopped with SIGSTOP, hung, or other clients of this socket are queued)", vm,
            hint=resume_hint(socket_owners(path), "the other clients of this socket"),
        ) from None
    except OSError as exc:
        sock.close()
        raise ConnectionFailedError(f"connecting to {what} socket {path} failed: {exc.strerror or exc}", vm) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_until(sock: socket.socket, path: str, timeout: float) -> None:
    """Connect a non-blocking unix socket, waiting up to timeout while the listener's queue is full.

    A unix socket's connect never stays in progress: it succeeds at once or, when the server accepts nothing
    (a stopped QEMU with clients queued before us), fails with EAGAIN. asyncio's sock_connect mistakes that for a
    connection in progress and hands back an unconnected socket, so we poll ourselves.
    """

    async def connected() -> Optional[bool]:
        try:
            sock.connect(path)
            return True
        except BlockingIOError:
            return None

    await poll(connected, timeout, asyncio.TimeoutError)


def socket_owners(path: str) -> List[int]:
    """The pids of the processes that listen on a unix socket path (read from /proc; for error messages).

    More than one when a process still holds a socket whose file was replaced.
    """
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as handle:
            rows = [line.split() for line in handle.read().splitlines()[1:]]
    except OSError:
        return []
    # Columns: Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 marks a listening socket.
    targets = {f"socket:[{row[6]}]" for row in rows if len(row) >= 8 and row[7] == path and int(row[3], 16) & 0x10000}
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")) if targets else ():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                        owners.add(int(pid))
    return sorted(owners)


def resume_hint(pids: Sequence[Optional[int]], other_client: str) -> str:
    """What to do about a QEMU that does not answer: resume it if it was stopped, else free its socket or wait longer."""
    known = [str(pid) for pid in pids if pid]
    target = known[0] if len(known) == 1 else f"<pid of its QEMU: one of {', '.join(known)}>" if known else "<pid of its QEMU>"
    return (f"if its QEMU was stopped (SIGSTOP), resume it: kill -CONT {target}; otherwise close {other_client}, "
            "or raise timeout if QEMU is only slow")
