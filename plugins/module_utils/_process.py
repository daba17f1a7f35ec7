# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""QEMU processes: start one so that it outlives the module, as the user it ran as and only from a binary root could
have put there; wait for it to answer or to end; tell it to quit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import fresh_argv
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotAnsweringError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import systemd_runs_host
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import StopRecord
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import QmpSession, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import Credentials, binary_problem
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll

# One try to reach a starting QEMU's monitor waits this long at most; the caller's timeout bounds the whole wait.
QMP_TRY_SECONDS = 5.0


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    """What starting a VM's QEMU runs: the command line (argv[0] the binary its process ran), where, and as whom."""

    argv: List[str]
    cwd: str
    # None: whoever runs the engine (a record written before credentials were recorded).
    credentials: Optional[Credentials] = None

    @classmethod
    def of(cls, facts: VmFacts) -> "Command":
        """The command that started a running VM's QEMU, its binary taken from /proc, not from argv[0]."""
        argv = [facts.exe or facts.argv[0], *facts.argv[1:]] if facts.argv else []
        return cls(argv, process_cwd(facts.pid), facts.credentials)

    @classmethod
    def recorded(cls, argv: List[str], cwd: str, credentials: Dict[str, Any]) -> "Command":
        return cls(argv, cwd, Credentials.from_dict(credentials) if credentials else None)

    def checked(self, name: str) -> "Command":
        """This command, if its binary is still one only root could have put there; else refused."""
        binary = self.argv[0] if self.argv else ""
        if binary and not os.path.lexists(binary):
            raise CprError(f"the new QEMU cannot be started: No such file or directory: {binary}", name,
                           hint="the QEMU binary recorded is gone; reinstall it, then run again (the saved state and "
                           "its records are kept)")
        problem = binary_problem(binary)
        if problem is not None:
            raise CprError(problem, name, hint="reinstall QEMU from the distribution, then run again; the saved "
                           "state and its records are kept")
        return self

    def with_argv(self, argv: List[str]) -> "Command":
        return Command(argv, self.cwd, self.credentials)


def stop_record(facts: VmFacts, agent_answered: bool, how: str) -> StopRecord:
    """What vm_power state=started needs to boot a VM again: its command line as it would start afresh."""
    command = Command.of(facts)
    return StopRecord(facts.name, fresh_argv(command.argv), command.cwd, facts.qmp_socket or "", facts.qga_socket,
                      agent_answered, how, credentials=facts.credentials.to_dict() if facts.credentials else {})


def process_cwd(pid: Optional[int]) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "/"


# --------------------------------------------------------------------------- starting


def systemd_unit_name(template: str, name: str) -> str:
    """The operator's unit for a VM (launch: systemd): {name} in the template replaced by the VM's name."""
    return template.replace("{name}", name)


def transient_unit_name(name: str, now: float) -> str:
    """The transient unit systemd-run starts a VM's QEMU in; the time keeps it apart from a failed earlier one."""
    return f"hypervisor-cpr-{name}-{int(now)}.service"


def systemctl_start_command(unit: str) -> List[str]:
    return ["systemctl", "start", unit]


def systemd_run_command(unit: str, command: Command) -> List[str]:
    """QEMU as a transient service: systemd supervises it, and it outlives this process (--collect: no failed leftover).

    It runs as the user its QEMU ran as, with that user's groups.
    """
    user: List[str] = []
    credentials = command.credentials
    if credentials is not None and credentials.uid != os.geteuid():
        user = [f"--uid={credentials.uid}", f"--gid={credentials.gid}",
                f"--property=SupplementaryGroups={' '.join(map(str, credentials.groups))}"]
    return ["systemd-run", f"--unit={unit}", "--collect", f"--working-directory={command.cwd}", *user, "--",
            *command.argv]


def _systemd_run_available() -> bool:
    return systemd_runs_host() and shutil.which("systemd-run") is not None


@dataclass
class Launched:
    """A QEMU we started: the child we hold, or the systemd unit it runs in (its output is in that unit's journal)."""

    name: str
    qmp_socket: str
    child: Optional[subprocess.Popen] = None
    unit: Optional[str] = None


