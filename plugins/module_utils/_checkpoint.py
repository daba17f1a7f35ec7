# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""One round of saves: the VMs of a cpr_save call checkpointed together, kept or undone together.

Per VM: suspend the guest if it must be, set mode cpr-reboot and the
capabilities, write the ``.saving`` record, wait until every VM of the round is
ready to stop, migrate to ``file:<state_dir>/<name>.state``, fsync and checksum
it, write the manifest. Only when every VM of the round is saved do the QEMUs
quit; a failure before that resumes every VM exactly as it was (all_or_nothing)
and removes what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils import _migration as migration
from ansible_collections.hypervisor.cpr.plugins.module_utils._checksum import AppendedFileHasher
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    CprError,
    NotReadyError,
    RolledBackError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate, suspend_guest, wait_runstate, wake_guest
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id, process_identity, systemd_runs_host
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import Launcher, bring_back, settle
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import HOW_QEMU_DIED, Manifest
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import Command, quit_qemu, stop_record, wait_exit
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import CONNECT_TIMEOUT, QmpSession, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._units import Hold, hold, holdable, release

SUSPEND_CHOICES = ("vfio", "all", "none")
# A guest asked to suspend may still get there after we gave up waiting.
SUSPEND_SETTLE_SECONDS = 3.0
# A QEMU killed mid-save closes its QMP socket a moment before it has ended; on a loaded host that moment is long.
EXIT_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class SaveOptions:
    """cpr_save's options, except the selection and the state directory."""

    reboot: str = "kexec"
    ignore_shared: Optional[bool] = None
    timeout: float = 300.0
    quit_after: bool = True
    suspend: str = "vfio"
    all_or_nothing: bool = True
    mapped_ram: Optional[bool] = None
    # Keep the systemd service of each VM from starting it cold while it is saved (_units).
    hold_units: bool = True


@dataclass
class SaveResult:
    name: str
    changed: bool
    state_file: str
    state_bytes: int
    ram_in_place: bool
    runstate_before: str
    suspended_by_us: bool
    paused_at: float
    save_seconds: float
    quit: bool
    held_unit: Optional[str]

    @classmethod
    def of(cls, manifest: Manifest, changed: bool, quit_: bool) -> "SaveResult":
        """The result for a manifest; a save of an earlier run (changed False) took no time in this one."""
        return cls(manifest.name, changed, manifest.state_file, manifest.state_bytes, manifest.ram_in_place,
                   manifest.runstate_before, manifest.suspended_by_us, manifest.paused_at,
                   manifest.save_seconds if changed else 0.0, quit_, manifest.held_unit)


@dataclass
class _Checkpoint:
    """One VM being saved, and what is needed to undo it."""

    facts: VmFacts
    suspend: bool
    held_unit: Optional[str] = None
    settings: migration.Settings = field(default_factory=lambda: ({}, {}))
    settings_before: migration.Settings = field(default_factory=lambda: ({}, {}))
    suspended_by_us: bool = False
    # Set once the .saving record is written: the manifest to be.
    manifest: Optional[Manifest] = None
    # The state file QEMU was handed, as the URI it migrates to.
    uri: Optional[str] = None
    undo_error: Optional[str] = None
    # Its QEMU died during the save: recorded for vm_power to start it again.
    died: bool = False

    @property
    def name(self) -> str:
        return self.facts.name


