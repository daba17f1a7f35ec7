# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""cpr_save: save the selected VMs with QEMU's cpr-reboot migration mode, ready for a host reboot.

First everything is decided and checked, touching nothing: the selection,
which VMs an earlier run already saved (or left half done), every VM's
readiness, the free space. Then, under the state directory's lock, what an
earlier run left half done is finished and the rest are saved in one round
(_checkpoint).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions, SaveResult, save_round, seal
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotReadyError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import SAVABLE_RUNSTATES, FactsOptions, VmFacts, gather_all
from ansible_collections.hypervisor.cpr.plugins.module_utils._guest import runstate
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import is_saved_qemu, not_ours, started_by_restore
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import check_name
from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import filesystem_of
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import quit_qemu
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import CONNECT_TIMEOUT, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import (
    Selection,
    compile_query,
    filter_by_query,
    running,
    select_endpoints,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._units import unheld_launcher
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout

# Device state (everything but guest RAM) stays well below this per VM.
DEVICE_STATE_MARGIN = 64 << 20


@dataclass
class _Plan:
    """What a save call does, decided before it touches anything."""

    # Saved by an earlier run: reported unchanged.
    earlier: List[SaveResult] = field(default_factory=list)
    # Saved by an earlier run that stopped before it quit their QEMU (postmigrate): quit now.
    unquit: List[VmEndpoint] = field(default_factory=list)
    # Saves an earlier run left half done: QEMU completed them (sealed now) or they were rolled back (records stale).
    to_seal: List[VmFacts] = field(default_factory=list)
    stale: List[VmFacts] = field(default_factory=list)
    # Saved now.
    to_save: List[VmFacts] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.to_save or self.unquit or self.to_seal or self.stale)

    @property
    def would_save(self) -> List[str]:
        return [f.name for f in self.to_save]


def save(selection: Selection, state_dir_path: str, options: SaveOptions = SaveOptions(),
         check_mode: bool = False, run_id: Optional[str] = None) -> Dict[str, Any]:
    """Save the selected VMs; return what the cpr_save module reports.

    Everything is checked before the state directory is created or any VM touched; the work is done under the
    directory's flock, for the run that holds the host (run_id) if one does.
    """
    expression = compile_query(selection.query)
    check_timeout(options.timeout)
    with StateDir.open(state_dir_path) as state_dir:
        if check_mode:
            plan = _checked_plan(state_dir, selection, options, expression)
            earlier = plan.earlier + [_unquit_result(state_dir, e.name, False) for e in plan.unquit]
            return {"changed": plan.changes, "vms": [asdict(r) for r in earlier], "would_save": plan.would_save}
        if not state_dir.exists:
            # Nothing saved yet: a selection that names no VM is refused before the directory is made.
            if not select_endpoints(running(selection), selection.names):
                return {"changed": False, "vms": [], "would_save": []}
            state_dir.create()
        with state_dir.lock():
            check_run(state_dir, run_id)
            plan = _checked_plan(state_dir, selection, options, expression)
            done = plan.earlier + asyncio.run(_finish_earlier(plan, state_dir, options.quit_after))
            for facts in plan.stale:
                state_dir.remove_saved(facts.name)
            if plan.to_save:
                done += asyncio.run(save_round(plan.to_save, state_dir, options, run_id))
    warnings = [f"VM {f.name}: {launcher}" for f in plan.to_save
                if options.reboot != "none" and (launcher := unheld_launcher(f.pid))]
    return {"changed": any(r.changed for r in done), "vms": [asdict(r) for r in done], "would_save": plan.would_save,
            "warnings": warnings}


def _checked_plan(state_dir: StateDir, selection: Selection, options: SaveOptions, expression: Any) -> _Plan:
    """The plan, with the query applied, every VM to save ready and room for its state; nothing is touched."""
    plan = _plan(state_dir, selection, options)
    plan.to_save = filter_by_query(expression, selection.query, plan.to_save)
    _check_ready(plan.to_save)
    if plan.to_save:
        check_space(state_dir.path, plan.to_save, options.reboot)
    return plan


