# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QMP and guest agent (QGA) sessions on qemu.qmp.

Sockets are connected here, with a timeout and errors that name the VM, and
then handed to qemu.qmp. For the guest agent we first resynchronise the
stream ourselves with guest-sync-delimited, because a previous client may
have left a half-written command or unread answers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import stat
import struct
import time
import traceback
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Sequence, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils.errors import (
    CommandFailedError,
    ConnectionFailedError,
    MissingDependencyError,
    NotAnsweringError,
    SocketMissingError,
    SocketPermissionError,
)

try:
    from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError
    from qemu.qmp.events import EventListener

    QEMU_QMP_IMPORT_ERROR: Optional[str] = None
except ImportError:
    QEMU_QMP_IMPORT_ERROR = traceback.format_exc()

# The guest agent prefixes its answer to guest-sync-delimited with this byte,
# and a client sends it first so the agent drops any half-parsed input.
AGENT_DELIMITER = b"\xff"
# How often a connect is tried again while the server's listen queue is full.
CONNECT_POLL_SECONDS = 0.05


def require_qemu_qmp() -> None:
    """Fail with an actionable error when qemu.qmp is missing."""
    if QEMU_QMP_IMPORT_ERROR is not None:
        raise MissingDependencyError(
            "the Python library qemu.qmp is not installed for the Python that runs this module",
            hint="install it on the hypervisor (pip install qemu.qmp), or let the kernel_update role do it "
            "with kernel_update_install_deps=true",
        )


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
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise asyncio.TimeoutError() from None
            await asyncio.sleep(CONNECT_POLL_SECONDS)


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


class _Session:
    """Common command handling of a QMP or guest agent connection."""

    what = "QMP"

    def __init__(self, client: "QMPClient", *, vm: str, path: str, pid: Optional[int], timeout: float) -> None:
        self.client = client
        self.vm = vm
        self.path = path
        self.pid = pid
        self.timeout = timeout

    async def execute(self, command: str, arguments: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None) -> Any:
        """Run one command; QEMU's refusal becomes CommandFailedError with its message."""
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments), limit)
        except ExecuteError as exc:
            raise CommandFailedError(f"{self.what} command {command} failed: {exc}", self.vm) from None
        except asyncio.TimeoutError:
            raise NotAnsweringError(
                f"{self.what} command {command} got no answer within {limit:g} s", self.vm,
                hint=self.hang_hint(),
            ) from None
        except (QMPError, EOFError, OSError) as exc:
            raise ConnectionFailedError(
                f"{self.what} connection on {self.path} was lost during {command}: {exc or type(exc).__name__}", self.vm,
            ) from None

    def hang_hint(self) -> str:
        return "QEMU may be stopped (SIGSTOP) or hung: " + resume_hint([self.pid], "any other client of its monitor")

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator["EventListener"]:
        """Collect the named events while the block runs."""
        with self.client.listener(names) as listener:
            yield listener


class QmpSession(_Session):
    """A QMP monitor connection to one QEMU."""


class AgentSession(_Session):
    """A connection to the guest agent inside one VM."""

    what = "guest agent"

    def hang_hint(self) -> str:
        return "the guest agent may have stopped or the guest may be hung, paused or suspended"


async def forget_request(request: "asyncio.Future[Any]") -> None:
    """Drop a command that may never be answered (guest-suspend-ram, guest-shutdown) and its outcome."""
    request.cancel()
    with contextlib.suppress(BaseException):
        await request


async def _close_quietly(client: "QMPClient") -> None:
    with contextlib.suppress(Exception):
        await client.disconnect()


# A QEMU that just resumed may first drop connections queued while it was
# stopped; a handshake that fails that way is tried again.
HANDSHAKE_ATTEMPTS = 3


