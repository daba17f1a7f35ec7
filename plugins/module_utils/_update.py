# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""qemu_update: every selected VM moved to a new QEMU of the binary now installed, in one call.

A VM that allows it is transferred (cpr-transfer, _transfer): the new QEMU starts beside the old one and the guest
pauses for milliseconds. Any other is relaunched: saved with cpr-reboot, its QEMU quit, a new one started from the
manifest and the state loaded (_checkpoint, _incoming), in the same call, with no Ansible round trip in between.
Everything is decided before any VM is touched: the selection, each VM's way and readiness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions, save_round
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotReadyError, raise_failures
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions, VmFacts, gather_all
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import is_running, unit_of
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import Launcher, bring_back, settle
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import CONNECT_TIMEOUT, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import (
    Selection,
    compile_query,
    filter_by_query,
    running,
    select_endpoints,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer import Turns, UpdateResult, exe_of, transfer
from ansible_collections.hypervisor.cpr.plugins.module_utils._units import release
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout

METHODS = ("auto", "transfer", "relaunch")


@dataclass(frozen=True)
class UpdateOptions:
    """qemu_update's options, except the selection and the state directory."""

    # auto: transfer where the VM allows it, else relaunch; transfer: refuse VMs that cannot be transferred.
    method: str = "auto"
    timeout: float = 300.0
    # For the VMs relaunched (see cpr_save's suspend and hold_units, cpr_restore's launch).
    suspend: str = "vfio"
    hold_units: bool = True
    launcher: Launcher = field(default_factory=Launcher)


@dataclass
class _Plan:
    transfer: List[VmFacts] = field(default_factory=list)
    relaunch: List[VmFacts] = field(default_factory=list)
    # Why each VM to relaunch is not transferred.
    reasons: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        return {"would_transfer": [f.name for f in self.transfer], "would_relaunch": [f.name for f in self.relaunch]}


def update(selection: Selection, state_dir_path: str, options: UpdateOptions = UpdateOptions(),
           check_mode: bool = False, run_id: Optional[str] = None) -> Dict[str, Any]:
    """Update the selected VMs' QEMU; return what the qemu_update module reports."""
    expression = compile_query(selection.query)
    check_timeout(options.timeout)
    if options.method not in METHODS:
        raise NotReadyError(f"method must be one of {', '.join(METHODS)}, not {options.method!r}")
    with StateDir.open(state_dir_path) as state_dir:
        if check_mode:
            plan = _plan(state_dir, selection, options, expression)
            return dict(plan.summary(), changed=bool(plan.transfer or plan.relaunch), vms=[])
        if not state_dir.exists:
            if not select_endpoints(running(selection), selection.names):
                return {"changed": False, "vms": [], "would_transfer": [], "would_relaunch": []}
            state_dir.create()
        with state_dir.lock():
            check_run(state_dir, run_id)
            plan = _plan(state_dir, selection, options, expression)
            names, results = asyncio.run(_update_all(plan, state_dir, options))
    done = [asdict(r) for r in results if isinstance(r, UpdateResult)]
    detail = dict(plan.summary(), changed=bool(done), vms=done)
    # A failed relaunch round is one error for each of its VMs: said once.
    first = {id(r): n for n, r in zip(names, results) if isinstance(r, BaseException)}
    kept = [(n, r) for n, r in zip(names, results) if not isinstance(r, BaseException) or first[id(r)] == n]
    raise_failures([n for n, _r in kept], [r for _n, r in kept], detail, "Updated",
                   "a VM whose update failed runs on in its old QEMU, or, where a relaunch had saved it, is restored by "
                   "cpr_restore; fix the cause and run again")
    return detail


def _plan(state_dir: StateDir, selection: Selection, options: UpdateOptions, expression: Any) -> _Plan:
    """Each selected VM's way (transfer or relaunch), every one ready for it; nothing is touched."""
    saved = [m.name for m in state_dir.manifests()] if state_dir.exists else []
    found = running(selection)
    endpoints = select_endpoints(found, selection.names)
    for endpoint in endpoints:
        if endpoint.name in saved:
            raise CprError(f"an earlier save left a manifest ({state_dir.manifest_path(endpoint.name)})", endpoint.name,
                           hint="run cpr_restore first: it finishes an interrupted restore; nothing was touched")
        _check_earlier_transfer(state_dir, endpoint.name)
    facts = asyncio.run(gather_all(endpoints, FactsOptions(CONNECT_TIMEOUT, "none", None)))
    plan = _Plan()
    not_ready = []
    for vm in filter_by_query(expression, selection.query, facts):
        transfer_reasons = vm.transfer.reasons if vm.transfer else ["no verdict"]
        if options.method != "relaunch" and not transfer_reasons:
            plan.transfer.append(vm)
        elif options.method == "transfer":
            not_ready.append(f"VM {vm.name} cannot be transferred: {' / '.join(transfer_reasons)}")
        elif vm.cpr and vm.cpr.ready and vm.argv:
            plan.relaunch.append(vm)
            plan.reasons[vm.name] = "; ".join(transfer_reasons) if options.method == "auto" else "method relaunch"
        else:
            why = (vm.cpr.reasons if vm.cpr else []) or ["its command line cannot be read from /proc"]
            not_ready.append(f"VM {vm.name} can be neither transferred nor relaunched: {' / '.join(why)}")
    if not_ready:
        raise NotReadyError("; ".join(not_ready), hint="nothing was touched")
    return plan


def _check_earlier_transfer(state_dir: StateDir, name: str) -> None:
    """A transfer an earlier call did not finish: refused while its new QEMU runs, forgotten once it does not."""
    record = state_dir.read_transfer(name) if state_dir.exists else None
    if record is None:
        return
    if is_running(record.get("new")):
        pid = record["new"]["pid"]
        raise CprError(f"an interrupted transfer left its new QEMU (pid {pid}) running "
                       f"({state_dir.transfer_path(name)})", name, hint=f"if the VM runs in its old QEMU (pid {record.get('old', {}).get('pid')}), end pid "
                       f"{pid}; if the old one is in postmigrate, the VM runs in pid {pid}: end the old one; then remove "
                       "the record and run again")
    state_dir.remove_transfer(name)


async def _update_all(plan: _Plan, state_dir: StateDir, options: UpdateOptions) -> Tuple[List[str], List[Any]]:
    """Transfers and the relaunch round at once.

    With method auto, a VM whose QEMU refused the transfer (a blocker only its cpr-transfer mode shows) is
    relaunched afterwards.
    """
    names = [f.name for f in plan.transfer]
    # New QEMUs start side by side; once all listen, the guests pause one at a time (see _transfer.Turns).
    turns = Turns(names)
    transfers, relaunched = await asyncio.gather(
        asyncio.gather(*(transfer(f, state_dir, options.timeout, turns=turns) for f in plan.transfer),
                       return_exceptions=True),
        _relaunch(plan.relaunch, state_dir, options, plan.reasons))
    results: List[Any] = list(transfers)
    retry = [f for f, r in zip(plan.transfer, transfers) if isinstance(r, NotReadyError) and options.method == "auto"]
    if retry:
        again = await _relaunch(retry, state_dir, options, {f.name: str(r) for f, r in zip(plan.transfer, transfers)})
        for vm, result in zip(retry, again):
            results[names.index(vm.name)] = result
    return names + [f.name for f in plan.relaunch], results + relaunched


async def _relaunch(facts: List[VmFacts], state_dir: StateDir, options: UpdateOptions,
                    reasons: Dict[str, str]) -> List[Any]:
    """Save the VMs in one cpr-reboot round, quit their QEMUs, and bring each back in a new one."""
    if not facts:
        return []
    save_options = SaveOptions(reboot="none", timeout=options.timeout, suspend=options.suspend,
                               hold_units=options.hold_units)
    try:
        await save_round(facts, state_dir, save_options)
    except CprError as exc:
        return [exc] * len(facts)
    return list(await asyncio.gather(*(_back(f, state_dir, options, reasons.get(f.name)) for f in facts),
                                     return_exceptions=True))


async def _back(facts: VmFacts, state_dir: StateDir, options: UpdateOptions, reason: Optional[str]) -> UpdateResult:
    """One saved VM in its new QEMU and its files removed, as cpr_restore would do it."""
    started = time.monotonic()
    manifest = state_dir.read_manifest(facts.name)
    pid, back_at = await bring_back(manifest, state_dir, options.launcher, options.timeout)
    restore_seconds = time.monotonic() - started
    if manifest.held_unit:
        await asyncio.to_thread(release, [manifest.held_unit])
    async with open_qmp(manifest.qmp_socket, vm=facts.name, timeout=CONNECT_TIMEOUT) as session:
        version = (await session.execute("query-version"))["qemu"]
        state = (await session.execute("query-status"))["status"]
    await settle(manifest, options.timeout)
    await asyncio.to_thread(state_dir.remove_saved, facts.name)
    return UpdateResult(facts.name, "relaunch", True, reason, state, facts.pid, pid, facts.qemu_version,
                        "{major}.{minor}.{micro}".format(**version), facts.exe, exe_of(pid),
                        unit_of(pid or 0), manifest.paused_at, back_at, back_at - manifest.paused_at, None,
                        manifest.save_seconds + time.monotonic() - started, manifest.runstate_before,
                        manifest.suspended_by_us, manifest.ram_in_place, manifest.save_seconds, restore_seconds,
                        manifest.state_bytes)
