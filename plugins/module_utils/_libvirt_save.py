# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""libvirt_save: every selected libvirt domain saved at once with a managed save, ready for a host reboot.

First everything is decided and checked, touching nothing: the selection, which
domains an earlier run saved, that every domain can be saved, the free space
where libvirt writes its images. Then, under the state directory's lock, each
domain gets a record, its autostart is turned off (so that nothing starts it
before the restore checked its image), and libvirt saves all of them
concurrently. When one fails, every domain of the call is brought back as it
was (all or nothing): the ones saved from their images, the failed one as
libvirt left it (libvirt resumes a domain whose save failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    CprError,
    NotReadyError,
    raise_failures,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import (
    STATES,
    Domain,
    Libvirt,
    Record,
    read_image,
    save_dir,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_state import (
    bring_back,
    concurrently,
    read_record,
    remove_record,
    seal,
    write_record,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import (
    filesystem_of,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import (
    check_list,
    some_names,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout

# libvirt's header, the domain's XML and device state beside guest RAM.
IMAGE_MARGIN = 64 << 20


@dataclass
class LibvirtSaveOptions:
    """How libvirt_save saves: the reboot it prepares for, how long each save may take, all or nothing."""

    uri: str
    reboot: str = "kexec"
    timeout: float = 300.0
    all_or_nothing: bool = True


# Why the save is a plain virDomainManagedSave and never virDomainSaveParams (which would set the sparse format
# and parallel channels per call): with libvirt 11.3 here, a managed save through virDomainSaveParams wrote its image
# and ended QEMU, but the call never returned and the daemon answered no client any more. The image format is
# qemu.conf's save_image_format, which libvirt_status reports.


def save(names: Optional[List[str]], state_dir_path: str, options: LibvirtSaveOptions, check_mode: bool = False,
         run_id: Optional[str] = None) -> Dict[str, Any]:
    """Save the selected domains (every running or paused one without names); what libvirt_save returns."""
    check_list(names, "names")
    check_timeout(options.timeout)
    with Libvirt(options.uri) as lv, StateDir.open(state_dir_path) as state_dir:
        earlier, to_save = _plan(lv, state_dir, names, options)
        if check_mode or not to_save:
            return _result(earlier, to_save, [], lv)
        state_dir.create()
        with state_dir.lock():
            check_run(state_dir, run_id)
            earlier, to_save = _plan(lv, state_dir, names, options)
            saved = asyncio.run(_save_all(lv, state_dir, to_save, options)) if to_save else []
    return _result(earlier, to_save, saved, lv)


def _result(earlier: List[Record], to_save: List[Domain], saved: List[Record], lv: Libvirt) -> Dict[str, Any]:
    done = [dict(r.report(), changed=False) for r in earlier] + [dict(r.report(), changed=True) for r in saved]
    return {"changed": bool(to_save), "vms": done, "would_save": [d.name for d in to_save],
            "libvirt_version": lv.version()}


def _plan(lv: Libvirt, state_dir: StateDir, names: Optional[List[str]],
          options: LibvirtSaveOptions) -> "tuple[List[Record], List[Domain]]":
    """(saved by an earlier run, to save now), every domain to save checked; nothing is touched."""
    domains = {d.name: d for d in lv.domains()}
    unknown = [n for n in names or [] if n not in domains]
    if unknown:
        raise CprError(f"libvirt at {lv.uri} has no domain named {some_names(unknown)}",
                       hint="nothing was touched; list the domains with virsh list --all")
    earlier, to_save = [], []
    for name in names or sorted(domains):
        domain = domains[name]
        record = read_record(state_dir, name) if state_dir.has(name + ".libvirt") else None
        if record is not None and domain.state == "shutoff" and read_image(lv.local(record.image)).complete:
            if record.stage != "saved":
                # An earlier run died after libvirt saved the domain, before it checked the image: do it now.
                seal(record, lv.local(record.image))
                write_record(state_dir, record)
            earlier.append(record)
        elif names is not None or domain.state in ("running", "paused"):
            to_save.append(domain)
    problems = [f"domain {d.name}: {d.problem}" for d in to_save if d.problem]
    if problems:
        raise NotReadyError("; ".join(problems), hint="nothing was touched")
    _check_space(lv, to_save, options.reboot)
    return earlier, to_save


def _check_space(lv: Libvirt, domains: List[Domain], reboot: str) -> None:
    """The image directory must hold every domain's RAM, and survive the reboot."""
    if not domains:
        return
    where = lv.local(save_dir(lv.uri))
    needed = sum(d.memory_bytes + IMAGE_MARGIN for d in domains)
    free = shutil.disk_usage(where).free
    if free < needed:
        raise NotReadyError(f"libvirt's image directory {where} has {free >> 20} MiB free, saving "
                            f"{some_names([d.name for d in domains])} needs up to {needed >> 20} MiB",
                            hint="nothing was touched; free space there (a sparse image needs only the RAM in use)")
    if reboot != "none":
        persistent, note = filesystem_of(where, os.stat(where).st_dev, None)[2:]
        if not persistent:
            raise NotReadyError(f"libvirt's images must survive the {reboot}, but {note}", hint="nothing was touched")


async def _save_all(lv: Libvirt, state_dir: StateDir, domains: List[Domain], options: LibvirtSaveOptions) -> List[Record]:
    """Save every domain at once; when one fails, bring every saved one back (all or nothing) and raise."""
    current_boot = boot_id()
    agents = await concurrently(lambda d: d.agent_channel and d.state == "running" and lv.agent_answers(d.name, 2) is None,
                                domains)
    records_ = [Record(name=d.name, uuid=d.uuid, uri=lv.uri, runstate_before=d.state, autostart_before=d.autostart,
                       agent_before=agent is True, boot_id=current_boot, paused_at=0.0, memory_bytes=d.memory_bytes,
                       image=os.path.join(save_dir(lv.uri), f"{d.name}.save")) for d, agent in zip(domains, agents)]
    results = await concurrently(lambda r: _save_one(lv, state_dir, r, options.timeout), records_)
    failed = [r for r, result in zip(records_, results) if isinstance(result, BaseException)]
    saved = [r for r, result in zip(records_, results) if not isinstance(result, BaseException)]
    if failed and options.all_or_nothing and saved:
        undone = await asyncio.gather(*(_undo(lv, state_dir, r, options.timeout) for r in saved), return_exceptions=True)
        results = [result if isinstance(result, BaseException) else
                   undone[saved.index(r)] if isinstance(undone[saved.index(r)], BaseException) else
                   CprError("brought back as it was, because another domain of this call failed to save", r.name)
                   for r, result in zip(records_, results)]
        saved = []
    raise_failures([r.name for r in records_], results, {"vms": [dict(r.report(), changed=True) for r in saved]},
                   "Saved", "every domain not named above runs as it did" if options.all_or_nothing else
                   "the domains named above run as they did")
    return saved


def _save_one(lv: Libvirt, state_dir: StateDir, record: Record, timeout: float) -> Record:
    """Record, hold autostart, managed save, check the image; on failure leave the domain as it was."""
    write_record(state_dir, record)
    dom = lv.domain(record.name)
    if record.autostart_before:
        lv.call(record.name, "turn its autostart off while it is saved", lambda: dom.setAutostart(0))
    record.paused_at = time.time()
    try:
        lv.call(record.name, "save the domain (managed save)", lambda: dom.managedSave(0))
    except CprError as error:
        _after_failed_save(lv, state_dir, record, timeout, error)
    record.save_seconds = round(time.time() - record.paused_at, 3)
    seal(record, lv.local(record.image))
    write_record(state_dir, record)
    return record


def _after_failed_save(lv: Libvirt, state_dir: StateDir, record: Record, timeout: float, error: CprError) -> None:
    """A save call failed (libvirt's words, a daemon that went away): find out how the domain is; a save that
    completed all the same counts, else the domain is put back as it was and the error raised. A daemon that
    goes away again meanwhile (a restart that stops it only now) is waited for, and the domain looked at again."""
    deadline = time.monotonic() + timeout
    while True:
        lv.reconnect(max(0.0, deadline - time.monotonic()))
        try:
            if _completed_or_put_back(lv, record):
                return
            break
        except (CprError, lv.module.libvirtError):
            if lv.alive() or time.monotonic() > deadline:
                raise
    remove_record(state_dir, record.name)
    raise error


def _completed_or_put_back(lv: Libvirt, record: Record) -> bool:
    """True when the failed save completed all the same; else the domain is put back as it was (each step may be
    done again: a daemon may go away between two of them)."""
    dom = lv.domain(record.name)
    image = read_image(lv.local(record.image))
    if not dom.isActive() and image.complete:
        return True
    if dom.isActive():
        if image.exists:
            # An incomplete image of a running domain: libvirt would take it for a saved state at the next start.
            lv.call(record.name, "remove the incomplete image of the failed save", lambda: dom.managedSaveRemove(0))
            if not image.complete:
                # A daemon killed mid-save forgets the image it was writing, and leaves the partial file behind.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lv.local(record.image))
        _drop_the_interrupted_saves_file(lv, record.name)
        if record.runstate_before == "running":
            _resume(lv, record.name, dom)
    if record.autostart_before:
        lv.call(record.name, "turn its autostart on again", lambda: dom.setAutostart(1))
    return False


def _drop_the_interrupted_saves_file(lv: Libvirt, name: str) -> None:
    """A daemon that went away during a save leaves the image's file descriptor in QEMU (an fdset, opaque
    libvirt-outgoing-migrate-fd), and the daemon started again does not know it: libvirt 11.3's next save of the
    domain then has QEMU write into that old file, marks the new, empty image complete and ends QEMU, and the
    guest's state is gone. So QEMU is told to close it (libvirt marks the domain tainted: custom-monitor)."""
    for fdset in lv.monitor(name, "list QEMU's file descriptor sets", "query-fdsets") or []:
        if any(fd.get("opaque") == "libvirt-outgoing-migrate-fd" for fd in fdset.get("fds", [])):
            lv.monitor(name, "close the interrupted save's file in QEMU", "remove-fd", **{"fdset-id": fdset["fdset-id"]})


def _resume(lv: Libvirt, name: str, dom: Any) -> None:
    """Resume a domain the failed save left paused. A daemon started again during the save resumes it on its
    own, perhaps just as we do: a resume refused because the domain already runs is no failure."""
    if STATES.get(dom.state()[0]) != "paused":
        return
    try:
        lv.call(name, "resume it after the failed save", dom.resume)
    except CommandFailedError:
        if STATES.get(dom.state()[0]) != "running":
            raise


async def _undo(lv: Libvirt, state_dir: StateDir, record: Record, timeout: float) -> None:
    """Bring a saved domain of a failed call back from its image, as it was."""
    await bring_back(lv, record, timeout)
    remove_record(state_dir, record.name)
