# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""run_lock: one hypervisor.cpr run (a playbook run, an AWX job) on a host at a time.

The run lock is a file in the state directory that holds, as JSON, the run id and
owner of the run that holds the host, when it took it, and the process that last
worked for it (pid, start time, boot id). Unlike the flock that a module holds
while it works, it spans a whole run, reboot included, so it is a file,
released explicitly. Every change to it is made under the flock, so two runs
never both see it free.

A run that was interrupted left it behind: the same run id takes it again, and
``force`` takes it from another run, but never while a process of the holder
still works on the host. cpr_save, cpr_restore and vm_power check it too
(check_run): they refuse to act for any run but the holder.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, RunLockedError
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import is_running, process_identity
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir


def read_lock(state_dir: StateDir) -> Optional[Dict[str, Any]]:
    """The holder recorded in the lock, None when there is no lock; an unreadable lock has run_id None."""
    data, error = state_dir.read_run_lock()
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


def _refuse_while_working(holder: Dict[str, Any], path: str) -> None:
    """A process of the holder still works on the host: nobody, the same run id included, may enter now."""
    process = holder.get("process") or {}
    if is_running(process) and process["pid"] != os.getpid():
        raise RunLockedError(
            f"{_describe(holder)} still works on the host: its process {process['pid']} runs ({path})", holder,
            hint="wait for that process to end; the run is not dead, so neither its run id nor force takes it over")


def acquire(state_dir_path: str, run_id: str, owner: Optional[str] = None, force: bool = False,
            details: Optional[Dict[str, Any]] = None, check_mode: bool = False) -> Dict[str, Any]:
    """Take the host's run lock for run_id; return what the run_lock module reports."""
    if not run_id:
        raise LockedError("a run id is needed to take the run lock", hint="set run_id to something unique to this run")
    with StateDir.open(state_dir_path) as state_dir:
        path = state_dir.run_lock_path
        record = {"run_id": run_id, "owner": owner, "acquired_at": time.time(), "host": platform.node(),
                  "process": process_identity(os.getpid()), "details": details or {}}
        if check_mode and not state_dir.exists:
            return {"changed": True, "lock_file": path, "lock": record, "previous": None}
        state_dir.create()
        with state_dir.lock():
            holder = read_lock(state_dir)
            if holder is not None:
                _refuse_while_working(holder, path)
                if holder.get("run_id") == run_id:
                    return {"changed": False, "lock_file": path, "lock": holder, "previous": None}
                if not force:
                    raise RunLockedError(
                        f"the host is locked by {_describe(holder)} ({path})", holder,
                        hint="wait for that run to end; if it was interrupted, run again with the same run id "
                        f"({holder.get('run_id')!r}) or with force to take the lock over")
            if not check_mode:
                state_dir.write_run_lock(record)
            return {"changed": True, "lock_file": path, "lock": record, "previous": holder}


def release(state_dir_path: str, run_id: str, force: bool = False, check_mode: bool = False) -> Dict[str, Any]:
    """Give the host's run lock back; only the run that holds it (or force) may."""
    with StateDir.open(state_dir_path) as state_dir:
        path = state_dir.run_lock_path
        if not state_dir.exists or read_lock(state_dir) is None:
            return {"changed": False, "lock_file": path, "lock": None, "previous": None}
        with state_dir.lock():
            holder = read_lock(state_dir)
            if holder is None:
                return {"changed": False, "lock_file": path, "lock": None, "previous": None}
            if holder.get("run_id") != run_id and not force:
                raise RunLockedError(
                    f"the host's run lock is held by {_describe(holder)}, not by run {run_id!r} ({path})", holder,
                    hint="it is not released; use force to remove it anyway")
            if not check_mode:
                state_dir.remove_run_lock()
        return {"changed": True, "lock_file": path, "lock": None, "previous": holder}


def check_run(state_dir: StateDir, run_id: Optional[str]) -> None:
    """Refuse to act for any run but the one that holds the host; the holder's record names this process.

    Called under the directory's flock by the modules that change VMs. Without a run lock any caller may act.
    """
    holder = read_lock(state_dir)
    if holder is None:
        return
    if holder.get("run_id") is None or holder.get("run_id") != run_id:
        given = f"run id {run_id!r}" if run_id else "no run id"
        raise RunLockedError(
            f"the host is held by {_describe(holder)} ({state_dir.run_lock_path}), and this call has {given}", holder,
            hint="only the run that holds the host may save, restore, stop or start its VMs: give its run_id, wait "
            "for it to end, or take the host over with run_lock force once that run is known to be dead")
    state_dir.write_run_lock(dict(holder, process=process_identity(os.getpid())))
