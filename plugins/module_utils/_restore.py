# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""cpr_restore: every saved VM (or the named ones) back, concurrently, each exactly where it stopped.

Per manifest: verify the state file's size and checksum, start a new QEMU from
the recorded argv with the machine type pinned and ``-incoming defer``, load
the state, wake guests the save suspended, check the guest agent, and only
then remove the state file and manifest (or, with keep_state, rename them to
``*.restored``). A VM an interrupted run already brought back is checked and
cleaned up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, ManifestError, raise_failures
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, wake_guest
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import (
    Launcher,
    bring_back,
    is_saved_qemu,
    not_ours,
    settle,
    started_by_restore,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import CONNECT_TIMEOUT, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import select_held, some_names
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._units import release
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout


@dataclass(frozen=True)
class RestoreOptions:
    timeout: float = 300.0
    keep_state: bool = False
    verify_checksum: bool = True
    launcher: Launcher = field(default_factory=Launcher)


@dataclass
class RestoreResult:
    name: str
    changed: bool
    pid: Optional[int]
    runstate: str
    restore_seconds: float
    downtime_seconds: float
    state_kept: bool
    # From the save, as its manifest recorded it.
    runstate_before: str
    suspended_by_us: bool
    paused_at: float
    save_seconds: float
    state_bytes: int
    ram_in_place: bool
    # When the VM was back in its old runstate (seconds since the epoch).
    back_at: float


def restore(state_dir_path: str, names: Optional[List[str]] = None, options: RestoreOptions = RestoreOptions(),
            check_mode: bool = False, run_id: Optional[str] = None) -> Dict[str, Any]:
    """Restore every saved VM (or the named ones); return what the cpr_restore module reports."""
    check_timeout(options.timeout)
    with StateDir.open(state_dir_path) as state_dir:
        if check_mode or not state_dir.exists:
            manifests, running = _select(state_dir, names)
            if check_mode and options.verify_checksum:
                for manifest in manifests:
                    if manifest.name not in running:
                        state_dir.verify_state(manifest)
            return {"changed": bool(manifests), "vms": [], "would_restore": [m.name for m in manifests]}
        with state_dir.lock():
            check_run(state_dir, run_id)
            manifests, running = _select(state_dir, names)

            async def restore_all() -> List[Any]:
                return list(await asyncio.gather(*(_restore_one(m, state_dir, options, running.get(m.name))
                                                   for m in manifests), return_exceptions=True))

            results = asyncio.run(restore_all()) if manifests else []
    planned = [m.name for m in manifests]
    done = [asdict(r) for r in results if isinstance(r, RestoreResult)]
    detail = {"changed": any(r["changed"] for r in done), "vms": done, "would_restore": planned}
    raise_failures(planned, results, detail, "Restored",
                   "the state files and manifests of the failed VMs are kept: fix the cause and run again")
    return detail


def _select(state_dir: StateDir, names: Optional[List[str]]) -> Tuple[List[Manifest], Dict[str, VmEndpoint]]:
    """The manifests to restore (every one, or the named ones) and the running VMs by name."""
    return select_held(state_dir.manifests(), names, lambda unknown: ManifestError(
        f"no manifest in {state_dir.path} and no running VM for {some_names(unknown)}",
        hint="check the names and state_dir"))


async def _restore_one(manifest: Manifest, state_dir: StateDir, options: RestoreOptions,
                       existing: Optional[VmEndpoint]) -> RestoreResult:
    started = time.monotonic()
    waiting = False
    if existing is not None:
        if is_saved_qemu(manifest, existing):
            raise CprError("the QEMU that was saved is still running (postmigrate)", manifest.name,
                           hint="it was saved with quit=false: quit it (QMP quit) before restoring")
        if not started_by_restore(state_dir, manifest.name, existing):
            raise not_ours(manifest, existing)
        async with open_qmp(existing.qmp_socket, vm=manifest.name, timeout=CONNECT_TIMEOUT) as session:
            state = await runstate(session)
        if state != "inmigrate":
            # An earlier run restored it and stopped before cleaning up.
            return await _finish(manifest, state_dir, options, started, existing.pid)
        waiting = True
    if options.verify_checksum:
        # In a thread: the VMs' state files are checked at the same time.
        await asyncio.to_thread(state_dir.verify_state, manifest)
    pid, back_at = await bring_back(manifest, state_dir, options.launcher, options.timeout, waiting)
    return await _finish(manifest, state_dir, options, started, pid, back_at)


async def _finish(manifest: Manifest, state_dir: StateDir, options: RestoreOptions, started: float,
                  pid: Optional[int], back_at: Optional[float] = None) -> RestoreResult:
    """Check the VM is back in its old runstate, wait for its guest agent, then remove (or keep) its files.

    back_at None: an earlier run brought it back and stopped before cleaning up; its downtime ends when this
    call finds it back. The wait for the guest agent is not part of the downtime.
    """
    changed = back_at is not None
    async with open_qmp(manifest.qmp_socket, vm=manifest.name, timeout=CONNECT_TIMEOUT) as session:
        state = await runstate(session)
        if state == "suspended" and manifest.suspended_by_us:
            await wake_guest(session, options.timeout)
            state, changed, back_at = "running", True, time.time()
    if state != manifest.runstate_after:
        raise CprError(f"after the restore the VM is {state}, not {manifest.runstate_after} as before the save",
                       manifest.name, hint="the state file and manifest are kept; inspect the VM")
    back_at = back_at or time.time()
    if manifest.held_unit:
        # Back from its saved state: its service may start it again from now on.
        await asyncio.to_thread(release, [manifest.held_unit])
    await settle(manifest, options.timeout)
    await asyncio.to_thread(state_dir.keep_restored if options.keep_state else state_dir.remove_saved, manifest.name)
    return RestoreResult(manifest.name, changed, pid, state, time.monotonic() - started, back_at - manifest.paused_at,
                         options.keep_state, manifest.runstate_before, manifest.suspended_by_us, manifest.paused_at,
                         manifest.save_seconds, manifest.state_bytes, manifest.ram_in_place, back_at)
