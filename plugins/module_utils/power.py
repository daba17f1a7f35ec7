# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shut guests down cleanly and start them again, for VMs cpr-reboot cannot save.

Before a guest is asked to power off, ``<state_dir>/<vm>.stopped`` records
how its QEMU was started (argv, working directory, sockets), so the VM can be
started again after the reboot, by this run or by a later one. The record is
removed once the VM runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils.cpr import (
    CONNECT_TIMEOUT,
    POLL_SECONDS,
    process_cwd,
    quit_qemu,
    record_stopped,
    start_qemu,
    wait_agent,
    wait_exit,
    wait_for_qmp,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.discover import (
    VmEndpoint,
    check_unique_names,
    discover,
    explicit_endpoints,
    select_by_name,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.errors import (
    CommandFailedError,
    CprError,
    NotAnsweringError,
    NotReadyError,
    raise_failures,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.manifest import (
    StopRecord,
    check_name,
    ensure_state_dir,
    fsync_dir,
    host_lock,
    list_stopped,
    stopped_path,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.qmp import forget_request, open_agent, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils.vm import VmFacts, compile_query, gather_all, run_query

# How a guest is asked to power off: through its agent when it answers, else the ACPI power button.
HOW_AGENT = "guest-shutdown"
HOW_ACPI = "system_powerdown"
_REQUEST_HANDLER = {HOW_AGENT: "its agent's guest-shutdown", HOW_ACPI: "the ACPI power button (acpid or systemd)"}


@dataclass
class PowerResult:
    name: str
    changed: bool
    how: Optional[str]
    seconds: float
    pid: Optional[int] = None


# --------------------------------------------------------------------------- stop


def stop(vms: Optional[List[Dict[str, Any]]] = None, names: Optional[List[str]] = None, query: Optional[str] = None,
         state_dir: str = "/var/lib/qemu-cpr", timeout: float = 300.0, check_mode: bool = False) -> Dict[str, Any]:
    """Shut the selected guests down cleanly, recording how to start each again."""
    expression = compile_query(query)
    if not check_mode or os.path.lexists(state_dir):
        ensure_state_dir(state_dir, create=not check_mode)
    records = {r.name: r for r in list_stopped(state_dir)}
    found = explicit_endpoints(vms) if vms else discover()
    running = {e.name for e in found}
    wanted = names or sorted(running)
    # Shut down by an earlier call and not started since: nothing to do.
    already = [n for n in wanted if n in records and n not in running]
    to_stop = [n for n in wanted if n not in already]
    check_unique_names([e for e in found if e.name in to_stop])
    selected = select_by_name(found, to_stop) if to_stop else []
    facts = asyncio.run(gather_all(selected, timeout=CONNECT_TIMEOUT, reboot="none"))
    if expression is not None:
        chosen = {vm["name"] for vm in run_query(expression, query or "", [f.to_dict() for f in facts])}
        facts = [f for f in facts if f.name in chosen]
    problems = [problem for problem in map(_why_not_stoppable, facts) if problem]
    if problems:
        raise NotReadyError("; ".join(problems), hint="nothing was shut down")
    unchanged = [PowerResult(n, False, records[n].how, 0.0) for n in already]
    if check_mode or not facts:
        return {"changed": bool(facts), "vms": [asdict(r) for r in unchanged], "would_change": [f.name for f in facts]}
    with host_lock(state_dir):
        results = asyncio.run(_stop_all(facts, state_dir, timeout))
    return _report(unchanged, results, [f.name for f in facts], "shut down")


def _why_not_stoppable(facts: VmFacts) -> Optional[str]:
    if facts.error:
        return facts.error
    check_name(facts.name)
    if not facts.argv:
        return f"VM {facts.name}: its QEMU command line cannot be read from /proc, so it could not be started again"
    if facts.runstate != "running":
        return (f"VM {facts.name} is {facts.runstate}: only a running guest can shut down cleanly "
                "(resume or wake it first, or leave it out)")
    return None


async def _stop_all(facts: List[VmFacts], state_dir: str, timeout: float) -> List[Any]:
    return list(await asyncio.gather(*(_stop_one(f, state_dir, timeout) for f in facts), return_exceptions=True))


async def _stop_one(facts: VmFacts, state_dir: str, timeout: float) -> PowerResult:
    name = facts.name
    started = time.monotonic()
    how = HOW_AGENT if facts.agent.answering and facts.qga_socket else HOW_ACPI
    # Written first: a run that dies while the guest powers off still knows how to start it.
    record_stopped(state_dir, facts, process_cwd(facts.pid), bool(facts.agent.answering), how)
    try:
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(open_qmp(facts.qmp_socket, vm=name, timeout=CONNECT_TIMEOUT))
            pid = session.pid or facts.pid
            request = None
            if how == HOW_AGENT and facts.qga_socket:
                agent = await stack.enter_async_context(open_agent(facts.qga_socket, vm=name, timeout=CONNECT_TIMEOUT))
                # No answer when it works: the guest is gone before the agent could send one.
                request = asyncio.ensure_future(agent.client.execute("guest-shutdown", {"mode": "powerdown"}))
                stack.push_async_callback(forget_request, request)
            else:
                await session.execute("system_powerdown")
            deadline = time.monotonic() + timeout
            # QEMU exits when the guest powers off, unless started with -no-shutdown: then it waits in "shutdown".
            while pid and not await wait_exit(pid, POLL_SECONDS * 10):
                if request is not None and request.done():
                    _raise_if_refused(request, name)
                if await _runstate_or_none(session) == "shutdown":
                    await quit_qemu(session, pid, timeout)
                    break
                if time.monotonic() > deadline:
                    raise NotAnsweringError(
                        f"the guest did not power off within {timeout:g} s after {how}; it is left running", name,
                        hint=f"check that the guest handles {_REQUEST_HANDLER[how]}, raise the timeout, or stop it "
                        "yourself")
    except BaseException:
        # The guest still runs: a record would have a later start launch a second QEMU beside it.
        if facts.pid and os.path.exists(f"/proc/{facts.pid}"):
            _remove(state_dir, name)
        raise
    return PowerResult(name, True, how, time.monotonic() - started)


def _raise_if_refused(request: "asyncio.Future[Any]", name: str) -> None:
    """An error answer carries the agent's words; a lost connection means the guest went down."""
    failure = None if request.cancelled() else request.exception()
    # qemu.qmp's ExecuteError (an answer with an error class) says it in the agent's words.
    if failure is not None and hasattr(failure, "error_class"):
        raise CommandFailedError(f"the guest agent refused guest-shutdown: {failure}", name,
                                 hint="the guest is left running")


async def _runstate_or_none(session: Any) -> Optional[str]:
    try:
        return (await session.execute("query-status")).get("status")
    except CprError:
        return None


def _remove(state_dir: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stopped_path(state_dir, name))
    fsync_dir(state_dir)


def _report(unchanged: List[PowerResult], results: List[Any], planned: List[str], what: str) -> Dict[str, Any]:
    done = [asdict(r) for r in unchanged + [r for r in results if isinstance(r, PowerResult)]]
    detail = {"changed": any(r["changed"] for r in done), "vms": done, "would_change": planned}
    raise_failures(planned, results, detail, "Done",
                   f"the VMs that were not {what} are named above; fix the cause and run again")
    return detail


# --------------------------------------------------------------------------- start


def start(state_dir: str = "/var/lib/qemu-cpr", names: Optional[List[str]] = None, timeout: float = 300.0,
          wait_for_agent: bool = True, check_mode: bool = False) -> Dict[str, Any]:
    """Start again every VM recorded as shut down (or the named ones)."""
    if os.path.lexists(state_dir):
        ensure_state_dir(state_dir, create=False)
    records = list_stopped(state_dir)
    running = {e.name: e for e in discover()}
    if names:
        unknown = [n for n in names if n not in {r.name for r in records} and n not in running]
        if unknown:
            raise CprError(f"no record in {state_dir} of a shut-down VM, and no running VM, for {', '.join(unknown)}",
                           hint="check the names and state_dir")
        records = [r for r in records if r.name in names]
    planned = [r.name for r in records if r.name not in running]
    if check_mode or not records:
        return {"changed": bool(planned), "vms": [], "would_change": planned}
    with host_lock(state_dir):
        results = asyncio.run(_start_all(records, state_dir, timeout, wait_for_agent, running))
    return _report([], results, [r.name for r in records], "started")


async def _start_all(records: List[StopRecord], state_dir: str, timeout: float, wait_for_agent: bool,
                     running: Dict[str, VmEndpoint]) -> List[Any]:
    return list(await asyncio.gather(*(_start_one(r, state_dir, timeout, wait_for_agent, running) for r in records),
                                     return_exceptions=True))


async def _start_one(record: StopRecord, state_dir: str, timeout: float, wait_for_agent: bool,
                     running: Dict[str, VmEndpoint]) -> PowerResult:
    started = time.monotonic()
    existing = running.get(record.name)
    # Started by an earlier call that stopped before removing the record: it only needs its record removed.
    child = None if existing else start_qemu(record.name, record.argv, record.cwd, state_dir)
    async with contextlib.AsyncExitStack() as stack:
        session = await wait_for_qmp(record.name, record.qmp_socket, child, state_dir, timeout, stack)
        pid = session.pid
    if wait_for_agent and record.agent_answered and record.qga_socket:
        # The guest boots from scratch: its agent answers once it is up.
        await wait_agent(record.name, record.qga_socket, timeout)
    _remove(state_dir, record.name)
    return PowerResult(record.name, existing is None, record.how, time.monotonic() - started, pid)
