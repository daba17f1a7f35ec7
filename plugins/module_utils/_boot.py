# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""boot_restore: the VMs a run saved are back the moment the host's new kernel is up, not when Ansible is.

install(), before the reboot, arms a boot entry: the state directory's ``.boot-restore`` (_boot_entry) gets this
engine as a zip, a launcher for the host's Python and a config; systemd gets a unit that runs the launcher once
the local file systems are mounted, before the services that start VMs and before multi-user.target; another
init runs the entry's ``run`` script. At boot, main() disarms the entry first (it runs once: a VM it brought back
runs on, and its saved state is history from then on), then brings back the VMs of that run saved on the boot
before, with cpr_restore's own code. It leaves their manifests (so held units stay held), the guest agents and
the clean-up to cpr_restore, which finds each VM back by the pid recorded in its ``.restoring`` record. A VM it
cannot bring back stays down with its files, for cpr_restore to report and retry.
"""

from __future__ import annotations

import asyncio
import io
import os
import platform
import shlex
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._boot_entry import (
    CONFIG,
    ENGINE,
    ENTRY_FILES,
    LAUNCHER,
    REBOOT_MARK,
    RESULT,
    RUN_SCRIPT,
    BootDir,
    boot_dir_path,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._boot_unit import (
    UNSAFE_CHARS,
    install_unit,
    installed_unit,
    remove_unit,
    unit_enabled,
    unit_path,
    unit_text,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._checksum import HAS_XXHASH
from ansible_collections.hypervisor.cpr.plugins.module_utils._directory import check_path
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint, discover
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, OptionError
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id, kernel_started_at, systemd_runs_host
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import Launcher
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import RestoreOptions, back_in_runstate
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import check_run
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import MANIFEST_SUFFIX, StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import binary_problem
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout

INIT_CHOICES = ("auto", "systemd", "script")
PACKAGE = "ansible_collections.hypervisor.cpr.plugins.module_utils"
# What the engine imports beside the standard library; the host's Python must import it at boot as it is, with -I.
# xxhash too when this process has it: the saves then record XXH3-128 checksums, which the boot restore verifies.
DEPENDENCIES = ("qemu.qmp",) + (("xxhash",) if HAS_XXHASH else ())
# Every entry of the zip gets this time: the same engine makes the same bytes, so an entry is not rewritten needlessly.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class BootOptions:
    """boot_restore's options for state present: how the restore at boot starts QEMU, and how long it may take."""

    timeout: float = 300.0
    launcher: Launcher = field(default_factory=Launcher)
    # systemd: a unit; script: the entry's run script, which the host's init must run; auto: systemd if it runs.
    init: str = "auto"


# --------------------------------------------------------------------------- the module: install and remove


def install(state_dir_path: str, run_id: str, options: BootOptions = BootOptions(),
            check_mode: bool = False) -> Dict[str, Any]:
    """Arm the boot entry for run_id's VMs; what the boot_restore module reports for state present."""
    check_timeout(options.timeout)
    check_path(state_dir_path)
    init = _init(options.init)
    python = sys.executable
    _check_python(python)
    path = boot_dir_path(state_dir_path)
    if init == "systemd" and UNSAFE_CHARS & set(path + python):
        raise OptionError(f"a systemd unit cannot run {python} on {path}: the paths hold a space, quote, backslash, "
                          "%, ; or $", hint="use a state_dir and a Python whose paths have none")
    files = {ENGINE: (engine_zip(), 0o600), LAUNCHER: (_launcher(state_dir_path, path), 0o600)}
    if init == "script":
        files[RUN_SCRIPT] = (_run_script(python, path), 0o700)
    config = {"run_id": run_id, "saved_boot_id": boot_id(), "timeout": options.timeout,
              "launch": {"mode": options.launcher.mode, "unit": options.launcher.unit}}
    unit = unit_text(python, state_dir_path, os.path.join(path, CONFIG), os.path.join(path, LAUNCHER), options.timeout) if init == "systemd" else None
    result = {"state": "present", "init": init, "run_id": run_id, "python": python,
              "entry": unit_path() if unit else os.path.join(path, RUN_SCRIPT),
              "reboot_mark": os.path.join(path, REBOOT_MARK)}
    with StateDir.open(state_dir_path) as state_dir:
        if not state_dir.exists and check_mode:
            return dict(result, changed=True)
        state_dir.create()
        with state_dir.lock(), BootDir.open(path) as boot:
            check_run(state_dir, run_id)
            armed = boot.read_object(CONFIG)
            changed = (armed != config or installed_unit() != unit or unit_enabled() != bool(unit)
                       or any(boot.read_bytes(name) != content for name, (content, _mode) in files.items())
                       or (init == "systemd" and boot.has(RUN_SCRIPT)))
            if changed and not check_mode:
                boot.create()
                # Disarmed while its parts change; armed again last.
                boot.remove(CONFIG, RUN_SCRIPT, REBOOT_MARK, RESULT)
                for name, (content, mode) in files.items():
                    boot.write_file(name, content, mode)
                install_unit(unit)
                boot.write_json(CONFIG, config)
    warnings = [] if options.init != "auto" or init == "systemd" else [
        f"systemd does not run this host: the VMs come back at boot only if its init runs {result['entry']} once the "
        "file systems are mounted, before anything starts VMs (set init=script once it does)"]
    return dict(result, changed=changed, warnings=warnings)


