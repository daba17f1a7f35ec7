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
from typing import Any, Callable, Dict, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, wait_agent, wait_runstate, wake_guest
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import (
    boot_id,
    describe_process,
    is_running,
    process_identity,
    unit_of,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest
from ansible_collections.hypervisor.cpr.plugins.module_utils._migration import load
from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import restore_argv
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import (
    Command,
    Launched,
    quit_qemu,
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
        command = Command.recorded(restore_argv(manifest.argv, manifest.machine_type), manifest.cwd,
                                   manifest.credentials)
        return start_qemu(manifest.name, command, manifest.qmp_socket, state_dir)


async def bring_back(manifest: Manifest, state_dir: StateDir, launcher: Launcher, timeout: float,
                     waiting: bool = False, check: Optional[Callable[[], None]] = None) -> Tuple[Optional[int], float]:
    """Load a saved VM into a new QEMU and bring it back to its old runstate; return (pid, back at).

    waiting: a QEMU an interrupted run started already waits for the state (inmigrate); none is started.
    check: the state file's checksum (StateDir.verify_state), run in a thread while QEMU loads the file with the
    guest held stopped: the guest runs only once the file passed it. A QEMU that loaded a damaged file is quit
    (the files are kept) and the check's error raised.
    A guest the save suspended is woken. back at (seconds since the epoch) ends the VM's downtime.
    """
    name = manifest.name
    launched = Launched(name, manifest.qmp_socket) if waiting else await asyncio.to_thread(
        launcher.start, manifest, state_dir)
    if not waiting:
        # Recorded before the wait: whatever else starts a QEMU of this name is not taken for this one.
        state_dir.write_restoring(name, _launch_record(launched))
    async with contextlib.AsyncExitStack() as stack:
        session = await wait_for_qmp(launched, state_dir, timeout, stack)
        pid = session.pid
        if not waiting and pid and (launched.child is None or launched.child.pid != pid):
            # Started by systemd: the QEMU that answers is the one in the unit we started.
            state_dir.write_restoring(name, dict(_launch_record(launched), **process_identity(pid)))
        checked = None
        if check is not None:
            # In inmigrate, stop is -S: once loaded, QEMU keeps the guest stopped until cont.
            await session.execute("stop")
            checked = asyncio.ensure_future(asyncio.to_thread(check))
        try:
            await load(session, (manifest.capabilities, manifest.parameters),
                       state_dir.open_state(name, write=False), timeout)
        except CprError as exc:
            with contextlib.suppress(CprError):
                await session.execute("quit")
            if checked is not None:
                # A damaged file is reported as such, not as what QEMU made of it.
                await checked
            child = launched.child
            if child is not None and await wait_exit(child.pid, 1.0) and child.poll() not in (None, 0):
                # QEMU exits on a state it cannot load; its own words say why.
                raise CprError(f"the new QEMU exited while loading the state (status {child.returncode}): "
                               f"{state_dir.log_tail(name)}", name, hint="the state file and manifest are kept; "
                               "fix the cause and run cpr_restore again") from exc
            raise
        if checked is not None:
            try:
                await checked
            except CprError:
                await quit_qemu(session, pid, timeout)
                raise
            if manifest.runstate_before != "paused":
                # Held, QEMU 10 leaves a running or suspended guest paused; cont gives it its old runstate (a
                # suspended guest stays suspended until woken below). A paused guest stays paused.
                await session.execute("cont")
        if await runstate(session) != manifest.runstate_before:
            await wait_runstate(session, manifest.runstate_before, timeout, "the restore")
        if manifest.suspended_by_us:
            await wake_guest(session, timeout)
    back_at = time.time()
    # From here the guest runs and writes its disks (and RAM kept in place): the saved state is history.
    state_dir.write_restoring(name, dict(state_dir.read_restoring(name) or {}, back_at=back_at))
    return pid, back_at


async def settle(manifest: Manifest, timeout: float) -> None:
    """Wait for the guest agent of a VM back in its runstate, where it answered before the save."""
    if manifest.agent_answered and manifest.runstate_after == "running" and manifest.qga_socket:
        await wait_agent(manifest.name, manifest.qga_socket, timeout)


def _launch_record(launched: Launched) -> Dict[str, Any]:
    process = process_identity(launched.child.pid) if launched.child is not None else {"boot_id": boot_id()}
    return dict(process, unit=launched.unit)


def is_saved_qemu(manifest: Manifest, endpoint: VmEndpoint) -> bool:
    """Whether a running QEMU of the VM's name is the very one that was saved (an earlier run did not quit it)."""
    return bool(endpoint.pid) and is_running(manifest.qemu_process) and manifest.qemu_process["pid"] == endpoint.pid


def started_by_restore(state_dir: StateDir, name: str, endpoint: VmEndpoint) -> bool:
    """Whether a running QEMU of the VM's name is the one a restore started for it (by pid, or by its unit)."""
    record = state_dir.read_restoring(name)
    if not record or not endpoint.pid:
        return False
    if record.get("pid") == endpoint.pid and is_running(record):
        return True
    return bool(record.get("unit")) and record.get("boot_id") == boot_id() and unit_of(endpoint.pid) == record["unit"]


def check_not_back_before(state_dir: StateDir, manifest: Manifest) -> None:
    """Refuse to restore a VM a restore already brought back, whose QEMU has ended since: it ran after the save.

    Its disks, and RAM kept in place, moved on while it ran; its saved state would take the guest back in time
    under them. The boot restore leaves the manifests for cpr_restore, so a second reboot before cpr_restore ran
    finds them so.
    """
    record = state_dir.read_restoring(manifest.name)
    if not record or not record.get("back_at") or is_running(record):
        return
    by = "the boot restore" if record.get("at_boot") else "a restore"
    raise CprError(
        f"{by} brought it back at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['back_at']))} "
        f"(QEMU pid {record.get('pid', 'unknown')}, boot {record.get('boot_id', 'unknown')}), and that QEMU has ended "
        "since (a reboot, a crash, or a shutdown) before cpr_restore finished", manifest.name,
        hint="the guest ran after the restore, so its saved state is older than its disks: it is not restored again. "
        "Start the VM afresh its usual way, then remove its manifest and state file")


def not_ours(manifest: Manifest, endpoint: VmEndpoint) -> CprError:
    """The error for a QEMU of a saved VM's name that neither was saved nor was started by a restore."""
    return CprError(
        f"a QEMU of this name runs that no restore started ({describe_process(endpoint.pid or 0)}): something "
        "started the VM cold from its command line (a unit enabled at boot, a hypervisor manager, or by hand), so it is "
        "not the saved VM", manifest.name,
        hint="its saved state and manifest are kept. " + (
            "Its RAM was kept in place, which that cold boot has written over: the saved state cannot be restored "
            "any more; keep the running VM and remove the manifest and state file, or stop it and restore from a copy"
            if manifest.ram_in_place else
            "Stop that QEMU and what starts it (disable its unit or the manager's autostart), then run cpr_restore "
            "again; or keep it and remove the manifest and state file"))
