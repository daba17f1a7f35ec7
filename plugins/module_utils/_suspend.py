# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""qga_suspend: suspend guests to RAM through their guest agent, or wake them, concurrently.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, raise_failures
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions, VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, suspend_guest, wake_guest
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection, select_vms
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout

STATES = ("suspended", "awake")


@dataclass
class SuspendResult:
    name: str
    changed: bool
    runstate_before: str
    runstate: str
    seconds: float


def set_states(selection: Selection, state: str, timeout: float, check_mode: bool = False) -> List[Dict[str, Any]]:
    """Suspend or wake the selected guests concurrently; all are attempted, then the errors are raised together.

    The error names each VM that failed, and carries the others (vms) and one entry per failure (errors).
    """
    check_timeout(timeout)
    selected = select_vms(selection, FactsOptions(timeout=timeout, check_agent=False))

    async def set_all() -> List[Any]:
        return await asyncio.gather(*(_set_state(f, state, timeout, check_mode) for f in selected),
                                    return_exceptions=True)

    results = asyncio.run(set_all())
    done = [asdict(r) for r in results if isinstance(r, SuspendResult)]
    raise_failures([f.name for f in selected], results, {"changed": any(r["changed"] for r in done), "vms": done},
                   "Suspended" if state == "suspended" else "Awake",
                   "fix the cause and run again; guests already in the wanted state are left alone")
    return done


async def _set_state(facts: VmFacts, state: str, timeout: float, check_mode: bool) -> SuspendResult:
    """Bring one guest to ``suspended`` or ``awake``; unchanged when it is there already."""
    started = time.monotonic()
    if facts.problem or facts.qmp_socket is None:
        raise CprError(facts.problem or "it has no QMP socket", facts.name, hint="it is left as it is")
    async with open_qmp(facts.qmp_socket, vm=facts.name, timeout=timeout) as session:
        before = await runstate(session)
        target = "suspended" if state == "suspended" else "running"
        if before == target:
            return SuspendResult(facts.name, False, before, before, 0.0)
        expected_from = "running" if state == "suspended" else "suspended"
        if before != expected_from:
            raise CprError(f"the VM is {before}; only a {expected_from} guest can be made {state}", facts.name,
                           hint="resume it first (cont)" if before == "paused" else None)
        if check_mode:
            return SuspendResult(facts.name, True, before, target, 0.0)
        if state == "suspended":
            await suspend_guest(session, facts.qga_socket, timeout)
        else:
            await wake_guest(session, timeout)
        return SuspendResult(facts.name, True, before, await runstate(session), time.monotonic() - started)