def remove(state_dir_path: str, run_id: Optional[str] = None, timeout: float = 300.0,
           check_mode: bool = False) -> Dict[str, Any]:
    """Remove the boot entry and the result of its last run (once cpr_restore reported it); for state absent."""
    check_path(state_dir_path)
    unit_there = installed_unit() is not None or unit_enabled()
    with StateDir.open(state_dir_path) as state_dir:
        if not state_dir.exists:
            entries: List[str] = []
        else:
            # A boot restore at work finishes first.
            with state_dir.lock(wait=timeout), BootDir.open(boot_dir_path(state_dir_path)) as boot:
                check_run(state_dir, run_id)
                entries = [e for e in ENTRY_FILES + (RESULT,) if boot.has(e)]
                if entries and not check_mode:
                    boot.remove(*entries)
                if not check_mode:
                    boot.remove_dir()
        if unit_there and not check_mode:
            remove_unit(reload=True)
    removed = [os.path.join(boot_dir_path(state_dir_path), e) for e in entries]
    removed += [unit_path()] if unit_there else []
    return {"changed": bool(removed), "state": "absent", "removed": removed}


def engine_zip() -> bytes:
    """This engine as it is loaded now (from Ansible's module payload, or from the collection): every module_util
    of the collection that is imported, which is all the boot restore imports, as a zip for the host's Python."""
    buffer = io.BytesIO()
    parts = PACKAGE.split(".")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        # Regular packages, so no other ansible_collections on the host's path mixes with this one.
        for depth in range(1, len(parts) + 1):
            archive.writestr(zipfile.ZipInfo("/".join(parts[:depth]) + "/__init__.py", ZIP_TIME), "")
        for name in sorted(n for n in sys.modules if n.startswith(PACKAGE + ".")):
            loader = getattr(sys.modules[name], "__loader__", None)
            source = loader.get_source(name) if loader is not None and hasattr(loader, "get_source") else None
            if source is None:
                raise CprError(f"the source of {name} cannot be read from {loader!r}",
                               hint="the boot restore ships the collection's Python sources; run it from a "
                               "collection installed as sources")
            archive.writestr(zipfile.ZipInfo(name.replace(".", "/") + ".py", ZIP_TIME), source)
    return buffer.getvalue()


