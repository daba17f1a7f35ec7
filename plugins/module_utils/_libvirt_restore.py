# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""libvirt_restore: every saved libvirt domain (or the named ones) back from its managed save image, concurrently.

Per record: the image must be complete and match the checksum its save
recorded; libvirt starts the domain from it (never cold); the domain must be in
its old state (running or paused) with its guest agent answering; then its
autostart flag is put back and the record removed. A domain that runs already
was brought back from its image by someone else (libvirt's autostart, an
operator's virsh start) when libvirt says so and the image is gone: it is
checked and reported, and never started a second time. One that was booted cold
is an error that says so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CprError,
    raise_failures,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import (
    Libvirt,
    Record,
    read_image,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_state import (
    bring_back,
    came_back_from_image,
    check_image,
    records,
    remove_record,
    seal,
    settle,
    write_record,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import check_list
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout


def restore(state_dir_path: str, uri: str, names: Optional[List[str]] = None, timeout: float = 300.0,
            check_mode: bool = False, run_id: Optional[str] = None) -> Dict[str, Any]:
    """Restore every saved domain (or the named ones); what libvirt_restore returns."""
    check_list(names, "names")
    check_timeout(timeout)
    with Libvirt(uri) as lv, StateDir.open(state_dir_path) as state_dir:
        saved = _select(state_dir, names)
        if check_mode or not saved:
            for record in saved:
                if record.stage == "saved" and not lv.domain(record.name).isActive():
                    check_image(record, lv.local(record.image))
            return {"changed": bool(saved), "vms": [], "would_restore": [r.name for r in saved]}
        with state_dir.lock():
            check_run(state_dir, run_id)
            saved = _select(state_dir, names)
            results = asyncio.run(_restore_all(lv, state_dir, saved, timeout))
    done = [result for result in results if isinstance(result, dict)]
    raise_failures([r.name for r in saved], results, {"vms": done}, "Restored",
                   "the image and record of every domain named above are kept: run again to retry")
    return {"changed": bool(done), "vms": done, "would_restore": [r.name for r in saved]}


def _select(state_dir: StateDir, names: Optional[List[str]]) -> List[Record]:
    saved = records(state_dir, names)
    unknown = [n for n in names or [] if n not in {r.name for r in saved}]
    if unknown:
        # Restored by an earlier run (or never saved): nothing to do for them, as for cpr_restore's names.
        saved = [r for r in saved if r.name not in unknown]
    return saved


async def _restore_all(lv: Libvirt, state_dir: StateDir, saved: List[Record], timeout: float) -> List[Any]:
    return list(await asyncio.gather(*(_restore_one(lv, state_dir, r, timeout) for r in saved), return_exceptions=True))


async def _restore_one(lv: Libvirt, state_dir: StateDir, record: Record, timeout: float) -> Dict[str, Any]:
    dom = lv.domain(record.name)
    if record.stage != "saved":
        if dom.isActive():
            # The save never happened (or was undone): the domain runs as it was; put its autostart back.
            await settle(lv, record, timeout)
            remove_record(state_dir, record.name)
            return _result(record, {"restore_seconds": 0.0, "restored_by": "not saved (an interrupted save)"}, False)
        seal(record, lv.local(record.image))
        write_record(state_dir, record)
    if dom.isActive():
        if not came_back_from_image(lv, record):
            image = read_image(lv.local(record.image))
            raise CprError(
                "it was started cold while it was saved (libvirt does not say it was restored"
                + (", and its image is gone): its saved running state is lost" if not image.exists else
                   f"): its image {record.image} is kept") + ", and it was not started a second time",
                record.name, hint="find what started it (autostart, libvirt-guests, an operator); the domain runs, "
                f"remove {record.name}.libvirt once you have looked")
        await settle(lv, record, timeout)
        remove_record(state_dir, record.name)
        return _result(record, {"restore_seconds": None, "restored_by": "libvirt, from its image, before this call"},
                       False)
    facts = await bring_back(lv, record, timeout)
    remove_record(state_dir, record.name)
    return _result(record, facts, True)


def _result(record: Record, facts: Dict[str, Any], changed: bool) -> Dict[str, Any]:
    back_at = time.time()
    # state_bytes and ram_in_place as cpr_restore reports them, so that both kinds of VM share one report.
    return dict(record.report(), changed=changed, runstate=record.runstate_before, back_at=back_at,
                downtime_seconds=round(back_at - record.paused_at, 3) if record.paused_at else None,
                managed_by="libvirt", state_bytes=record.image_allocated, ram_in_place=False, **facts)