@contextlib.asynccontextmanager
async def open_qmp(path: str, *, vm: str, timeout: float) -> AsyncIterator[QmpSession]:
    """Open a QMP session (greeting and capabilities negotiation included)."""
    require_qemu_qmp()
    for attempt in range(1, HANDSHAKE_ATTEMPTS + 1):
        try:
            client, pid = await _qmp_handshake(path, vm=vm, timeout=timeout)
            break
        except ConnectionFailedError as exc:
            # Missing sockets, permissions and timeouts are final; only a broken handshake is retried.
            if isinstance(exc, (SocketMissingError, SocketPermissionError, NotAnsweringError)) or attempt == HANDSHAKE_ATTEMPTS:
                raise
            await asyncio.sleep(0.2 * attempt)
    try:
        yield QmpSession(client, vm=vm, path=path, pid=pid, timeout=timeout)
    finally:
        await _close_quietly(client)


async def _qmp_handshake(path: str, *, vm: str, timeout: float) -> Tuple["QMPClient", Optional[int]]:
    sock = await connect_unix(path, vm=vm, what="QMP", timeout=timeout)
    pid = peer_pid(sock)
    client = QMPClient(vm)
    try:
        await asyncio.wait_for(client.connect(sock), timeout)
    except asyncio.TimeoutError:
        await _close_quietly(client)
        sock.close()
        raise NotAnsweringError(
            f"QMP socket {path} accepted the connection but QEMU sent no greeting within {timeout:g} s: QEMU is "
            "stopped (SIGSTOP) or hung, or another client such as libvirt holds this monitor "
            "(a QMP socket serves one client at a time)", vm,
            hint=resume_hint([pid], "the other client of this monitor"),
        ) from None
    except ConnectError as exc:
        sock.close()
        raise ConnectionFailedError(f"QMP handshake on {path} failed: {exc}", vm) from None
    return client, pid


async def _resync_agent(sock: socket.socket, *, vm: str, path: str) -> None:
    """Flush stale input and output of the agent (guest-sync-delimited protocol)."""
    loop = asyncio.get_running_loop()
    sync_id = random.randint(1, 2**31 - 1)
    request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
    await loop.sock_sendall(sock, AGENT_DELIMITER + json.dumps(request).encode() + b"\n")
    pending = b""
    while True:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ConnectionFailedError(f"the guest agent socket {path} was closed during the resync", vm)
        pending += chunk
        # Only what follows the last delimiter can be our answer; older lines are stale.
        if AGENT_DELIMITER not in pending:
            pending = b""
            continue
        pending = pending[pending.rindex(AGENT_DELIMITER) + 1:]
        if b"\n" not in pending:
            continue
        line, pending = pending.split(b"\n", 1)
        with contextlib.suppress(ValueError):
            if json.loads(line).get("return") == sync_id:
                return


@contextlib.asynccontextmanager
async def open_agent(path: str, *, vm: str, timeout: float) -> AsyncIterator[AgentSession]:
    """Open a guest agent session, resynchronised and ready for commands."""
    require_qemu_qmp()
    sock = await connect_unix(path, vm=vm, what="guest agent", timeout=timeout)
    pid = peer_pid(sock)
    try:
        await asyncio.wait_for(_resync_agent(sock, vm=vm, path=path), timeout)
    except asyncio.TimeoutError:
        sock.close()
        raise NotAnsweringError(
            f"the guest agent on {path} did not answer within {timeout:g} s", vm,
            hint="check that qemu-guest-agent runs in the guest and that the guest is running "
            "(a paused or suspended guest cannot answer); another client may also hold the socket",
        ) from None
    except BaseException:
        sock.close()
        raise
    client = QMPClient(f"{vm} agent")
    # The agent sends no greeting and knows no capabilities negotiation.
    client.await_greeting = False
    client.negotiate = False
    try:
        await client.connect(sock)
    except ConnectError as exc:
        sock.close()
        raise ConnectionFailedError(f"guest agent connection on {path} failed: {exc}", vm) from None
    try:
        yield AgentSession(client, vm=vm, path=path, pid=pid, timeout=timeout)
    finally:
        await _close_quietly(client)