def _plan(state_dir: StateDir, selection: Selection, options: SaveOptions) -> _Plan:
    """Sort the selected VMs by what an earlier run did to them; nothing is touched."""
    found = running(selection)
    by_name = {e.name: e for e in found}
    saved_names = [n for n in (selection.names or [m.name for m in state_dir.manifests()]) if state_dir.has_manifest(n)]
    states = asyncio.run(_runstates([by_name[n] for n in saved_names if n in by_name]))
    plan = _Plan()
    held = []
    for name in saved_names:
        manifest, endpoint, state = state_dir.read_manifest(name), by_name.get(name), states.get(name)
        if endpoint is None:
            # Its QEMU is gone: saved by an earlier run, unchanged now.
            plan.earlier.append(SaveResult.of(manifest, False, True))
        elif is_saved_qemu(manifest, endpoint):
            if state != "postmigrate" or not options.quit_after:
                continue
            plan.unquit.append(endpoint)
        elif started_by_restore(state_dir, name, endpoint):
            # A restore started it, and it waits for the state; with reboot none, one that already loaded it loses
            # nothing either: cpr_restore finishes it.
            if state != "inmigrate" and (options.reboot != "none" or state in (None, "postmigrate")):
                continue
            plan.earlier.append(SaveResult.of(manifest, False, True))
        else:
            raise not_ours(manifest, endpoint)
        held.append(name)
    endpoints = select_endpoints(found, selection.names, held)
    for endpoint in endpoints:
        check_name(endpoint.name)
        if state_dir.has_manifest(endpoint.name):
            raise CprError(
                f"the VM runs, but a manifest from an earlier save exists ({state_dir.manifest_path(endpoint.name)})",
                endpoint.name, hint="run cpr_restore first: it finishes an interrupted restore and removes the manifest",
            )
    facts = asyncio.run(gather_all(endpoints, FactsOptions(CONNECT_TIMEOUT, options.reboot, options.ignore_shared)))
    for vm_facts in facts:
        if not state_dir.has_saving(vm_facts.name):
            plan.to_save.append(vm_facts)
        elif vm_facts.runstate == "postmigrate" and vm_facts.migration.get("status") == "completed":
            plan.to_seal.append(vm_facts)
        elif vm_facts.runstate in SAVABLE_RUNSTATES:
            plan.stale.append(vm_facts)
            plan.to_save.append(vm_facts)
        else:
            raise CprError(f"an earlier save was interrupted and the VM is now {vm_facts.runstate}", vm_facts.name,
                           hint=f"inspect it; {state_dir.saving_path(vm_facts.name)} records how it was before")
    return plan


async def _runstates(endpoints: List[VmEndpoint]) -> Dict[str, Optional[str]]:
    """The runstate of every running VM that has a manifest (None when it does not answer)."""

    async def state_of(endpoint: VmEndpoint) -> Optional[str]:
        try:
            async with open_qmp(endpoint.qmp_socket, vm=endpoint.name, timeout=CONNECT_TIMEOUT) as session:
                return await runstate(session)
        except CprError:
            return None

    states = await asyncio.gather(*(state_of(e) for e in endpoints))
    return {e.name: state for e, state in zip(endpoints, states)}


def _check_ready(facts: List[VmFacts]) -> None:
    for vm_facts in facts:
        if not vm_facts.argv and vm_facts.cpr and not vm_facts.error:
            vm_facts.cpr.ready = False
            vm_facts.cpr.reasons.append("its QEMU command line cannot be read from /proc, so it could not be started again")
    not_ready = [f for f in facts if f.cpr and not f.cpr.ready]
    if not_ready:
        raise NotReadyError("; ".join(f"VM {f.name} is not ready: {' / '.join(f.cpr.reasons)}"
                                      for f in not_ready if f.cpr),
                            hint="nothing was touched")


def check_space(state_dir: str, selected: List[VmFacts], reboot: str) -> None:
    """Refuse before touching anything when the state directory cannot hold the save."""
    needed = sum((f.cpr.ram_copy_bytes if f.cpr else 0) + DEVICE_STATE_MARGIN for f in selected)
    # In check mode the directory may not exist yet: look where it would be created.
    while not os.path.exists(state_dir):
        state_dir = os.path.dirname(state_dir)
    usage = shutil.disk_usage(state_dir)
    if usage.free < needed:
        copying = [f.name for f in selected if f.cpr and f.cpr.ram_copy_bytes]
        raise NotReadyError(
            f"the state directory {state_dir} has {usage.free >> 20} MiB free, the save needs about {needed >> 20} MiB"
            + (f" (RAM is copied for {', '.join(copying)})" if copying else ""),
            hint="free space there, choose another state_dir, or keep RAM in place on shared file-backed memory",
        )
    if reboot != "none":
        persistent, note = filesystem_of(state_dir, os.stat(state_dir).st_dev, None)[2:]
        if not persistent:
            raise NotReadyError(f"the state directory must survive the {reboot}, but {note}",
                                hint="put state_dir on a disk filesystem")


def _unquit_result(state_dir: StateDir, name: str, quit_: bool) -> SaveResult:
    result = SaveResult.of(state_dir.read_manifest(name), False, quit_)
    result.changed = True
    return result


async def _finish_earlier(plan: _Plan, state_dir: StateDir, quit_after: bool) -> List[SaveResult]:
    """Quit the QEMUs an earlier run saved and did not quit, and seal the saves QEMU completed for it."""
    finished = []
    for endpoint in plan.unquit:
        async with open_qmp(endpoint.qmp_socket, vm=endpoint.name, timeout=CONNECT_TIMEOUT) as session:
            await quit_qemu(session, session.pid or endpoint.pid, CONNECT_TIMEOUT)
        finished.append(_unquit_result(state_dir, endpoint.name, True))
    for vm_facts in plan.to_seal:
        manifest = state_dir.read_manifest(vm_facts.name, in_progress=True)
        seal(state_dir, manifest, None)
        if quit_after:
            async with open_qmp(vm_facts.qmp_socket, vm=vm_facts.name, timeout=CONNECT_TIMEOUT) as session:
                await quit_qemu(session, session.pid or vm_facts.pid, CONNECT_TIMEOUT)
        result = SaveResult.of(manifest, True, quit_after)
        finished.append(result)
    return finished