def start_qemu(name: str, command: Command, qmp_socket: str, state_dir: StateDir) -> Launched:
    """Start QEMU so that it outlives this process: a transient unit under systemd, else detached.

    Its binary is checked first: only what root could have put there is started.
    """
    command = command.checked(name)
    if _systemd_run_available():
        unit = transient_unit_name(name, time.time())
        run_starter(systemd_run_command(unit, command), name)
        return Launched(name, qmp_socket, unit=unit)
    return Launched(name, qmp_socket, child=spawn_detached(name, command, state_dir))


def start_unit(name: str, unit: str, qmp_socket: str) -> Launched:
    """Start the operator's unit that runs this VM's QEMU."""
    run_starter(systemctl_start_command(unit), name)
    return Launched(name, qmp_socket, unit=unit)


def run_starter(command: List[str], name: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise CprError(f"{command[0]} could not start the new QEMU: {detail.strip()}", name,
                       hint="its record in the state directory is kept; fix the cause and run again") from None


def spawn_detached(name: str, command: Command, state_dir: StateDir) -> subprocess.Popen:
    """QEMU in a session of its own, as the user it ran as, its output in the VM's log in the state directory."""
    user: Dict[str, Any] = {}
    credentials = command.credentials
    if credentials is not None and credentials.uid != os.geteuid():
        user = {"user": credentials.uid, "group": credentials.gid, "extra_groups": credentials.groups}
    try:
        with state_dir.open_log(name) as log:
            return subprocess.Popen(command.argv, cwd=command.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, **user)
    except OSError as exc:
        raise CprError(f"the new QEMU cannot be started: {exc.strerror}: {exc.filename or command.argv[0]}", name,
                       hint="the QEMU binary or working directory recorded in the manifest is gone; reinstall it, "
                       "then run cpr_restore again (the state file and manifest are kept)") from None


async def wait_for_qmp(launched: Launched, state_dir: StateDir, timeout: float,
                       stack: contextlib.AsyncExitStack) -> QmpSession:
    """Wait until the new QEMU answers on its QMP socket and return that session (closed with stack).

    If QEMU dies first, its own words are the error. Without a child (systemd started it), a QEMU that died
    shows only as the timeout, so the error says where its words are.
    """
    name, child = launched.name, launched.child
    last: List[str] = ["no answer yet"]

    async def answers() -> Optional[QmpSession]:
        if child is not None and child.poll() not in (None, 0):
            raise CprError(f"the new QEMU exited with status {child.returncode}: {state_dir.log_tail(name)}",
                           name, hint="fix the cause (a missing device or file, a changed binary) and run "
                           "cpr_restore again; the state file and manifest are kept")
        try:
            return await stack.enter_async_context(
                open_qmp(launched.qmp_socket, vm=name, timeout=min(QMP_TRY_SECONDS, timeout)))
        except CprError as exc:
            last[0] = exc.message
            return None

    return await poll(answers, timeout, lambda: _no_qmp_error(launched, timeout, last[0]))


def _no_qmp_error(launched: Launched, timeout: float, why: str) -> NotAnsweringError:
    message = f"the new QEMU did not answer on {launched.qmp_socket} within {timeout:g} s ({why})"
    unit = launched.unit
    if unit is None:
        return NotAnsweringError(message, launched.name, hint="it may be hung and is left as it is; a later "
                                 "cpr_restore continues with it once it answers, or starts another after you kill "
                                 "it; the state file and manifest are kept")
    return NotAnsweringError(
        f"{message}; systemd started it in {unit}", launched.name,
        hint=f"see why with systemctl status {unit} and journalctl -u {unit}: if QEMU exited, fix the cause; if the "
        f"unit does not listen on {launched.qmp_socket}, make it run the command line recorded in the manifest; a QEMU "
        "that hangs is left as it is; the state file and manifest are kept, run cpr_restore again",
    )


# --------------------------------------------------------------------------- ending


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until the process has ended; False when it still runs after timeout seconds."""

    async def ended() -> Optional[bool]:
        return None if alive(pid) else True

    try:
        return await poll(ended, timeout, _StillRunning)
    except _StillRunning:
        return False


class _StillRunning(Exception):
    """wait_exit ran out of time: the caller decides what that means."""


async def quit_qemu(session: QmpSession, pid: Optional[int], timeout: float) -> None:
    """Tell QEMU to quit and wait for its process to end."""
    with contextlib.suppress(CprError):
        await session.execute("quit")
    if pid and not await wait_exit(pid, timeout):
        # The state is on disk and the manifest written: ending the process loses nothing.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await wait_exit(pid, timeout)
