# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""One running VM moved to a new QEMU with cpr-transfer, or left exactly as it was.

The old QEMU's monitor is opened first (the new QEMU takes over its socket paths once it runs). The new QEMU is
started from the old one's command line, binary from /proc, as its user, with the two channels in the VM's private
socket directory, and recorded (``<vm>.transfer``) before it is waited for. Once it listens on the cpr socket, the
old QEMU is told to migrate with mode cpr-transfer; once the new one answers on the VM's QMP socket and runs, the old
one is ended. Until then any failure ends the new process and resumes the old one.

The old QEMU is ended with SIGKILL, not ``quit``: its exit would unlink the QMP and guest agent sockets that the new
QEMU now serves at the same paths (and run a tap device's downscript); in postmigrate after a completed transfer it
holds nothing the VM needs (guest RAM is shared with the new process, its block devices were flushed and handed over).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils import _migration as migration
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotAnsweringError, NotReadyError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, wait_agent, wait_runstate
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import describe_process, process_identity, unit_of
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import (
    QMP_TRY_SECONDS,
    Command,
    Launched,
    alive,
    start_qemu,
    wait_exit,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import CONNECT_TIMEOUT, QmpSession, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._socket import socket_owners
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_ready import Channels, transfer_argv
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_sockets import (
    KEPT_SUFFIX,
    forget_sockets,
    keep_sockets,
    prepare_channels,
    put_back_sockets,
    remove_channels,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll

# Set on the old QEMU for the transfer (and set back by an undo); mapped-ram and multifd, which a restore from a
# mapped-ram save leaves on, need a file as the main channel.
SETTINGS: migration.Settings = ({"mapped-ram": False, "multifd": False}, {"mode": "cpr-transfer"})


@dataclass
class UpdateResult:
    """What qemu_update reports for one VM."""

    name: str
    method: str
    changed: bool
    # Why it was not transferred (method relaunch), or None.
    reason: Optional[str]
    runstate: str
    pid_before: Optional[int]
    pid_after: Optional[int]
    qemu_version_before: Optional[str]
    qemu_version_after: Optional[str]
    binary_before: Optional[str]
    binary_after: Optional[str]
    unit_after: Optional[str]
    paused_at: float
    back_at: float
    downtime_seconds: float
    # QEMU's own figure for the pause (query-migrate downtime), transfers only.
    qemu_downtime_ms: Optional[int]
    update_seconds: float
    # As cpr_restore reports them (the role's report has the same keys for every VM). A transfer: the VM ran, was
    # not suspended, its RAM was handed over in place and no state file was written (save/restore/state: None).
    runstate_before: str = "running"
    suspended_by_us: bool = False
    ram_in_place: bool = True
    save_seconds: Optional[float] = None
    restore_seconds: Optional[float] = None
    state_bytes: Optional[int] = None


# --------------------------------------------------------------------------- the transfer


@dataclass
class _Transfer:
    """One VM's transfer in progress: what an undo needs."""

    facts: VmFacts
    channels: Channels
    launched: Optional[Launched] = None
    new_pid: Optional[int] = None
    settings_before: migration.Settings = ({}, {})
    settings_applied: bool = False
    # The old QEMU's QMP and agent sockets under a second name (keep_sockets).
    kept: List[Tuple[str, int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.facts.name


class Turns:
    """When the transfers of one call may pause their guests: once every new QEMU of the call listens (or its transfer
    ended), then one guest at a time.

    A new QEMU builds its machine inside the pause; other QEMUs starting, or pausing, on the same few cores at that
    moment lengthen it (measured: 8 at once, 4.4 times one on 2 cores).
    """

    def __init__(self, names: List[str]) -> None:
        self._waiting = set(names)
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        if not self._waiting:
            self._ready.set()

    def arrived(self, name: str) -> None:
        """This VM's new QEMU listens, or its transfer ended: the others need not wait for it."""
        self._waiting.discard(name)
        if not self._waiting:
            self._ready.set()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        await self._ready.wait()
        async with self._lock:
            yield


async def transfer(facts: VmFacts, state_dir: StateDir, timeout: float, check_agent: bool = True,
                   turns: Optional[Turns] = None) -> UpdateResult:
    """Move one running VM to a new QEMU of the binary now at its old one's path; on failure leave it as it was.

    turns: shared by the transfers of one call (see Turns).
    """
    turns = turns or Turns([facts.name])
    try:
        return await _transfer(facts, state_dir, timeout, check_agent, turns)
    finally:
        turns.arrived(facts.name)


async def _transfer(facts: VmFacts, state_dir: StateDir, timeout: float, check_agent: bool,
                    turns: Turns) -> UpdateResult:
    name, started = facts.name, time.monotonic()
    command = Command.of(facts).checked(name)
    channels = await asyncio.to_thread(prepare_channels, name, command.credentials)
    job = _Transfer(facts, channels)
    qmp_inode = os.stat(facts.qmp_socket or "").st_ino
    async with contextlib.AsyncExitStack() as stack:
        old = await stack.enter_async_context(open_qmp(facts.qmp_socket, vm=name, timeout=CONNECT_TIMEOUT))
        if old.pid != facts.pid:
            raise CprError(f"the QEMU at its QMP socket is pid {old.pid}, not pid {facts.pid}", name,
                           hint="something changed the VM since its facts were read; nothing was touched, run again")
        try:
            job.kept = await asyncio.to_thread(keep_sockets, [facts.qmp_socket, facts.qga_socket])
            job.settings_before = await migration.current(old, SETTINGS)
            job.settings_applied = True
            await migration.apply(old, SETTINGS)
            blocked = (await old.execute("query-migrate")).get("blocked-reasons", [])
            if blocked:
                raise NotReadyError(f"QEMU blocks a cpr-transfer: {'; '.join(blocked)}", name)
            job.launched = await asyncio.to_thread(
                start_qemu, name, command.with_argv(transfer_argv(command.argv, facts.machine_type or "", channels)),
                facts.qmp_socket or "", state_dir)
            # Recorded before anything waits for it: no other process is ever taken for the new QEMU.
            _record(state_dir, job)
            job.new_pid = await _listening(job, state_dir, timeout)
            _record(state_dir, job)
            turns.arrived(name)
            async with turns.turn():
                paused_at = time.time()
                await old.execute("migrate", channels.migrate_arguments())
                # The new QEMU answering at the VM's QMP path is the sign the state arrived: no wait on the old one.
                new = await _new_session(job, old, qmp_inode, timeout, stack)
                if await runstate(new) != "running":
                    await wait_runstate(new, "running", timeout, "the transfer")
                back_at = time.time()
            info = await migration.wait_migration(old, timeout, "the transfer")
        except BaseException as exc:
            await _undo(old, job, state_dir, exc)
            raise
        await _end_old(facts.pid or 0, timeout)
        version = (await new.execute("query-version"))["qemu"]
    await asyncio.to_thread(_finish, state_dir, job)
    if check_agent and facts.agent.answering and facts.qga_socket:
        # The guest runs already: its agent answering is the check that it works, not part of the blackout.
        await wait_agent(name, facts.qga_socket, timeout)
    launched = job.launched
    return UpdateResult(name, "transfer", True, None, "running", facts.pid, job.new_pid, facts.qemu_version,
                        "{major}.{minor}.{micro}".format(**version), facts.exe, exe_of(job.new_pid),
                        launched.unit if launched else None, paused_at, back_at, back_at - paused_at,
                        info.get("downtime"), time.monotonic() - started)


def _record(state_dir: StateDir, job: _Transfer) -> None:
    launched = job.launched
    state_dir.write_transfer(job.name, {
        "old": process_identity(job.facts.pid or 0),
        "new": dict(process_identity(job.new_pid or (launched.child.pid if launched and launched.child else 0)),
                    unit=launched.unit if launched else None),
        "socket_dir": job.channels.directory})


async def _listening(job: _Transfer, state_dir: StateDir, timeout: float) -> int:
    """Wait until the new QEMU listens on the cpr socket; its pid. Only it may listen there."""
    launched = job.launched
    if launched is None:
        raise CprError("no new QEMU was started to wait for", job.name)
    child = launched.child

    async def listens() -> Optional[int]:
        if child is not None and child.poll() is not None:
            raise CprError(f"the new QEMU exited with status {child.returncode} before it listened: "
                           f"{state_dir.log_tail(job.name)}", job.name,
                           hint="the VM runs on in its old QEMU, untouched; fix the cause (a missing device or file, "
                           "a broken binary) and run again")
        owners = socket_owners(job.channels.cpr)
        ours = [pid for pid in owners if (child is not None and pid == child.pid)
                or (launched.unit is not None and unit_of(pid) == launched.unit)]
        if owners and len(ours) != len(owners):
            strangers = "; ".join(describe_process(pid) for pid in owners if pid not in ours)
            raise CprError(f"another process listens on the cpr socket {job.channels.cpr}: {strangers}", job.name,
                           hint="the VM runs on in its old QEMU, untouched; find out who took the path, then run again")
        return ours[0] if ours else None

    return await poll(listens, timeout, lambda: NotAnsweringError(
        f"the new QEMU did not listen on {job.channels.cpr} within {timeout:g} s", job.name,
        hint="the VM runs on in its old QEMU; the new one was ended"))


async def _new_session(job: _Transfer, old: QmpSession, qmp_inode: int, timeout: float,
                       stack: contextlib.AsyncExitStack) -> QmpSession:
    """The new QEMU's monitor, once it has taken over the VM's QMP socket path (a new socket there, the new process).

    Inside the guest's pause: checked every millisecond or two, and a transfer the old QEMU reports failed ends it.
    """
    path = job.facts.qmp_socket or ""

    async def answers() -> Optional[QmpSession]:
        if not alive(job.new_pid or 0):
            raise CprError("the new QEMU ended during the transfer", job.name)
        await migration.migration_info(old, "the transfer")
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == qmp_inode:
                return None
        session_stack = contextlib.AsyncExitStack()
        try:
            session = await session_stack.enter_async_context(
                open_qmp(path, vm=job.name, timeout=min(QMP_TRY_SECONDS, timeout)))
        except CprError:
            return None
        stack.push_async_callback(session_stack.aclose)
        if session.pid != job.new_pid:
            raise CprError(f"the QMP socket {path} leads to pid {session.pid}, not to the new QEMU (pid {job.new_pid})",
                           job.name)
        return session

    return await poll(answers, timeout, lambda: NotAnsweringError(
        f"the new QEMU did not answer on {path} within {timeout:g} s after the transfer", job.name), every=0.002)


async def _undo(old: QmpSession, job: _Transfer, state_dir: StateDir, cause: BaseException) -> None:
    """The new process gone first (nothing may run the guest beside the old one), then the old one resumed."""
    notes: List[str] = []
    launched = job.launched
    # A new QEMU that took the descriptors and then failed (a device it could not open) exits by itself, and the old
    # one only sees the main channel refused: its own words say why.
    child = launched.child if launched is not None else None
    exited = None
    if child is not None and not alive(child.pid):
        # Ending already (its main thread a zombie while its other threads exit): reaped in moments.
        exited = await asyncio.to_thread(child.wait)
    await _end_new(job)
    if exited is not None and isinstance(cause, CprError):
        cause.message += f"; the new QEMU had exited with status {exited}: {state_dir.log_tail(job.name)}"
    try:
        restored = await asyncio.to_thread(put_back_sockets, job.kept)
    except OSError as exc:
        notes.append(f"the old QEMU's socket {exc.filename} could not be put back at its path ({exc.strerror}): it "
                     f"still listens under {exc.filename}{KEPT_SUFFIX}")
    else:
        if restored:
            notes.append(f"the old QEMU's sockets were put back at {', '.join(restored)}, which the new one had taken")
    try:
        info = await old.execute("query-migrate")
        if info.get("status") not in (None, "none", *migration.FINAL_STATES):
            await old.execute("migrate_cancel")
            with contextlib.suppress(CprError):
                await migration.wait_migration(old, CONNECT_TIMEOUT, "the cancelled transfer")
        if await runstate(old) in ("postmigrate", "paused", "finish-migrate"):
            await old.execute("cont")
        if job.settings_applied:
            await migration.apply(old, job.settings_before)
    except CprError as exc:
        notes.append(f"the old QEMU could not be resumed ({exc.message}): it still holds the guest; once it answers "
                     f"again on {job.facts.qmp_socket}, run cont on it if query-status says paused or postmigrate")
    await asyncio.to_thread(_finish, state_dir, job)
    if isinstance(cause, CprError):
        cause.vm = cause.vm or job.name
        cause.hint = "; ".join(notes + [cause.hint or "the new QEMU was ended and the VM runs on in its old QEMU; "
                                        "fix the cause and run again"])


async def _end_new(job: _Transfer) -> None:
    launched = job.launched
    pids = {pid for pid in (job.new_pid, launched.child.pid if launched and launched.child else None) if pid}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if launched is not None and launched.child is not None:
        await asyncio.to_thread(launched.child.wait)
    for pid in pids:
        await wait_exit(pid, CONNECT_TIMEOUT)


async def _end_old(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    await wait_exit(pid, timeout)


def _finish(state_dir: StateDir, job: _Transfer) -> None:
    forget_sockets(job.kept)
    remove_channels(job.channels)
    state_dir.remove_transfer(job.name)


def exe_of(pid: Optional[int]) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None
