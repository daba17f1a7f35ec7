# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""QMP and guest agent (QGA) sessions on qemu.qmp.

Sockets are connected (_socket) and then handed to qemu.qmp. For the guest agent we first resynchronise the
stream ourselves with guest-sync-delimited, because a previous client may
have left a half-written command or unread answers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import traceback
from typing import Any, AsyncIterator, Dict, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    ConnectionFailedError,
    MissingDependencyError,
    NotAnsweringError,
    SocketMissingError,
    SocketPermissionError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._socket import connect_unix, peer_pid, resume_hint

try:
    from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError

    QEMU_QMP_IMPORT_ERROR: Optional[str] = None
except ImportError:
    QEMU_QMP_IMPORT_ERROR = traceback.format_exc()

# The guest agent prefixes its answer to guest-sync-delimited with this byte,
# and a client sends it first so the agent drops any half-parsed input.
AGENT_DELIMITER = b"\xff"
# Seconds to wait for a socket to answer; timeout options bound the work itself.
CONNECT_TIMEOUT = 10.0


def require_qemu_qmp() -> None:
    """Fail with an actionable error when qemu.qmp is missing."""
    if QEMU_QMP_IMPORT_ERROR is not None:
        raise MissingDependencyError(
            "the Python library qemu.qmp is not installed for the Python that runs this module",
            hint="install it on the hypervisor (pip install qemu.qmp), or let the kernel_update role do it "
            "with kernel_update_install_deps=true",
        )


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


class QmpSession(_Session):
    """A QMP monitor connection to one QEMU."""

    def listen(self, *names: str) -> "EventListener":
        """Collect these events from now on, for as long as the session is open (read with empty() and get())."""
        listener = EventListener(names)
        self.client.register_listener(listener)
        return listener


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
async def open_qmp(path: Optional[str], *, vm: str, timeout: float) -> AsyncIterator[QmpSession]:
    """Open a QMP session (greeting and capabilities negotiation included)."""
    require_qemu_qmp()
    if path is None:
        raise SocketMissingError("its QEMU has no QMP socket", vm, hint="give its socket explicitly in vms")
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