class SaveRound:
    """The VMs of one call: none stops before all are ready to, and all keep their save, or none does.

    Each VM says when it is ready to stop (the host's blackout starts at the first stop) and, once, whether it
    saved. Once every VM has said so, keep() tells each whether to keep its save: with all_or_nothing, only when
    every one saved.
    """

    def __init__(self, names: List[str], all_or_nothing: bool, run_id: Optional[str] = None) -> None:
        # The run the VMs are saved for, recorded in each manifest.
        self.run_id = run_id
        self._names = set(names)
        self._all_or_nothing = all_or_nothing
        self._ready: set = set()
        self._outcomes: Dict[str, bool] = {}
        self._all_ready = asyncio.Event()
        self._all_done = asyncio.Event()

    def _arrive(self, name: str) -> None:
        self._ready.add(name)
        if self._ready == self._names:
            self._all_ready.set()

    async def ready_to_stop(self, name: str) -> None:
        self._arrive(name)
        await self._all_ready.wait()

    def report(self, name: str, saved: bool) -> None:
        """The VM saved, or failed; the first report of a VM counts. A failed VM no longer holds the others."""
        self._arrive(name)
        self._outcomes.setdefault(name, saved)
        if set(self._outcomes) == self._names:
            self._all_done.set()

    async def keep(self) -> bool:
        await self._all_done.wait()
        return all(self._outcomes.values()) or not self._all_or_nothing


async def save_round(facts: List[VmFacts], state_dir: StateDir, options: SaveOptions,
                     run_id: Optional[str] = None) -> List[Any]:
    """Save every VM at once for a run (run_id); their results, or the exception each failed with."""
    vm_round = SaveRound([f.name for f in facts], options.all_or_nothing, run_id)
    holds = [Hold(str(f.unit), f.name, state_dir.manifest_path(f.name)) for f in facts
             if options.hold_units and holdable(f.unit) and systemd_runs_host()]
    # Held before any VM stops: a service with Restart=always starts its QEMU again the moment the save quits it.
    hold(holds)
    held = {h.vm: h.unit for h in holds}
    checkpoints = [_Checkpoint(f, options.suspend == "all" or (options.suspend == "vfio" and bool(f.vfio)),
                               held.get(f.name)) for f in facts]
    results = await asyncio.gather(*(_save_one(c, vm_round, state_dir, options) for c in checkpoints),
                                   return_exceptions=True)
    failed = [(c, r) for c, r in zip(checkpoints, results) if isinstance(r, BaseException)]
    if failed:
        raise _round_error(failed, [r for r in results if isinstance(r, SaveResult)], state_dir)
    return list(results)


def _round_error(failed: List[Any], saved: List[SaveResult], state_dir: StateDir) -> CprError:
    causes = [e for _c, e in failed if not isinstance(e, RolledBackError)] or [e for _c, e in failed]
    resumed = [c.name for c, _e in failed if c.undo_error is None]
    died = [c.name for c, _e in failed if c.died]
    stuck = [f"{c.name} ({c.undo_error})" for c, _e in failed if c.undo_error is not None and not c.died]
    return CprError(
        "; ".join(str(e) for e in causes)
        + (f". Resumed as they were: {', '.join(resumed)}" if resumed else "")
        + (f". Their QEMU died during the save and the guest's running state with it; each command line is "
           f"recorded in {state_dir.stopped_path('<name>')}, and vm_power state=started boots them again: "
           f"{', '.join(died)}" if died else "")
        + (f". Could not be resumed, state files and manifests kept for cpr_restore: {'; '.join(stuck)}"
           if stuck else "")
        + (f". Saved: {', '.join(r.name for r in saved)}" if saved else ""),
        hint="fix the cause and run again; saved VMs are restored by cpr_restore",
    )


async def _save_one(checkpoint: _Checkpoint, vm_round: SaveRound, state_dir: StateDir,
                    options: SaveOptions) -> SaveResult:
    name = checkpoint.name
    try:
        async with open_qmp(checkpoint.facts.qmp_socket, vm=name, timeout=CONNECT_TIMEOUT) as session:
            try:
                await _stop_and_save(session, checkpoint, vm_round, state_dir, options)
            except BaseException as exc:
                vm_round.report(name, saved=False)
                await _undo(session, checkpoint, state_dir, options.timeout)
                if isinstance(exc, CprError) and exc.vm is None:
                    exc.vm = name
                raise
            vm_round.report(name, saved=True)
            if not await vm_round.keep():
                await _undo(session, checkpoint, state_dir, options.timeout)
                raise RolledBackError(name)
            manifest = checkpoint.manifest
            if manifest is None:
                raise CprError("the save ended without a manifest", name)
            if options.quit_after:
                await quit_qemu(session, session.pid or checkpoint.facts.pid, options.timeout)
            return SaveResult.of(manifest, True, options.quit_after)
    finally:
        # Whatever ended this VM's save (a QMP socket that never answered, too), the others must not wait for it.
        vm_round.report(name, saved=False)


