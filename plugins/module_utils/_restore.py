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
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._boot_entry import boot_result
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, ManifestError, raise_failures
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, wake_guest
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id, kernel_started_at
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import (
    Launcher,
    bring_back,
    check_not_back_before,
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
    # Brought back by the boot restore, before this call, and how long that took it.
    restored_at_boot: bool = False
    boot_restore_seconds: Optional[float] = None


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
        # The boot restore may still be at work when Ansible is back: wait for it as long as for a restore.
        with state_dir.lock(wait=options.timeout):
            check_run(state_dir, run_id)
            manifests, running = _select(state_dir, names)

            async def restore_all() -> List[Any]:
                return list(await asyncio.gather(*(_restore_one(m, state_dir, options, running.get(m.name))
                                                   for m in manifests), return_exceptions=True))

            results = asyncio.run(restore_all()) if manifests else []
            at_boot = boot_result(state_dir_path)
    planned = [m.name for m in manifests]
    done = [asdict(r) for r in results if isinstance(r, RestoreResult)]
    detail = {"changed": any(r["changed"] for r in done), "vms": done, "would_restore": planned,
              "boot_restore": at_boot, "host_blackout": host_blackout(manifests, done, at_boot)}
    raise_failures(planned, results, detail, "Restored",
                   "the state files and manifests of the failed VMs are kept: fix the cause and run again")
    return detail


def host_blackout(manifests: List[Manifest], done: List[Dict[str, Any]],
                  at_boot: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The host's blackout across its reboot: from the reboot (or the new kernel's start) to the last VM back.

    None when no VM restored was saved before this boot. The reboot starts when the reboot command touched the boot
    entry's mark; without one (no boot entry, a firmware reboot), at the new kernel's start, which leaves out the
    firmware and the old kernel's shutdown. to_userspace_seconds is the part until the boot restore started: the
    old kernel's shutdown and the new one's boot.
    """
    rebooted = {m.name for m in manifests if m.boot_id != boot_id()}
    back = [r["back_at"] for r in done if r["name"] in rebooted]
    if not back:
        return None
    kernel_at = (at_boot or {}).get("kernel_started_at") or kernel_started_at()
    reboot_at = (at_boot or {}).get("reboot_at")
    start = reboot_at or kernel_at
    userspace_at = (at_boot or {}).get("started_at")
    return {"from": "reboot command" if reboot_at else "kernel start", "started_at": start,
            "kernel_started_at": kernel_at, "userspace_at": userspace_at, "last_back_at": max(back),
            "seconds": max(back) - start, "to_userspace_seconds": userspace_at - start if userspace_at else None}


def _select(state_dir: StateDir, names: Optional[List[str]]) -> Tuple[List[Manifest], Dict[str, VmEndpoint]]:
    """The manifests to restore (every one, or the named ones) and the running VMs by name."""
    return select_held(state_dir.manifests(), names, lambda unknown: ManifestError(
        f"no manifest in {state_dir.path} and no running VM for {some_names(unknown)}",
        hint="check the names and state_dir"))


async def back_in_runstate(manifest: Manifest, state_dir: StateDir, options: RestoreOptions,
                           existing: Optional[VmEndpoint]) -> Tuple[Optional[int], Optional[float]]:
    """Bring a saved VM back in a new QEMU, or find it back: (pid, back at).

    existing: the QEMU of the VM's name that runs now, if one does: only one a restore started is taken for it
    (waiting for the state: it is loaded; else back at is None, an earlier restore brought it back).
    """
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
            return existing.pid, None
        waiting = True
    else:
        check_not_back_before(state_dir, manifest)
    check = None
    if options.verify_checksum and manifest.ram_in_place:
        # A few hundred KB: checked before QEMU starts (in a thread: the VMs' files are checked at the same time).
        await asyncio.to_thread(state_dir.verify_state, manifest)
    elif options.verify_checksum:
        # Copied RAM: the checksum runs while QEMU loads the file, the guest held stopped until it passed. A missing
        # or truncated file is refused before any QEMU starts.
        await asyncio.to_thread(state_dir.check_state, manifest)
        check = functools.partial(state_dir.verify_state, manifest)
    return await bring_back(manifest, state_dir, options.launcher, options.timeout, waiting, check)


async def _restore_one(manifest: Manifest, state_dir: StateDir, options: RestoreOptions,
                       existing: Optional[VmEndpoint]) -> RestoreResult:
    started = time.monotonic()
    pid, back_at = await back_in_runstate(manifest, state_dir, options, existing)
    return await _finish(manifest, state_dir, options, started, pid, back_at)


async def _finish(manifest: Manifest, state_dir: StateDir, options: RestoreOptions, started: float,
                  pid: Optional[int], back_at: Optional[float] = None) -> RestoreResult:
    """Check the VM is back in its old runstate, wait for its guest agent, then remove (or keep) its files.

    back_at None: an earlier restore (the boot restore, or a run that stopped before cleaning up) brought it back;
    its downtime ends when that restore recorded it back, or else when this call finds it back. The wait for the
    guest agent is not part of the downtime.
    """
    record = state_dir.read_restoring(manifest.name) or {}
    if back_at is None:
        back_at = record.get("back_at")
    async with open_qmp(manifest.qmp_socket, vm=manifest.name, timeout=CONNECT_TIMEOUT) as session:
        state = await runstate(session)
        if state == "suspended" and manifest.suspended_by_us:
            await wake_guest(session, options.timeout)
            state, back_at = "running", time.time()
    if state != manifest.runstate_after:
        raise CprError(f"after the restore the VM is {state}, not {manifest.runstate_after} as before the save",
                       manifest.name, hint="the state file and manifest are kept; inspect the VM")
    back_at = back_at or time.time()
    if manifest.held_unit:
        # Back from its saved state: its service may start it again from now on.
        await asyncio.to_thread(release, [manifest.held_unit])
    await settle(manifest, options.timeout)
    await asyncio.to_thread(state_dir.keep_restored if options.keep_state else state_dir.remove_saved, manifest.name)
    # Its files are removed (or kept as restored) either way: the state directory changed.
    return RestoreResult(manifest.name, True, pid, state, time.monotonic() - started, back_at - manifest.paused_at,
                         options.keep_state, manifest.runstate_before, manifest.suspended_by_us, manifest.paused_at,
                         manifest.save_seconds, manifest.state_bytes, manifest.ram_in_place, back_at,
                         bool(record.get("at_boot")), record.get("boot_restore_seconds"))
