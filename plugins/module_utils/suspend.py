# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Suspend guests to RAM through their guest agent, and wake them again.

guest-suspend-ram never answers when it works: the guest goes to sleep
before the agent could reply. So the command is sent, and QMP is watched for
the ``suspended`` runstate; an error answer from the agent means the guest
refused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils.discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils.errors import (
    CommandFailedError,
    CprError,
    NotAnsweringError,
    NotReadyError,
    raise_failures,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.qmp import QmpSession, forget_request, open_agent, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils.vm import (
    S3_BLOCKED,
    compile_query,
    endpoints,
    gather_all,
    run_query,
    s3_blocked,
)

POLL_SECONDS = 0.02


@dataclass
class SuspendResult:
    name: str
    changed: bool
    runstate_before: str
    runstate: str
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


async def runstate(session: QmpSession) -> str:
    return (await session.execute("query-status"))["status"]


async def wait_runstate(session: QmpSession, wanted: str, timeout: float, what: str) -> str:
    """Poll until the VM reaches a runstate; the error says where it is stuck."""
    deadline = time.monotonic() + timeout
    state = await runstate(session)
    while state != wanted:
        if time.monotonic() > deadline:
            raise NotAnsweringError(
                f"{what}: the VM did not reach runstate {wanted} within {timeout:g} s and is left as it is ({state})",
                session.vm,
            )
        await asyncio.sleep(POLL_SECONDS)
        state = await runstate(session)
    return state


async def suspend_guest(session: QmpSession, endpoint: VmEndpoint, timeout: float) -> None:
    """Ask the guest agent to suspend to RAM and wait for the suspended runstate."""
    if not endpoint.qga_socket:
        raise CprError("the VM has no guest agent socket, so its guest cannot be suspended", endpoint.name,
                       hint="add a virtserialport named org.qemu.guest_agent.0 and run qemu-guest-agent in the guest")
    if await s3_blocked(session):
        # Asked anyway, the guest would come straight back and the wait below would time out.
        raise NotReadyError(S3_BLOCKED, endpoint.name, hint="it is left running")
    async with open_agent(endpoint.qga_socket, vm=endpoint.name, timeout=timeout) as agent:
        await agent.execute("guest-ping")
        request = asyncio.ensure_future(agent.client.execute("guest-suspend-ram"))
        try:
            deadline = time.monotonic() + timeout
            while await runstate(session) != "suspended":
                if request.done():
                    await _raise_refusal(request, endpoint.name)
                if time.monotonic() > deadline:
                    raise NotAnsweringError(
                        f"the guest did not reach the suspended runstate within {timeout:g} s after guest-suspend-ram; "
                        f"it is left as it is ({await runstate(session)})", endpoint.name,
                        hint="check that the guest supports suspend to RAM (S3 enabled in QEMU, pm-utils or "
                        "systemd in the guest) and raise the timeout if it is slow",
                    )
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await forget_request(request)


async def _raise_refusal(request: "asyncio.Future[Any]", vm: str) -> None:
    try:
        request.result()
    except CommandFailedError:
        raise
    except Exception as exc:  # qemu.qmp's ExecuteError carries the agent's words
        description = getattr(getattr(exc, "error", None), "desc", None) or str(exc) or type(exc).__name__
        raise CommandFailedError(f"the guest refused to suspend: {description}", vm,
                                 hint="the guest is left running") from None
    raise CommandFailedError("the guest agent answered guest-suspend-ram, but the guest did not suspend", vm)


async def wake_guest(session: QmpSession, timeout: float) -> None:
    await session.execute("system_wakeup")
    await wait_runstate(session, "running", timeout, "system_wakeup")


async def set_state(endpoint: VmEndpoint, state: str, timeout: float, check_mode: bool) -> SuspendResult:
    """Bring one guest to ``suspended`` or ``awake``; unchanged when it is there already."""
    started = time.monotonic()
    async with open_qmp(endpoint.qmp_socket, vm=endpoint.name, timeout=timeout) as session:
        before = await runstate(session)
        target = "suspended" if state == "suspended" else "running"
        if before == target:
            return SuspendResult(endpoint.name, False, before, before, 0.0)
        expected_from = "running" if state == "suspended" else "suspended"
        if before != expected_from:
            raise CprError(f"the VM is {before}; only a {expected_from} guest can be made {state}", endpoint.name,
                           hint="resume it first (cont)" if before == "paused" else None)
        if check_mode:
            return SuspendResult(endpoint.name, True, before, target, 0.0)
        if state == "suspended":
            await suspend_guest(session, endpoint, timeout)
        else:
            await wake_guest(session, timeout)
        return SuspendResult(endpoint.name, True, before, await runstate(session), time.monotonic() - started)


def select_and_set_states(vms: Optional[List[Dict[str, Any]]], names: Optional[List[str]], query: Optional[str],
                          state: str, timeout: float, check_mode: bool = False) -> List[Dict[str, Any]]:
    """What the qga_suspend module does: select VMs, then suspend or wake them."""
    expression = compile_query(query)
    selected = endpoints(vms, names)
    if expression is not None:
        facts = asyncio.run(gather_all(selected, timeout=timeout, check_agent=False))
        chosen = {vm["name"] for vm in run_query(expression, query or "", [f.to_dict() for f in facts])}
        selected = [e for e in selected if e.name in chosen]
    return set_states(selected, state, timeout, check_mode)


def set_states(selected: List[VmEndpoint], state: str, timeout: float, check_mode: bool = False) -> List[Dict[str, Any]]:
    """Suspend or wake many guests concurrently; all are attempted, then the errors are raised together.

    The error names each VM that failed, and carries the others (vms) and one entry per failure (errors).
    """

    async def run_all() -> List[Any]:
        return await asyncio.gather(*(set_state(e, state, timeout, check_mode) for e in selected),
                                    return_exceptions=True)

    results = asyncio.run(run_all())
    done = [r.to_dict() for r in results if isinstance(r, SuspendResult)]
    raise_failures([e.name for e in selected], results, {"changed": any(r["changed"] for r in done), "vms": done},
                   "Suspended" if state == "suspended" else "Awake",
                   "fix the cause and run again; guests already in the wanted state are left alone")
    return done