async def _stop_and_save(session: QmpSession, checkpoint: _Checkpoint, vm_round: SaveRound, state_dir: StateDir,
                         options: SaveOptions) -> None:
    facts = checkpoint.facts
    checkpoint.settings = migration.migration_settings(
        facts, await migration.available_capabilities(session), options.mapped_ram)
    # The guest stops serving at the suspend, so its blackout starts there.
    paused_at = time.time()
    if checkpoint.suspend and facts.runstate == "running":
        # Set before asking, so an undo wakes a guest that suspends after a timeout.
        checkpoint.suspended_by_us = True
        await suspend_guest(session, facts.qga_socket, options.timeout)
    checkpoint.settings_before = await migration.current(session, checkpoint.settings)
    await migration.apply(session, checkpoint.settings)
    blocked = (await session.execute("query-migrate")).get("blocked-reasons", [])
    if blocked:
        raise NotReadyError(f"QEMU blocks a cpr-reboot migration: {'; '.join(blocked)}", facts.name)

    command = Command.of(facts)
    manifest = checkpoint.manifest = Manifest(
        name=facts.name, argv=command.argv, cwd=command.cwd, qmp_socket=facts.qmp_socket or "",
        qga_socket=facts.qga_socket,
        machine_type=facts.machine_type or "", qemu_version=facts.qemu_version or "",
        runstate_before="suspended" if checkpoint.suspended_by_us else facts.runstate or "running",
        suspended_by_us=checkpoint.suspended_by_us,
        agent_answered=bool(facts.agent.answering) or checkpoint.suspended_by_us,
        ram_in_place=bool(facts.cpr and facts.cpr.ram_in_place),
        memory_backends=[b.to_dict() for b in facts.memory_backends],
        capabilities=checkpoint.settings[0], parameters=checkpoint.settings[1],
        state_file=state_dir.state_path(facts.name), reboot=options.reboot,
        paused_at=paused_at, boot_id=boot_id(), kernel=platform.release(),
        qemu_process=process_identity(session.pid or facts.pid or 0),
        credentials=command.credentials.to_dict() if command.credentials else {}, held_unit=checkpoint.held_unit,
        run_id=vm_round.run_id,
    )
    # Written before the VM stops (a thread, so that the VMs' fsyncs overlap); it gets the real paused_at later.
    await asyncio.to_thread(state_dir.write_manifest, manifest, True)
    uri = checkpoint.uri = await migration.hand_over(session, state_dir.open_state(facts.name, write=True))
    # A copy of guest RAM is written to disk while QEMU writes it, not only by the fsync after it, and a plain
    # stream, which QEMU only appends to, hashed as it grows (mapped-ram writes pages at fixed offsets).
    flusher = None
    if not manifest.ram_in_place:
        appended = None if checkpoint.settings[0].get("mapped-ram") else (facts.cpr.ram_copy_bytes if facts.cpr else 0)
        flusher = state_dir.flusher(facts.name, appended)
    try:
        await vm_round.ready_to_stop(facts.name)
        started = time.monotonic()
        if not checkpoint.suspended_by_us:
            manifest.paused_at = time.time()
        await session.execute("migrate", {"uri": uri})
        await migration.wait_migration(session, options.timeout, "the save")
    finally:
        if flusher is not None:
            await asyncio.to_thread(flusher.stop)
    await migration.release(session, uri)
    state = await runstate(session)
    if state != "postmigrate":
        raise CommandFailedError(f"after the save the VM is {state}, not postmigrate", facts.name)
    await asyncio.to_thread(seal, state_dir, manifest, started, flusher.hasher if flusher else None)


