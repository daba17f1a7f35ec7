# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""run_lock: one hypervisor.cpr run (a playbook run, an AWX job) on a host at a time.

The run lock is a file in the state directory, created with O_EXCL, that holds
as JSON the run id and owner of the run that holds it and when it took it.
Unlike the flock that cpr_save and cpr_restore hold while they work, it spans
a whole run, reboot included, so it must outlive every process: it is a file,
released explicitly. A run that was interrupted left it behind; the same run
id takes it again, and ``force`` takes it from another run.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, RunLockedError
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir


def read_lock(state_dir: StateDir) -> Optional[Dict[str, Any]]:
    """The holder recorded in the lock, None when there is no lock; an unreadable lock has run_id None."""
    data, error = state_dir.read_json(state_dir.run_lock_path)
    if error is None and data is not None and not isinstance(data, dict):
        error = "not a JSON object"
    if error is not None:
        return {"run_id": None, "owner": None, "error": f"unreadable lock: {error}"}
    return data


def _describe(holder: Dict[str, Any]) -> str:
    since = holder.get("acquired_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else "an unknown time"
    if holder.get("error"):
        return f"a run that cannot be identified ({holder['error']})"
    return f"run {holder.get('run_id')!r} of {holder.get('owner') or 'an unknown owner'} since {when}"


def _record(run_id: str, owner: Optional[str], details: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "run_id": run_id,
        "owner": owner,
        "acquired_at": time.time(),
        "host": platform.node(),
        "pid": os.getpid(),
        "details": details or {},
    }


def acquire(state_dir_path: str, run_id: str, owner: Optional[str] = None, force: bool = False,
            details: Optional[Dict[str, Any]] = None, check_mode: bool = False) -> Dict[str, Any]:
    """Take the host's run lock for run_id; return what the run_lock module reports."""
    if not run_id:
        raise LockedError("a run id is needed to take the run lock", hint="set run_id to something unique to this run")
    state_dir = StateDir.open(state_dir_path, create=not check_mode)
    path = state_dir.run_lock_path
    record = _record(run_id, owner, details)
    taken = {"changed": True, "lock_file": path, "lock": record, "previous": None}
    holder = read_lock(state_dir)
    if holder is None:
        if check_mode or state_dir.create_exclusive(path, record):
            return taken
        # Another run created it between our read and our create.
        holder = read_lock(state_dir) or {}
    if holder.get("run_id") == run_id:
        return {"changed": False, "lock_file": path, "lock": holder, "previous": None}
    if not force:
        raise RunLockedError(
            f"the host is locked by {_describe(holder)} ({path})", holder,
            hint="wait for that run to end; if it was interrupted, run again with the same run id "
            f"({holder.get('run_id')!r}) or with force to take the lock over",
        )
    if not check_mode:
        state_dir.write_json(path, record)
    return dict(taken, previous=holder)


def release(state_dir_path: str, run_id: str, force: bool = False, check_mode: bool = False) -> Dict[str, Any]:
    """Give the host's run lock back; only the run that holds it (or force) may."""
    state_dir = StateDir.open(state_dir_path, create=False)
    path = state_dir.run_lock_path
    holder = read_lock(state_dir) if state_dir.exists else None
    if holder is None:
        return {"changed": False, "lock_file": path, "lock": None, "previous": None}
    if holder.get("run_id") != run_id and not force:
        raise RunLockedError(
            f"the host's run lock is held by {_describe(holder)}, not by run {run_id!r} ({path})", holder,
            hint="it is not released; use force to remove it anyway",
        )
    if not check_mode:
        state_dir.remove_run_lock()
    return {"changed": True, "lock_file": path, "lock": None, "previous": holder}
