# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""QEMU processes: start one so that it outlives the module, wait for it to answer or to end, tell it to quit;
and the command lines a restart runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotAnsweringError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import systemd_runs_host
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import StopRecord
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import QmpSession, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll

# One try to reach a starting QEMU's monitor waits this long at most; the caller's timeout bounds the whole wait.
QMP_TRY_SECONDS = 5.0


# --------------------------------------------------------------------------- command lines


def fresh_argv(argv: List[str]) -> List[str]:
    """A recorded argv without -incoming (a QEMU restored before carries one) and -S (it would stay paused)."""
    fresh: List[str] = []
    index = 0
    while index < len(argv):
        option = argv[index].lstrip("-") if argv[index].startswith("-") else None
        if option == "incoming":
            index += 2
        elif option == "S":
            index += 1
        else:
            fresh.append(argv[index])
            index += 1
    return fresh


def restore_argv(argv: List[str], machine_type: str) -> List[str]:
    """The recorded argv with the machine type pinned, any -S and old -incoming removed, -incoming defer added."""
    old = fresh_argv(argv)
    pinned: List[str] = []
    index = 0
    while index < len(old):
        # A VM restored before already carries the pin; do not stack another.
        if old[index] in ("-machine", "--machine", "-M") and index + 1 < len(old) and old[index + 1] == machine_type:
            index += 2
        else:
            pinned.append(old[index])
            index += 1
    return pinned + ["-machine", machine_type, "-incoming", "defer"]


def stop_record(facts: VmFacts, cwd: str, agent_answered: bool, how: str) -> StopRecord:
    """What vm_power state=started needs to boot a VM again: its command line as it would start afresh."""
    return StopRecord(facts.name, fresh_argv(facts.argv), cwd, facts.qmp_socket, facts.qga_socket, agent_answered, how)


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


def systemd_run_command(unit: str, argv: List[str], cwd: str) -> List[str]:
    """QEMU as a transient service: systemd supervises it, and it outlives this process (--collect: no failed leftover)."""
    return ["systemd-run", f"--unit={unit}", "--collect", f"--working-directory={cwd}", "--", *argv]


def _systemd_run_available() -> bool:
    return systemd_runs_host() and shutil.which("systemd-run") is not None


@dataclass
class Launched:
    """A QEMU we started: the child we hold, or the systemd unit it runs in (its output is in that unit's journal)."""

    name: str
    qmp_socket: str
    child: Optional[subprocess.Popen] = None
    unit: Optional[str] = None


def start_qemu(name: str, argv: List[str], cwd: str, qmp_socket: str, state_dir: StateDir) -> Launched:
    """Start QEMU with this argv so that it outlives this process: a transient unit under systemd, else detached."""
    if _systemd_run_available():
        unit = transient_unit_name(name, time.time())
        run_starter(systemd_run_command(unit, argv, cwd), name)
        return Launched(name, qmp_socket, unit=unit)
    return Launched(name, qmp_socket, child=spawn_detached(name, argv, cwd, state_dir))


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


def spawn_detached(name: str, argv: List[str], cwd: str, state_dir: StateDir) -> subprocess.Popen:
    """QEMU in a session of its own, its output in the VM's log in the state directory."""
    try:
        with state_dir.open_log(name) as log:
            return subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
    except OSError as exc:
        raise CprError(f"the new QEMU cannot be started: {exc.strerror}: {exc.filename or argv[0]}", name,
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