def seal(state_dir: StateDir, manifest: Manifest, started: Optional[float],
         hashed: Optional[AppendedFileHasher] = None) -> None:
    """fsync and checksum a complete state file, then turn the .saving record into the manifest.

    started (monotonic) is when QEMU was told to migrate; None when an earlier run did that. hashed holds the
    chunks hashed while QEMU wrote the file, if any.
    """
    state_dir.seal(manifest, hashed)
    manifest.saved_at = time.time()
    if started is not None:
        manifest.save_seconds = time.monotonic() - started
    state_dir.finish_save(manifest)


async def _undo(session: QmpSession, checkpoint: _Checkpoint, state_dir: StateDir, timeout: float) -> None:
    """Bring the VM back exactly as it was and remove what the save wrote; note why if that fails."""
    try:
        await _resume(session, checkpoint, state_dir, timeout)
        if checkpoint.held_unit:
            await asyncio.to_thread(release, [checkpoint.held_unit])
    except CprError as exc:
        checkpoint.undo_error = str(exc)
        if await _died_unsaved(checkpoint, state_dir):
            await asyncio.to_thread(_record_for_a_fresh_start, checkpoint, state_dir)


async def _resume(session: QmpSession, checkpoint: _Checkpoint, state_dir: StateDir, timeout: float) -> None:
    info = await session.execute("query-migrate")
    if info.get("status") not in (None, "none", *migration.FINAL_STATES):
        await session.execute("migrate_cancel")
        with contextlib.suppress(CprError):
            await migration.wait_migration(session, timeout, "the cancelled save")
    state = await runstate(session)
    manifest = checkpoint.manifest
    if state == "postmigrate" and manifest is not None and manifest.runstate_before != "running":
        # From postmigrate, QEMU 10.0 aborts on cont when the guest was suspended ("invalid runstate
        # transition"), and a paused VM would have to run to get back to paused; neither can be migrated
        # again. The state file is complete, so the exact way back is a new QEMU that loads it.
        await quit_qemu(session, session.pid or checkpoint.facts.pid, timeout)
        await bring_back(manifest, state_dir, Launcher(), timeout)
        await settle(manifest, timeout)
        await asyncio.to_thread(state_dir.remove_saved, manifest.name)
        return
    if state == "postmigrate":
        await session.execute("cont")
        state = await runstate(session)
    if checkpoint.suspended_by_us and state == "running":
        with contextlib.suppress(CprError):
            state = await wait_runstate(session, "suspended", SUSPEND_SETTLE_SECONDS, "the suspend we asked for")
    if checkpoint.suspended_by_us and state == "suspended":
        await wake_guest(session, timeout)
    if any(checkpoint.settings_before):
        await migration.apply(session, checkpoint.settings_before)
    if checkpoint.uri is not None:
        await migration.release(session, checkpoint.uri)
    await asyncio.to_thread(state_dir.remove_saved, checkpoint.name)


async def _died_unsaved(checkpoint: _Checkpoint, state_dir: StateDir) -> bool:
    pid = checkpoint.facts.pid
    return bool(pid) and await wait_exit(pid or 0, EXIT_GRACE_SECONDS) and not state_dir.has_manifest(checkpoint.name)


def _record_for_a_fresh_start(checkpoint: _Checkpoint, state_dir: StateDir) -> None:
    """A QEMU that died before its state file was complete took the guest's running state with it.

    Its command line is recorded as vm_power records a shut-down guest, so that ``vm_power state=started``
    (which the kernel_update role runs) boots the VM again; the partial state file is removed.
    """
    facts = checkpoint.facts
    state_dir.write_stopped(stop_record(facts, bool(facts.agent.answering) or checkpoint.suspended_by_us,
                                        HOW_QEMU_DIED))
    state_dir.remove_saved(facts.name)
    if checkpoint.held_unit:
        release([checkpoint.held_unit])
    checkpoint.died = True