def _init(choice: str) -> str:
    if choice not in INIT_CHOICES:
        raise OptionError(f"init must be one of {', '.join(INIT_CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "systemd" if systemd_runs_host() else "script"
    if choice == "systemd" and not systemd_runs_host():
        raise OptionError("init is systemd, but systemd does not run this host",
                          hint="use init=script and have the host's init run the entry's run script")
    return choice


def _check_python(python: str) -> None:
    """The boot restore runs this Python as root: it must be root's alone, and import our dependencies with -I."""
    problem = binary_problem(python, "the host's Python", follow=True)
    if problem:
        raise CprError(problem, hint="the boot restore would run it as root at boot; run the modules with a Python "
                       "that root alone can change (ansible_python_interpreter)")
    imports = "import " + ", ".join(DEPENDENCIES)
    check = subprocess.run([python, "-I", "-c", imports], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        raise CprError(f"{python} -I cannot import {', '.join(DEPENDENCIES)} ({last})",
                       hint="the boot restore runs it isolated (no PYTHONPATH, no user site-packages): install them "
                       "for that Python itself")


def _launcher(state_dir_path: str, path: str) -> bytes:
    return (
        "# Written by hypervisor.cpr's boot_restore module: run once at the next boot, it brings back the VMs its run\n"
        "# saved (see the module's documentation). The entry removes itself; boot_restore state=absent removes it too.\n"
        "import sys\n\n"
        f"sys.path.insert(0, {os.path.join(path, ENGINE)!r})\n"
        f"from {PACKAGE}._boot import main  # noqa: E402\n\n"
        f"sys.exit(main({state_dir_path!r}))\n").encode()


def _run_script(python: str, path: str) -> bytes:
    return (
        "#!/bin/sh\n"
        "# Written by hypervisor.cpr's boot_restore module. The host's init runs this at boot, once the file systems\n"
        "# are mounted and before anything starts VMs: it brings back the VMs saved before the reboot, once.\n"
        f"exec {shlex.quote(python)} -I -B {shlex.quote(os.path.join(path, LAUNCHER))}\n").encode()


# --------------------------------------------------------------------------- at boot


def _say(message: str, error: bool = False) -> None:
    """A line for the journal (systemd) or the console (the host's init): at boot no module logs for us."""
    stream = sys.stderr if error else sys.stdout
    stream.write(f"hypervisor.cpr boot restore: {message}\n")
    stream.flush()


def main(state_dir_path: str) -> int:
    """The boot entry's program (its boot.py calls it): restore, and say what happened on the journal or console."""
    started = time.time()
    try:
        result = run_at_boot(state_dir_path, started)
    except CprError as exc:
        _say(str(exc), error=True)
        return 1
    if result is None:
        _say("nothing to do (no armed entry, or the host has not rebooted)")
        return 0
    for vm in result["vms"]:
        _say(f"VM {vm['name']} back (QEMU pid {vm['pid']}) in {vm['seconds']:.2f} s")
    for vm in result["failed"]:
        _say(f"VM {vm['name']} not restored: {vm['error']}", error=True)
    return 1 if result["failed"] else 0


def run_at_boot(state_dir_path: str, started: float) -> Optional[Dict[str, Any]]:
    """Restore the armed run's VMs saved on the boot before; the result, also written to result.json.

    None when there is nothing to do: no armed entry, or it is the boot the VMs were saved in (no reboot yet).
    """
    with StateDir.open(state_dir_path) as state_dir, BootDir.open(boot_dir_path(state_dir_path)) as boot:
        config, error = boot.read_json(CONFIG)
        if error is not None:
            raise CprError(f"the boot entry's {boot.file(CONFIG)} cannot be used: {error}",
                           hint="no VM was restored at boot; cpr_restore restores them")
        if not isinstance(config, dict) or config.get("saved_boot_id") == boot_id():
            return None
        options = RestoreOptions(timeout=float(config["timeout"]), launcher=Launcher(**config["launch"]))
        with state_dir.lock(wait=options.timeout):
            result: Dict[str, Any] = {
                "boot_id": boot_id(), "kernel": platform.release(), "run_id": config["run_id"],
                "saved_boot_id": config["saved_boot_id"], "started_at": started,
                "kernel_started_at": kernel_started_at(), "reboot_at": boot.mtime(REBOOT_MARK),
                "finished_at": None, "vms": [], "failed": []}
            boot.write_json(RESULT, result)
            _disarm(boot)
            mine, unreadable = _manifests_of(state_dir, config["run_id"], config["saved_boot_id"])
            running = {e.name: e for e in discover()} if mine else {}
            outcomes = asyncio.run(_restore_all(mine, state_dir, options, running))
            result["vms"] = [o for o in outcomes if "error" not in o]
            result["failed"] = unreadable + [o for o in outcomes if "error" in o]
            result["finished_at"] = time.time()
            boot.write_json(RESULT, result)
            boot.remove(ENGINE)
    return result


def _disarm(boot: BootDir) -> None:
    """The entry runs once: whatever happens next, no later boot runs it again."""
    boot.remove(CONFIG, LAUNCHER, RUN_SCRIPT, REBOOT_MARK)
    remove_unit(reload=False)


def _manifests_of(state_dir: StateDir, run_id: str,
                  saved_boot_id: str) -> Tuple[List[Manifest], List[Dict[str, Any]]]:
    """The manifests of this run saved on that boot, and a failure for each manifest that cannot be read."""
    mine: List[Manifest] = []
    unreadable: List[Dict[str, Any]] = []
    for name in state_dir.entries(MANIFEST_SUFFIX):
        try:
            manifest = state_dir.read_manifest(name)
        except CprError as exc:
            unreadable.append({"name": name, "error": str(exc)})
            continue
        if manifest.run_id == run_id and manifest.boot_id == saved_boot_id:
            mine.append(manifest)
    return mine, unreadable


async def _restore_all(manifests: List[Manifest], state_dir: StateDir, options: RestoreOptions,
                       running: Dict[str, VmEndpoint]) -> List[Dict[str, Any]]:
    return list(await asyncio.gather(*(_bring_back(m, state_dir, options, running.get(m.name)) for m in manifests)))


async def _bring_back(manifest: Manifest, state_dir: StateDir, options: RestoreOptions,
                      existing: Optional[VmEndpoint]) -> Dict[str, Any]:
    """One VM back, or why not: at boot a failure stays with its VM and never stops the others."""
    started = time.monotonic()
    try:
        pid, back_at = await asyncio.wait_for(back_in_runstate(manifest, state_dir, options, existing),
                                              options.timeout)
    except asyncio.TimeoutError:
        return {"name": manifest.name, "error": f"not back within {options.timeout:g} s (timeout)"}
    except Exception as exc:  # pylint: disable=broad-except  # one VM's failure, whatever it is, is only its own
        return {"name": manifest.name, "error": str(exc)}
    seconds = time.monotonic() - started
    record = state_dir.read_restoring(manifest.name) or {}
    state_dir.write_restoring(manifest.name, dict(record, at_boot=True, boot_restore_seconds=seconds))
    return {"name": manifest.name, "pid": pid, "back_at": back_at or record.get("back_at"), "seconds": seconds}
