# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""A saved VM back in a new QEMU: started from its manifest, its state loaded, in its old runstate again.

A restore does this for every manifest; a save that must be undone for a VM
it already stopped (paused or suspended ones cannot be resumed from
``postmigrate``) does it for that VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, wait_agent, wait_runstate, wake_guest
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest
from ansible_collections.hypervisor.cpr.plugins.module_utils._migration import load
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import (
    Launched,
    restore_argv,
    start_qemu,
    start_unit,
    systemd_unit_name,
    wait_exit,
    wait_for_qmp,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir

LAUNCH_MODES = ("argv", "systemd")


@dataclass(frozen=True)
class Launcher:
    """How a new QEMU is started (cpr_restore's launch and systemd_unit options)."""

    mode: str = "argv"
    unit: str = "qemu@{name}.service"

    def start(self, manifest: Manifest, state_dir: StateDir) -> Launched:
        if self.mode == "systemd":
            # The operator's unit runs the recorded command line with -incoming defer itself (see cpr_restore's docs).
            return start_unit(manifest.name, systemd_unit_name(self.unit, manifest.name), manifest.qmp_socket)
        return start_qemu(manifest.name, restore_argv(manifest.argv, manifest.machine_type), manifest.cwd,
                          manifest.qmp_socket, state_dir)


async def bring_back(manifest: Manifest, state_dir: StateDir, launcher: Launcher, timeout: float,
                     waiting: bool = False) -> Tuple[Optional[int], float]:
    """Load a saved VM into a new QEMU and bring it back to its old runstate; return (pid, back at).

    waiting: a QEMU an interrupted run started already waits for the state (inmigrate); none is started.
    A guest the save suspended is woken. back at (seconds since the epoch) ends the VM's downtime.
    """
    name = manifest.name
    launched = Launched(name, manifest.qmp_socket) if waiting else await asyncio.to_thread(
        launcher.start, manifest, state_dir)
    async with contextlib.AsyncExitStack() as stack:
        session = await wait_for_qmp(launched, state_dir, timeout, stack)
        pid = session.pid
        try:
            await load(session, (manifest.capabilities, manifest.parameters), manifest.state_file, timeout)
        except CprError as exc:
            with contextlib.suppress(CprError):
                await session.execute("quit")
            child = launched.child
            if child is not None and await wait_exit(child.pid, 1.0) and child.poll() not in (None, 0):
                # QEMU exits on a state it cannot load; its own words say why.
                raise CprError(f"the new QEMU exited while loading the state (status {child.returncode}): "
                               f"{state_dir.log_tail(name)}", name, hint="the state file and manifest are kept; "
                               "fix the cause and run cpr_restore again") from exc
            raise
        if await runstate(session) != manifest.runstate_before:
            await wait_runstate(session, manifest.runstate_before, timeout, "the restore")
        if manifest.suspended_by_us:
            await wake_guest(session, timeout)
    return pid, time.time()


async def settle(manifest: Manifest, timeout: float) -> None:
    """Wait for the guest agent of a VM back in its runstate, where it answered before the save."""
    if manifest.agent_answered and manifest.runstate_after == "running" and manifest.qga_socket:
        await wait_agent(manifest.name, manifest.qga_socket, timeout)
