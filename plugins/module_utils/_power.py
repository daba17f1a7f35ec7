# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""vm_power: shut guests down cleanly and start them again, for VMs cpr-reboot cannot save.

Before a guest is asked to power off, a stop record in the state directory
records how its QEMU was started (argv, working directory, sockets), so the VM
can be started again after the reboot, by this run or by a later one. The
record is removed once the VM runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import stays_after_power_off
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    CprError,
    NotAnsweringError,
    NotReadyError,
    raise_failures,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions, VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import wait_agent
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import StopRecord, check_name
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import (
    Command,
    Launched,
    alive,
    quit_qemu,
    start_qemu,
    stop_record,
    wait_for_qmp,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import (
    CONNECT_TIMEOUT,
    QmpSession,
    forget_request,
    open_agent,
    open_qmp,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection, running, select_endpoints, select_held, select_vms, some_names
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout, poll

if TYPE_CHECKING:
    from qemu.qmp import EventListener

# How a guest is asked to power off: through its agent when it answers, else the ACPI power button.
HOW_AGENT = "guest-shutdown"
HOW_ACPI = "system_powerdown"
_REQUEST_HANDLER = {HOW_AGENT: "its agent's guest-shutdown", HOW_ACPI: "the ACPI power button (acpid or systemd)"}
STATES = ("stopped", "started")


@dataclass
class PowerResult:
    name: str
    changed: bool
    how: Optional[str]
    seconds: float
    pid: Optional[int] = None


# --------------------------------------------------------------------------- stop


def stop(selection: Selection, state_dir_path: str, timeout: float = 300.0, check_mode: bool = False,
         run_id: Optional[str] = None) -> Dict[str, Any]:
    """Shut the selected guests down cleanly, recording how to start each again."""
    check_timeout(timeout)
    with StateDir.open(state_dir_path) as state_dir:
        if check_mode:
            return _planned(*_to_stop(state_dir, selection))
        if not state_dir.exists:
            # Nothing shut down yet: a selection that names no VM is refused before the directory is made.
            if not select_endpoints(running(selection), selection.names):
                return _planned([], [])
            state_dir.create()
        with state_dir.lock():
            check_run(state_dir, run_id)
            unchanged, facts = _to_stop(state_dir, selection)
            if not facts:
                return _planned(unchanged, facts)

            async def stop_all() -> List[Any]:
                return list(await asyncio.gather(*(_stop_one(f, state_dir, timeout) for f in facts),
                                                 return_exceptions=True))

            results = asyncio.run(stop_all())
    return _report(unchanged, results, [f.name for f in facts], "shut down")


def _to_stop(state_dir: StateDir, selection: Selection) -> Tuple[List[PowerResult], List[VmFacts]]:
    """(the VMs an earlier call shut down and nobody started since, the facts of those to shut down now)."""
    records = {r.name: r for r in state_dir.stop_records()}
    running_names = {e.name for e in running(selection)}
    already = [n for n in (selection.names or []) if n in records and n not in running_names]
    facts = select_vms(selection, FactsOptions(CONNECT_TIMEOUT, reboot="none"), held=already)
    problems = [problem for problem in map(_why_not_stoppable, facts) if problem]
    if problems:
        raise NotReadyError("; ".join(problems), hint="nothing was shut down")
    return [PowerResult(n, False, records[n].how, 0.0) for n in already], facts


def _planned(unchanged: List[PowerResult], facts: List[VmFacts]) -> Dict[str, Any]:
    return {"changed": bool(facts), "vms": [asdict(r) for r in unchanged], "would_change": [f.name for f in facts]}


def _why_not_stoppable(facts: VmFacts) -> Optional[str]:
    if facts.problem:
        return f"VM {facts.name}: {facts.problem}"
    if facts.error:
        return facts.error
    check_name(facts.name)
    if not facts.argv:
        return f"VM {facts.name}: its QEMU command line cannot be read from /proc, so it could not be started again"
    if facts.runstate != "running":
        return (f"VM {facts.name} is {facts.runstate}: only a running guest can shut down cleanly "
                "(resume or wake it first, or leave it out)")
    return None


async def _stop_one(facts: VmFacts, state_dir: StateDir, timeout: float) -> PowerResult:
    name = facts.name
    started = time.monotonic()
    how = HOW_AGENT if facts.agent.answering and facts.qga_socket else HOW_ACPI
    # Written first: a run that dies while the guest powers off still knows how to start it.
    state_dir.write_stopped(stop_record(facts, bool(facts.agent.answering), how))
    powered_off: "Optional[EventListener]" = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(open_qmp(facts.qmp_socket, vm=name, timeout=CONNECT_TIMEOUT))
            # Listened for before the guest is asked, so the event cannot come first.
            powered_off = session.listen("SHUTDOWN")
            request = None
            if how == HOW_AGENT and facts.qga_socket:
                agent = await stack.enter_async_context(open_agent(facts.qga_socket, vm=name, timeout=CONNECT_TIMEOUT))
                # No answer when it works: the guest is gone before the agent could send one.
                request = asyncio.ensure_future(agent.client.execute("guest-shutdown", {"mode": "powerdown"}))
                stack.push_async_callback(forget_request, request)
            else:
                await session.execute("system_powerdown")
            await _wait_power_off(session, session.pid or facts.pid, powered_off, stays_after_power_off(facts.argv),
                                  request, how, timeout)
    except BaseException:
        # The guest still runs: a record would have a later start launch a second QEMU beside it. A guest that
        # powered off keeps its record even when its QEMU does not exit: the record is how it starts again.
        guest_down = powered_off is not None and not powered_off.empty()
        if facts.pid and os.path.exists(f"/proc/{facts.pid}") and not guest_down:
            state_dir.remove_stopped(name)
        raise
    return PowerResult(name, True, how, time.monotonic() - started)


async def _wait_power_off(session: QmpSession, pid: Optional[int], powered_off: "EventListener", stays: bool,
                          request: "Optional[asyncio.Future[Any]]", how: str, timeout: float) -> None:
    """Wait until QEMU has exited; one that stays once its guest powered off (-no-shutdown) is told to quit.

    No command goes to a QEMU that may be exiting: QEMU 10.0 can hang for good in its exit when a QMP command
    arrives then (in monitor_cleanup). The guest's power-off is seen in QEMU's SHUTDOWN event instead.
    """
    name = session.vm

    async def off() -> Optional[bool]:
        if not pid or not alive(pid):
            return True
        if request is not None and request.done():
            _raise_if_refused(request, name)
        if not stays or powered_off.empty():
            return None
        await quit_qemu(session, pid, timeout)
        return True

    def late() -> CprError:
        if powered_off.empty():
            return NotAnsweringError(
                f"the guest did not power off within {timeout:g} s after {how}; it is left running", name,
                hint=f"check that the guest handles {_REQUEST_HANDLER[how]}, raise the timeout, or stop it yourself")
        return NotAnsweringError(
            f"the guest powered off, but its QEMU (pid {pid}) did not exit within {timeout:g} s", name,
            hint="QEMU hangs in its exit or was told to stay (set-action): end it yourself, then state=started "
                 "starts the VM again from its record")

    await poll(off, timeout, late)


def _raise_if_refused(request: "asyncio.Future[Any]", name: str) -> None:
    """An error answer carries the agent's words; a lost connection means the guest went down."""
    failure = None if request.cancelled() else request.exception()
    # qemu.qmp's ExecuteError (an answer with an error class) says it in the agent's words.
    if failure is not None and hasattr(failure, "error_class"):
        raise CommandFailedError(f"the guest agent refused guest-shutdown: {failure}", name,
                                 hint="the guest is left running")


def _report(unchanged: List[PowerResult], results: List[Any], planned: List[str], what: str) -> Dict[str, Any]:
    done = [asdict(r) for r in unchanged + [r for r in results if isinstance(r, PowerResult)]]
    detail = {"changed": any(r["changed"] for r in done), "vms": done, "would_change": planned}
    raise_failures(planned, results, detail, "Done",
                   f"the VMs that were not {what} are named above; fix the cause and run again")
    return detail


# --------------------------------------------------------------------------- start


def start(state_dir_path: str, names: Optional[List[str]] = None, timeout: float = 300.0,
          wait_for_agent: bool = True, check_mode: bool = False, run_id: Optional[str] = None) -> Dict[str, Any]:
    """Start again every VM recorded as shut down (or the named ones)."""
    check_timeout(timeout)
    with StateDir.open(state_dir_path) as state_dir:
        if check_mode or not state_dir.exists:
            records, running = _to_start(state_dir, names)
            planned = [r.name for r in records if r.name not in running]
            detail = {"changed": bool(planned), "vms": [], "would_change": planned}
            # A QEMU of a recorded name is refused by a real run if its guest is powered off: say so here too.
            there = [r.name for r in records if r.name in running]

            async def check_all() -> List[Any]:
                return list(await asyncio.gather(*(_check_existing(running[name], timeout) for name in there),
                                                 return_exceptions=True))

            raise_failures(there, asyncio.run(check_all()) if there else [], detail, "Would start",
                           "the VMs that would not be started are named above; fix the cause and run again")
            return detail
        with state_dir.lock():
            check_run(state_dir, run_id)
            records, running = _to_start(state_dir, names)

            async def start_all() -> List[Any]:
                return list(await asyncio.gather(*(_start_one(r, state_dir, timeout, wait_for_agent,
                                                              running.get(r.name)) for r in records),
                                                 return_exceptions=True))

            results = asyncio.run(start_all()) if records else []
    return _report([], results, [r.name for r in records], "started")


async def _check_existing(existing: VmEndpoint, timeout: float) -> None:
    async with open_qmp(existing.qmp_socket, vm=existing.name, timeout=min(timeout, CONNECT_TIMEOUT)) as session:
        await _refuse_powered_off(session, existing.name)


async def _refuse_powered_off(session: QmpSession, name: str) -> None:
    """A QEMU of a recorded name whose guest powered off (hung in its exit, or told to stay) is not the VM started."""
    if (await session.execute("query-status")).get("status") == "shutdown":
        raise NotReadyError(f"its QEMU (pid {session.pid}) is still there, with the guest powered off", name,
                            hint="end that QEMU, then run again: the VM starts from its record, which is kept")


def _to_start(state_dir: StateDir, names: Optional[List[str]]) -> Tuple[List[StopRecord], Dict[str, VmEndpoint]]:
    return select_held(state_dir.stop_records(), names, lambda unknown: CprError(
        f"no record in {state_dir.path} of a shut-down VM, and no running VM, for {some_names(unknown)}",
        hint="check the names and state_dir"))


async def _start_one(record: StopRecord, state_dir: StateDir, timeout: float, wait_for_agent: bool,
                     existing: Optional[VmEndpoint]) -> PowerResult:
    started = time.monotonic()
    # Started by an earlier call that stopped before removing the record: it only needs its record removed.
    launched = (Launched(record.name, record.qmp_socket) if existing else
                start_qemu(record.name, Command.recorded(record.argv, record.cwd, record.credentials),
                           record.qmp_socket, state_dir))
    async with contextlib.AsyncExitStack() as stack:
        session = await wait_for_qmp(launched, state_dir, timeout, stack)
        pid = session.pid
        if existing:
            await _refuse_powered_off(session, record.name)
    if wait_for_agent and record.agent_answered and record.qga_socket:
        # The guest boots from scratch: its agent answers once it is up.
        await wait_agent(record.name, record.qga_socket, timeout)
    state_dir.remove_stopped(record.name)
    return PowerResult(record.name, existing is None, record.how, time.monotonic() - started, pid)
