# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run lock of a host: one hypervisor.cpr run (a playbook run, an AWX job) at a time.

``<state_dir>/.hypervisor-cpr.run`` is created with O_EXCL and holds, as JSON,
the run id and owner of the run that holds it and when it took it. Unlike the
short flock that cpr_save and cpr_restore hold while they work, it spans a
whole run, reboot included, so it must outlive every process: it is a file,
released explicitly. A run that was interrupted left it behind; the same run
id takes it again, and ``force`` takes it from another run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from typing import Any, Dict, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils.manifest import (
    LockedError,
    ensure_state_dir,
    fsync_dir,
    write_json_atomically,
)

RUN_LOCK_NAME = ".hypervisor-cpr.run"


class RunLockedError(LockedError):
    """Another run holds the host's run lock; ``holder`` is what its lock records."""

    def __init__(self, message: str, holder: Dict[str, Any], hint: Optional[str] = None) -> None:
        self.holder = holder
        super().__init__(message, hint=hint)


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, RUN_LOCK_NAME)


def read_lock(state_dir: str) -> Optional[Dict[str, Any]]:
    """The holder recorded in the lock, None when there is no lock; an unreadable lock has run_id None."""
    path = lock_path(state_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"run_id": None, "owner": None, "error": f"unreadable lock: {exc}"}
    if not isinstance(data, dict):
        return {"run_id": None, "owner": None, "error": "unreadable lock: not a JSON object"}
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


def _write_new(path: str, record: Dict[str, Any]) -> bool:
    """Create the lock with O_EXCL; False when it exists already."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(record, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    fsync_dir(os.path.dirname(path))
    return True


def acquire(state_dir: str, run_id: str, owner: Optional[str] = None, force: bool = False,
            details: Optional[Dict[str, Any]] = None, check_mode: bool = False) -> Dict[str, Any]:
    """Take the host's run lock for run_id; return what the run_lock module reports."""
    if not run_id:
        raise LockedError("a run id is needed to take the run lock", hint="set run_id to something unique to this run")
    if not check_mode or os.path.lexists(state_dir):
        ensure_state_dir(state_dir, create=not check_mode)
    path = lock_path(state_dir)
    record = _record(run_id, owner, details)
    holder = read_lock(state_dir)
    if holder is None:
        if check_mode:
            return {"changed": True, "lock_file": path, "lock": record, "previous": None}
        if _write_new(path, record):
            return {"changed": True, "lock_file": path, "lock": record, "previous": None}
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
        write_json_atomically(path, record)
    return {"changed": True, "lock_file": path, "lock": record, "previous": holder}


def release(state_dir: str, run_id: str, force: bool = False, check_mode: bool = False) -> Dict[str, Any]:
    """Give the host's run lock back; only the run that holds it (or force) may."""
    path = lock_path(state_dir)
    holder = read_lock(state_dir) if os.path.isdir(state_dir) else None
    if holder is None:
        return {"changed": False, "lock_file": path, "lock": None, "previous": None}
    if holder.get("run_id") != run_id and not force:
        raise RunLockedError(
            f"the host's run lock is held by {_describe(holder)}, not by run {run_id!r} ({path})", holder,
            hint="it is not released; use force to remove it anyway",
        )
    if not check_mode:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fsync_dir(state_dir)
    return {"changed": True, "lock_file": path, "lock": None, "previous": holder}
