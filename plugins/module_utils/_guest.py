# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""What the engine asks of a guest: its runstate, a suspend to RAM, a wake-up, an answer from its agent.

guest-suspend-ram never answers when it works: the guest goes to sleep
before the agent could reply. So the command is sent, and QMP is watched for
the ``suspended`` runstate; an error answer from the agent means the guest
refused.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    CprError,
    NotAnsweringError,
    NotReadyError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import S3_BLOCKED, s3_blocked
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import QmpSession, forget_request, open_agent
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll

# One try to reach the agent waits this long at most; the caller's timeout bounds the whole wait.
AGENT_TRY_SECONDS = 5.0


async def runstate(session: QmpSession) -> str:
    return (await session.execute("query-status"))["status"]


async def wait_runstate(session: QmpSession, wanted: str, timeout: float, what: str) -> str:
    """Wait until the VM reaches a runstate; the error says where it is stuck."""
    seen = [await runstate(session)]

    async def reached() -> Optional[str]:
        seen[0] = await runstate(session)
        return seen[0] if seen[0] == wanted else None

    if seen[0] == wanted:
        return wanted
    return await poll(reached, timeout, lambda: NotAnsweringError(
        f"{what}: the VM did not reach runstate {wanted} within {timeout:g} s and is left as it is ({seen[0]})",
        session.vm))


async def suspend_guest(session: QmpSession, qga_socket: Optional[str], timeout: float) -> None:
    """Ask the guest agent to suspend to RAM and wait for the suspended runstate."""
    name = session.vm
    if not qga_socket:
        raise CprError("the VM has no guest agent socket, so its guest cannot be suspended", name,
                       hint="add a virtserialport named org.qemu.guest_agent.0 and run qemu-guest-agent in the guest")
    if await s3_blocked(session):
        # Asked anyway, the guest would come straight back and the wait below would time out.
        raise NotReadyError(S3_BLOCKED, name, hint="it is left running")
    async with open_agent(qga_socket, vm=name, timeout=timeout) as agent:
        await agent.execute("guest-ping")
        request = asyncio.ensure_future(agent.client.execute("guest-suspend-ram"))
        seen = ["running"]

        async def suspended() -> Optional[bool]:
            seen[0] = await runstate(session)
            if seen[0] == "suspended":
                return True
            if request.done():
                await _raise_refusal(request, name)
            return None

        try:
            await poll(suspended, timeout, lambda: NotAnsweringError(
                f"the guest did not reach the suspended runstate within {timeout:g} s after guest-suspend-ram; "
                f"it is left as it is ({seen[0]})", name,
                hint="check that the guest supports suspend to RAM (S3 enabled in QEMU, pm-utils or "
                "systemd in the guest) and raise the timeout if it is slow"))
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


async def wait_agent(name: str, qga_socket: str, timeout: float) -> None:
    """Wait until the guest agent answers, as it did before."""
    failure: List[CprError] = []

    async def answers() -> Optional[bool]:
        try:
            async with open_agent(qga_socket, vm=name, timeout=min(AGENT_TRY_SECONDS, timeout)) as agent:
                await agent.execute("guest-ping")
            return True
        except CprError as exc:
            failure[:] = [exc]
            return None

    await poll(answers, timeout, lambda: failure[0])
