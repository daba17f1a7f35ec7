# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save and restore many VMs at once with QEMU's cpr-reboot migration mode.

Save, per VM and concurrently: check readiness, suspend guests that must be
suspended, set mode cpr-reboot and the capabilities, migrate to
``file:<state_dir>/<name>.state``, fsync, write the manifest. Only when every
VM of the call is saved do the QEMUs quit; a failure before that resumes
every VM exactly as it was (all_or_nothing) and removes what was written.

Restore, per manifest and concurrently: start a new QEMU from the recorded
argv with the machine type pinned and ``-incoming defer``, load the state,
wake guests we suspended, check the guest agent, and only then remove the
state file and manifest (or, with keep_state, rename them to ``*.restored``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils.discover import (
    VmEndpoint,
    check_unique_names,
    discover,
    explicit_endpoints,
    select_by_name,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.errors import (
    CommandFailedError,
    CprError,
    NotAnsweringError,
    NotReadyError,
    raise_failures,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.manifest import (
    Manifest,
    ManifestError,
    check_name,
    ensure_state_dir,
    host_lock,
    keep_restored,
    list_manifests,
    manifest_path,
    read_manifest,
    remove_saved,
    STOPPED_SUFFIX,
    StopRecord,
    saving_path,
    state_path,
    stopped_path,
    sync_and_digest,
    verify_state_file,
    write_json_atomically,
    write_manifest,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils.memory import filesystem_of
from ansible_collections.hypervisor.cpr.plugins.module_utils.qmp import QmpSession, open_agent, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils.suspend import runstate, suspend_guest, wake_guest, wait_runstate
from ansible_collections.hypervisor.cpr.plugins.module_utils.vm import (
    SAVABLE_RUNSTATES,
    VmFacts,
    compile_query,
    gather_all,
    run_query,
    version_tuple,
)

POLL_SECONDS = 0.01
# The first polls come sooner: a small VM saves or loads in a few milliseconds.
FIRST_POLL_SECONDS = 0.001
# Seconds to wait for a socket to answer; timeout options bound the work itself.
CONNECT_TIMEOUT = 10.0
# A guest asked to suspend may still get there after we gave up waiting.
SUSPEND_SETTLE_SECONDS = 3.0
# Device state (everything but guest RAM) stays well below this per VM.
DEVICE_STATE_MARGIN = 64 << 20
# Below this much RAM to copy, mapped-ram's fixed layout gains nothing.
MAPPED_RAM_MIN_BYTES = 256 << 20
MULTIFD_CHANNELS = 4
# QEMU caps every migration at max-bandwidth, 128 MiB/s unless set, even one to a
# file of a stopped VM: a RAM copy would run at that speed instead of the disk's.
MAX_BANDWIDTH = 1 << 40
MIN_QEMU_MAPPED_RAM = (9, 0, 0)
SUSPEND_CHOICES = ("vfio", "all", "none")
ROLLED_BACK = "rolled back and resumed, because another VM of this call failed to save"
# How a VM recorded for a fresh start went down (vm_power records how it shut a guest down).
HOW_QEMU_DIED = "qemu-died-during-save"
FINAL_MIGRATION_STATES = ("completed", "failed", "cancelled")


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

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreResult:
    name: str
    changed: bool
    pid: Optional[int]
    runstate: str
    restore_seconds: float
    downtime_seconds: Optional[float]
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

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class _SaveJob:
    """One VM being saved, and what is needed to undo it."""

    facts: VmFacts
    endpoint: VmEndpoint
    suspend: bool
    mapped_ram: Optional[bool] = None
    cwd: str = "/"
    capabilities: Dict[str, bool] = field(default_factory=dict)
    parameters: Dict[str, Any] = field(default_factory=dict)
    previous_capabilities: Dict[str, bool] = field(default_factory=dict)
    previous_parameters: Dict[str, Any] = field(default_factory=dict)
    suspended_by_us: bool = False
    paused_at: float = 0.0
    # Set once QEMU has written a complete state file.
    manifest: Optional[Manifest] = None
    result: Optional[SaveResult] = None
    undo_error: Optional[str] = None
    # Its QEMU died during the save: recorded for vm_power to start it again.
    died: bool = False


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as handle:
        return handle.read().strip()


# --------------------------------------------------------------------------- save


def migration_settings(facts: VmFacts, available: List[str],
                       mapped_ram: Optional[bool] = None) -> Tuple[Dict[str, bool], Dict[str, Any]]:
    """The capabilities and parameters a save uses; a restore sets the same.

    mapped_ram None decides by the amount of RAM copied; True or False forces it.
    """
    ram_in_place = bool(facts.cpr and facts.cpr.ram_in_place)
    copy_bytes = facts.cpr.ram_copy_bytes if facts.cpr else 0
    capabilities = {"x-ignore-shared": ram_in_place}
    parameters: Dict[str, Any] = {"mode": "cpr-reboot"}
    if copy_bytes:
        parameters["max-bandwidth"] = MAX_BANDWIDTH
    supported = "mapped-ram" in available and version_tuple(facts.qemu_version) >= MIN_QEMU_MAPPED_RAM
    wanted = copy_bytes >= MAPPED_RAM_MIN_BYTES if mapped_ram is None else mapped_ram
    if mapped_ram and copy_bytes and not supported:
        raise NotReadyError(f"mapped_ram is true, but QEMU {facts.qemu_version} lacks the mapped-ram capability",
                            facts.name, hint="use QEMU 9.0 or later, or mapped_ram auto or false")
    # mapped-ram writes RAM at fixed offsets with several threads: faster for big copies.
    if supported and wanted and copy_bytes:
        capabilities.update({"mapped-ram": True, "multifd": True})
        parameters["multifd-channels"] = MULTIFD_CHANNELS
    elif supported:
        # Set off explicitly: a QEMU restored from a mapped-ram save still has them on.
        capabilities.update({"mapped-ram": False, "multifd": False})
    return capabilities, parameters


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


async def _set_migration(session: QmpSession, capabilities: Dict[str, bool], parameters: Dict[str, Any]) -> None:
    if parameters:
        await session.execute("migrate-set-parameters", parameters)
    if capabilities:
        await session.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": name, "state": state} for name, state in capabilities.items()]})


async def _current_migration(session: QmpSession, capabilities: List[str], parameters: List[str]) -> Tuple[Dict[str, bool], Dict[str, Any]]:
    caps = {c["capability"]: c["state"] for c in await session.execute("query-migrate-capabilities")}
    params = await session.execute("query-migrate-parameters")
    return ({name: caps.get(name, False) for name in capabilities},
            {name: params[name] for name in parameters if name in params})


async def _pause(delay: float) -> float:
    """Sleep, and return the next, longer delay (up to POLL_SECONDS)."""
    await asyncio.sleep(delay)
    return min(delay * 2, POLL_SECONDS)


async def wait_migration(session: QmpSession, timeout: float, what: str) -> Dict[str, Any]:
    """Poll query-migrate until the migration ends; a failure carries QEMU's reason."""
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL_SECONDS
    while True:
        # QEMU's monitor does not answer while a mapped-ram load or the end of a save holds its main loop
        # (seconds for a few GiB): the whole timeout is the bound, not the session's per-command one.
        info = await session.execute("query-migrate", timeout=max(deadline - time.monotonic(), 1.0))
        status = info.get("status", "none")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise CommandFailedError(f"{what} {status}: {info.get('error-desc', 'QEMU gave no reason')}", session.vm)
        if time.monotonic() > deadline:
            raise NotAnsweringError(f"{what} did not complete within {timeout:g} s (status {status})", session.vm,
                                    hint="raise timeout if the state is large and the disk slow")
        delay = await _pause(delay)


async def _save_to_file(session: QmpSession, job: _SaveJob, state_dir: str, reboot: str, timeout: float,
                        ready: Callable[[], Awaitable[None]]) -> Manifest:
    facts = job.facts
    name = facts.name
    available = [c["capability"] for c in await session.execute("query-migrate-capabilities")]
    job.capabilities, job.parameters = migration_settings(facts, available, job.mapped_ram)
    # The guest stops serving at the suspend, so its blackout starts there.
    job.paused_at = time.time()
    if job.suspend and facts.runstate == "running":
        # Set before asking, so an undo wakes a guest that suspends after a timeout.
        job.suspended_by_us = True
        await suspend_guest(session, job.endpoint, timeout)
    runstate_before = "suspended" if job.suspended_by_us else facts.runstate or "running"

    job.previous_capabilities, job.previous_parameters = await _current_migration(
        session, list(job.capabilities), list(job.parameters))
    await _set_migration(session, job.capabilities, job.parameters)
    blocked = (await session.execute("query-migrate")).get("blocked-reasons", [])
    if blocked:
        raise NotReadyError(f"QEMU blocks a cpr-reboot migration: {'; '.join(blocked)}", name)

    path = state_path(state_dir, name)
    job.manifest = Manifest(
        name=name, argv=facts.argv, cwd=job.cwd, qmp_socket=facts.qmp_socket, qga_socket=facts.qga_socket,
        machine_type=facts.machine_type or "", qemu_version=facts.qemu_version or "",
        runstate_before=runstate_before, suspended_by_us=job.suspended_by_us,
        agent_answered=bool(facts.agent.answering) or job.suspended_by_us,
        ram_in_place=bool(facts.cpr and facts.cpr.ram_in_place),
        memory_backends=[b.to_dict() for b in facts.memory_backends],
        capabilities=job.capabilities, parameters=job.parameters, state_file=path, reboot=reboot,
        paused_at=job.paused_at, boot_id=boot_id(), kernel=platform.release(),
    )
    # Written before the VM stops (a thread, so that the VMs' fsyncs overlap); the manifest gets the real paused_at.
    await asyncio.to_thread(write_manifest, state_dir, job.manifest, True)
    await ready()
    started = time.monotonic()
    if not job.suspended_by_us:
        job.paused_at = job.manifest.paused_at = time.time()
    await session.execute("migrate", {"uri": f"file:{path}"})
    await wait_migration(session, timeout, "the save")
    state = await runstate(session)
    if state != "postmigrate":
        raise CommandFailedError(f"after the save the VM is {state}, not postmigrate", name)
    job.result = await asyncio.to_thread(_seal, state_dir, job.manifest, started)
    return job.manifest


def _seal(state_dir: str, manifest: Manifest, started: Optional[float]) -> SaveResult:
    """fsync and checksum a complete state file, then turn the .saving record into the manifest.

    started (monotonic) is when QEMU was told to migrate; None when an earlier run did that.
    """
    digest = sync_and_digest(manifest.state_file)
    manifest.state_bytes, manifest.state_sha256 = digest["state_bytes"], digest["state_sha256"]
    manifest.saved_at = time.time()
    if started is not None:
        manifest.save_seconds = time.monotonic() - started
    write_manifest(state_dir, manifest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(saving_path(state_dir, manifest.name))
    return SaveResult(manifest.name, True, manifest.state_file, manifest.state_bytes, manifest.ram_in_place,
                      manifest.runstate_before, manifest.suspended_by_us, manifest.paused_at,
                      manifest.save_seconds if started is not None else 0.0, False)


def process_cwd(pid: Optional[int]) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "/"


async def _undo_save(session: QmpSession, job: _SaveJob, state_dir: str, timeout: float) -> None:
    """Bring the VM back exactly as it was and remove what the save wrote."""
    info = await session.execute("query-migrate")
    if info.get("status") not in (None, "none", *FINAL_MIGRATION_STATES):
        await session.execute("migrate_cancel")
        with contextlib.suppress(CprError):
            await wait_migration(session, timeout, "the cancelled save")
    state = await runstate(session)
    if state == "postmigrate" and job.manifest is not None and job.manifest.runstate_before != "running":
        # From postmigrate, QEMU 10.0 aborts on cont when the guest was suspended
        # ("invalid runstate transition"), and a paused VM would have to run to
        # get back to paused; neither can be migrated again. The state file is
        # complete, so the exact way back is the restore path: a new QEMU loads it.
        await quit_qemu(session, session.pid or job.facts.pid, timeout)
        await _restore_one(job.manifest, state_dir, timeout, keep_state=False, launch_mode="argv", unit="",
                           verify_checksum=False, running={})
        return
    if state == "postmigrate":
        await session.execute("cont")
        state = await runstate(session)
    if job.suspended_by_us and state == "running":
        with contextlib.suppress(CprError):
            state = await wait_runstate(session, "suspended", SUSPEND_SETTLE_SECONDS, "the suspend we asked for")
    if job.suspended_by_us and state == "suspended":
        await wake_guest(session, timeout)
    if job.previous_parameters or job.previous_capabilities:
        await _set_migration(session, job.previous_capabilities, job.previous_parameters)
    remove_saved(state_dir, job.facts.name)


async def _undo_noting_failure(session: QmpSession, job: _SaveJob, state_dir: str, timeout: float) -> None:
    try:
        await _undo_save(session, job, state_dir, timeout)
    except CprError as exc:
        job.undo_error = str(exc)


async def quit_qemu(session: QmpSession, pid: Optional[int], timeout: float) -> None:
    """Tell QEMU to quit and wait for its process to end."""
    with contextlib.suppress(CprError):
        await session.execute("quit")
    if pid and not await wait_exit(pid, timeout):
        # The state is on disk and the manifest written: ending the process loses nothing.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await wait_exit(pid, timeout)


async def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL_SECONDS
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        delay = await _pause(delay)
    return True


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def _save_one(job: _SaveJob, state_dir: str, reboot: str, timeout: float, quit_after: bool,
                    saved: "asyncio.Future[bool]", decision: "asyncio.Future[bool]",
                    prepared: "asyncio.Future[None]", everyone: "List[asyncio.Future[None]]") -> SaveResult:
    name = job.facts.name

    async def ready() -> None:
        """Stop this VM only once every VM of the call is ready to stop: the host's blackout starts at the first."""
        prepared.set_result(None)
        await asyncio.wait(everyone)

    async with open_qmp(job.facts.qmp_socket, vm=name, timeout=CONNECT_TIMEOUT) as session:
        try:
            await _save_to_file(session, job, state_dir, reboot, timeout, ready)
        except BaseException as exc:
            if not prepared.done():
                prepared.set_result(None)
            saved.set_result(False)
            await _undo_noting_failure(session, job, state_dir, timeout)
            if job.undo_error is not None and _died_unsaved(job, state_dir):
                await asyncio.to_thread(_record_for_a_fresh_start, job, state_dir)
            if isinstance(exc, CprError) and exc.vm is None:
                exc.vm = name
            raise
        saved.set_result(True)
        if not await decision:
            await _undo_noting_failure(session, job, state_dir, timeout)
            raise CprError(ROLLED_BACK, name)
        result = job.result
        if result is None:
            raise CprError("the save ended without a result", name)
        if quit_after:
            await quit_qemu(session, session.pid or job.facts.pid, timeout)
            result.quit = True
        return result


def _died_unsaved(job: _SaveJob, state_dir: str) -> bool:
    return bool(job.facts.pid) and not _alive(job.facts.pid or 0) and not os.path.exists(
        manifest_path(state_dir, job.facts.name))


def _record_for_a_fresh_start(job: _SaveJob, state_dir: str) -> None:
    """A QEMU that died before its state file was complete took the guest's running state with it.

    Its command line is recorded as vm_power records a shut-down guest, so that ``vm_power state=started``
    (which the kernel_update role runs) boots the VM again; the partial state file is removed.
    """
    facts = job.facts
    record_stopped(state_dir, facts, job.cwd, bool(facts.agent.answering) or job.suspended_by_us, HOW_QEMU_DIED)
    remove_saved(state_dir, facts.name)
    job.died = True


def record_stopped(state_dir: str, facts: VmFacts, cwd: str, agent_answered: bool, how: str) -> None:
    """Write ``<state_dir>/<name>.stopped``: what vm_power state=started needs to boot the VM again."""
    record = StopRecord(facts.name, fresh_argv(facts.argv), cwd, facts.qmp_socket, facts.qga_socket, agent_answered,
                        how, time.time())
    write_json_atomically(stopped_path(state_dir, facts.name), asdict(record))


def _already_saved(state_dir: str, names: List[str], running: Dict[str, VmEndpoint],
                   restoring: Set[str]) -> List[SaveResult]:
    """Manifests whose QEMU is gone, or being restored: the save of an earlier run, unchanged now."""
    results = []
    for name in names:
        if (name in running and name not in restoring) or not os.path.exists(manifest_path(state_dir, name)):
            continue
        manifest = read_manifest(manifest_path(state_dir, name))
        results.append(SaveResult(name, False, manifest.state_file, manifest.state_bytes, manifest.ram_in_place,
                                  manifest.runstate_before, manifest.suspended_by_us, manifest.paused_at, 0.0, True))
    return results


def _runstates_beside_manifests(state_dir: str, names: List[str],
                                running: Dict[str, VmEndpoint]) -> Dict[str, Optional[str]]:
    """The runstate of every running VM that has a manifest: an earlier run stopped before it finished.

    A QEMU a restore started and still waiting for its state (inmigrate) loses nothing in a reboot, and with
    reboot none there is no reboot: to a save such a VM is still saved, and cpr_restore finishes it. The QEMU
    that was saved and not yet told to quit waits in postmigrate, its state sealed: the save only has to quit
    it. One that runs its guest again before a reboot is neither.
    """
    endpoints = [running[n] for n in names if n in running and os.path.exists(manifest_path(state_dir, n))]
    if not endpoints:
        return {}

    async def state_of(endpoint: VmEndpoint) -> Tuple[str, Optional[str]]:
        try:
            async with open_qmp(endpoint.qmp_socket, vm=endpoint.name, timeout=CONNECT_TIMEOUT) as session:
                return endpoint.name, await runstate(session)
        except CprError:
            return endpoint.name, None

    async def states() -> List[Tuple[str, Optional[str]]]:
        return list(await asyncio.gather(*(state_of(e) for e in endpoints)))

    return dict(asyncio.run(states()))


async def _quit_saved(endpoints: List[VmEndpoint]) -> None:
    """Quit QEMUs whose save completed and was sealed, when an earlier run stopped before it quit them."""
    for endpoint in endpoints:
        async with open_qmp(endpoint.qmp_socket, vm=endpoint.name, timeout=CONNECT_TIMEOUT) as session:
            await quit_qemu(session, session.pid or endpoint.pid, CONNECT_TIMEOUT)


def save(vms: Optional[List[Dict[str, Any]]] = None, names: Optional[List[str]] = None, query: Optional[str] = None,
         state_dir: str = "/var/lib/qemu-cpr", reboot: str = "kexec", ignore_shared: Optional[bool] = None,
         timeout: float = 300.0, quit_after: bool = True, suspend: str = "vfio", all_or_nothing: bool = True,
         check_mode: bool = False, mapped_ram: Optional[bool] = None) -> Dict[str, Any]:
    """Save the selected VMs; return what the cpr_save module reports."""
    expression = compile_query(query)
    if not check_mode or os.path.lexists(state_dir):
        ensure_state_dir(state_dir, create=not check_mode)
    found = explicit_endpoints(vms) if vms else discover()
    running = {e.name: e for e in found}
    saved_names = names or [m.name for m in list_manifests(state_dir)]
    states = _runstates_beside_manifests(state_dir, saved_names, running)
    restoring = {n for n, state in states.items()
                 if state == "inmigrate" or (reboot == "none" and state not in (None, "postmigrate"))}
    earlier = _already_saved(state_dir, saved_names, running, restoring)
    unquit = [running[n] for n, state in states.items() if state == "postmigrate" and quit_after]
    if unquit:
        if not check_mode:
            asyncio.run(_quit_saved(unquit))
        for result in _already_saved(state_dir, [e.name for e in unquit], {}, set()):
            result.changed, result.quit = True, not check_mode
            earlier.append(result)
    wanted = [n for n in (names or running) if n not in {r.name for r in earlier}]
    check_unique_names([e for e in found if e.name in wanted])
    selected_endpoints = select_by_name(found, wanted) if wanted else []
    for endpoint in selected_endpoints:
        check_name(endpoint.name)
        if os.path.exists(manifest_path(state_dir, endpoint.name)):
            raise CprError(
                f"the VM runs, but a manifest from an earlier save exists ({manifest_path(state_dir, endpoint.name)})",
                endpoint.name, hint="run cpr_restore first: it finishes an interrupted restore and removes the manifest",
            )

    facts = asyncio.run(gather_all(selected_endpoints, timeout=CONNECT_TIMEOUT, reboot=reboot,
                                   ignore_shared=ignore_shared))
    interrupted = [f for f in facts if os.path.exists(saving_path(state_dir, f.name))]
    if interrupted and not check_mode:
        earlier += asyncio.run(_finish_interrupted(interrupted, state_dir, quit_after))
        facts = [f for f in facts if f.name not in {r.name for r in earlier}]
    if expression is not None:
        chosen = {vm["name"] for vm in run_query(expression, query or "", [f.to_dict() for f in facts])}
        facts = [f for f in facts if f.name in chosen]
    for vm_facts in facts:
        if not vm_facts.argv and vm_facts.cpr and not vm_facts.error:
            vm_facts.cpr.ready = False
            vm_facts.cpr.reasons.append("its QEMU command line cannot be read from /proc, so it could not be started again")
    not_ready = [f for f in facts if f.cpr and not f.cpr.ready]
    if not_ready:
        raise NotReadyError("; ".join(f"VM {f.name} is not ready: {' / '.join(f.cpr.reasons)}"
                                      for f in not_ready if f.cpr),
                            hint="nothing was touched")
    if facts:
        check_space(state_dir, facts, reboot)
    plan = [f.name for f in facts]
    if check_mode or not facts:
        changed = bool(facts) or any(r.changed for r in earlier)
        return {"changed": changed, "vms": [r.to_dict() for r in earlier], "would_save": plan}

    by_name = {e.name: e for e in selected_endpoints}
    with host_lock(state_dir):
        results = asyncio.run(_save_all(facts, by_name, state_dir, reboot, timeout, quit_after, suspend, all_or_nothing,
                                        mapped_ram))
    return {"changed": True, "vms": [r.to_dict() for r in earlier + results], "would_save": plan}


async def _finish_interrupted(facts: List[VmFacts], state_dir: str, quit_after: bool) -> List[SaveResult]:
    """Deal with the .saving records of an earlier run that stopped in the middle of a save.

    A QEMU in postmigrate with its migration completed wrote a whole state
    file: seal it and quit, as that run would have. A VM that runs again was
    rolled back: its record and partial file are stale.
    """
    finished = []
    for vm_facts in facts:
        record = read_manifest(saving_path(state_dir, vm_facts.name))
        if vm_facts.runstate == "postmigrate" and vm_facts.migration.get("status") == "completed":
            result = _seal(state_dir, record, None)
            if quit_after:
                async with open_qmp(vm_facts.qmp_socket, vm=vm_facts.name, timeout=CONNECT_TIMEOUT) as session:
                    await quit_qemu(session, session.pid or vm_facts.pid, CONNECT_TIMEOUT)
                result.quit = True
            finished.append(result)
        elif vm_facts.runstate in SAVABLE_RUNSTATES:
            remove_saved(state_dir, vm_facts.name)
        else:
            raise CprError(f"an earlier save was interrupted and the VM is now {vm_facts.runstate}", vm_facts.name,
                           hint=f"inspect it; {saving_path(state_dir, vm_facts.name)} records how it was before")
    return finished


async def _save_all(facts: List[VmFacts], by_name: Dict[str, VmEndpoint], state_dir: str, reboot: str,
                    timeout: float, quit_after: bool, suspend: str, all_or_nothing: bool,
                    mapped_ram: Optional[bool] = None) -> List[SaveResult]:
    loop = asyncio.get_running_loop()
    jobs, saved_flags, decisions, prepared = [], [], [], []
    for vm_facts in facts:
        must_suspend = suspend == "all" or (suspend == "vfio" and bool(vm_facts.vfio))
        jobs.append(_SaveJob(vm_facts, by_name[vm_facts.name], must_suspend, mapped_ram, process_cwd(vm_facts.pid)))
        saved_flags.append(loop.create_future())
        decisions.append(loop.create_future())
        prepared.append(loop.create_future())

    tasks = [asyncio.ensure_future(_save_one(job, state_dir, reboot, timeout, quit_after, flag, decision, mine, prepared))
             for job, flag, decision, mine in zip(jobs, saved_flags, decisions, prepared)]
    outcomes = await asyncio.gather(*(_first_of(flag, task) for flag, task in zip(saved_flags, tasks)))
    commit = all(outcomes) or not all_or_nothing
    for decision in decisions:
        decision.set_result(commit)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        causes = [e for e in errors if not (isinstance(e, CprError) and e.message == ROLLED_BACK)] or errors
        failed = [j for j, r in zip(jobs, results) if isinstance(r, BaseException)]
        resumed = [j.facts.name for j in failed if j.undo_error is None]
        died = [j.facts.name for j in failed if j.died]
        stuck = [f"{j.facts.name} ({j.undo_error})" for j in failed if j.undo_error is not None and not j.died]
        saved = [r.name for r in results if isinstance(r, SaveResult)]
        raise CprError(
            "; ".join(str(e) for e in causes)
            + (f". Resumed as they were: {', '.join(resumed)}" if resumed else "")
            + (f". Their QEMU died during the save and the guest's running state with it; each command line is "
               f"recorded in {state_dir}/<name>{STOPPED_SUFFIX}, and vm_power state=started boots them again: "
               f"{', '.join(died)}" if died else "")
            + (f". Could not be resumed, state files and manifests kept for cpr_restore: {'; '.join(stuck)}"
               if stuck else "")
            + (f". Saved: {', '.join(saved)}" if saved else ""),
            hint="fix the cause and run again; saved VMs are restored by cpr_restore",
        )
    return [r for r in results if isinstance(r, SaveResult)]


async def _first_of(flag: "asyncio.Future[bool]", task: "asyncio.Future[Any]") -> bool:
    """Whether a VM's save succeeded, whichever of its flag or its task ends first."""
    await asyncio.wait([flag, task], return_when=asyncio.FIRST_COMPLETED)
    return flag.done() and flag.result()


# --------------------------------------------------------------------------- restore


def fresh_argv(argv: List[str]) -> List[str]:
    """A recorded argv without -incoming (a QEMU restored before carries one) and -S (it would stay paused)."""
    fresh: List[str] = []
    index = 0
    while index < len(argv):
        option = argv[index].lstrip("-") if argv[index].startswith("-") else None
        if option == "incoming":
            index += 2
        elif option == "S":
            index += 1
        else:
            fresh.append(argv[index])
            index += 1
    return fresh


def restore_argv(manifest: Manifest) -> List[str]:
    """The recorded argv with the machine type pinned, any -S and old -incoming removed, -incoming defer added."""
    old = fresh_argv(manifest.argv)
    argv: List[str] = []
    index = 0
    while index < len(old):
        # A VM restored before already carries the pin; do not stack another.
        if old[index] in ("-machine", "--machine", "-M") and index + 1 < len(old) and old[index + 1] == manifest.machine_type:
            index += 2
        else:
            argv.append(old[index])
            index += 1
    return argv + ["-machine", manifest.machine_type, "-incoming", "defer"]


def _systemd_runs_host() -> bool:
    return os.path.isdir("/run/systemd/system") and shutil.which("systemd-run") is not None


def systemd_unit_name(template: str, name: str) -> str:
    """The operator's unit for a VM (launch: systemd): {name} in the template replaced by the VM's name."""
    return template.replace("{name}", name)


def transient_unit_name(name: str, now: float) -> str:
    """The transient unit systemd-run starts a VM's QEMU in; the time keeps it apart from a failed earlier one."""
    return f"hypervisor-cpr-{name}-{int(now)}.service"


def systemctl_start_command(unit: str) -> List[str]:
    return ["systemctl", "start", unit]


def systemd_run_command(unit: str, argv: List[str], cwd: str) -> List[str]:
    """QEMU as a transient service: systemd supervises it, and it outlives this process (--collect: no failed leftover)."""
    return ["systemd-run", f"--unit={unit}", "--collect", f"--working-directory={cwd}", "--", *argv]


def launch(manifest: Manifest, state_dir: str, launch_mode: str,
           unit: str) -> Tuple[Optional[subprocess.Popen], Optional[str]]:
    """Start the new QEMU so it outlives this process.

    Returns the child when we hold it, else the systemd unit it runs in (its output is in that unit's journal).
    """
    if launch_mode == "systemd":
        # The operator's unit runs the recorded command line with -incoming defer itself (see the module documentation).
        started = systemd_unit_name(unit, manifest.name)
        _run_starter(systemctl_start_command(started), manifest.name)
        return None, started
    transient = transient_unit_name(manifest.name, time.time()) if _systemd_runs_host() else None
    return start_qemu(manifest.name, restore_argv(manifest), manifest.cwd, state_dir, transient), transient


def start_qemu(name: str, argv: List[str], cwd: str, state_dir: str,
               unit: Optional[str] = None) -> Optional[subprocess.Popen]:
    """Start QEMU with this argv so it outlives this process: a transient unit under systemd, else detached.

    unit names the transient unit (default: one from the VM's name and the time).
    """
    if not _systemd_runs_host():
        return spawn_detached(name, argv, cwd, state_dir)
    _run_starter(systemd_run_command(unit or transient_unit_name(name, time.time()), argv, cwd), name)
    return None


def _run_starter(command: List[str], name: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise CprError(f"{command[0]} could not start the new QEMU: {detail.strip()}", name,
                       hint="its record in the state directory is kept; fix the cause and run again") from None


def spawn_detached(name: str, argv: List[str], cwd: str, state_dir: str) -> subprocess.Popen:
    """QEMU in a session of its own, its output in <state_dir>/<name>.log."""
    log_path = os.path.join(state_dir, f"{name}.log")
    try:
        with open(log_path, "ab") as log:
            os.chmod(log_path, 0o600)
            return subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
    except OSError as exc:
        raise CprError(f"the new QEMU cannot be started: {exc.strerror}: {exc.filename or argv[0]}", name,
                       hint="the QEMU binary or working directory recorded in the manifest is gone; reinstall it, "
                       "then run cpr_restore again (the state file and manifest are kept)") from None


async def wait_for_qmp(name: str, qmp_socket: str, child: Optional[subprocess.Popen], state_dir: str,
                       timeout: float, stack: contextlib.AsyncExitStack, unit: Optional[str] = None) -> QmpSession:
    """Wait until the new QEMU answers on its QMP socket and return that session (closed with stack).

    If QEMU dies first, its own words are the error. Without a child (systemd started it, in unit), a QEMU
    that died shows only as the timeout, so the error says where its words are.
    """
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL_SECONDS
    while True:
        if child is not None and child.poll() not in (None, 0):
            raise CprError(f"the new QEMU exited with status {child.returncode}: {_log_tail(state_dir, name)}",
                           name, hint="fix the cause (a missing device or file, a changed binary) and run "
                           "cpr_restore again; the state file and manifest are kept")
        try:
            return await stack.enter_async_context(open_qmp(qmp_socket, vm=name, timeout=min(5.0, timeout)))
        except CprError as exc:
            if time.monotonic() > deadline:
                raise _no_qmp_error(name, qmp_socket, timeout, exc.message, unit) from None
        delay = await _pause(delay)


def _no_qmp_error(name: str, qmp_socket: str, timeout: float, why: str, unit: Optional[str]) -> NotAnsweringError:
    message = f"the new QEMU did not answer on {qmp_socket} within {timeout:g} s ({why})"
    if unit is None:
        return NotAnsweringError(message, name, hint="it may be hung and is left as it is; a later cpr_restore "
                                 "continues with it once it answers, or starts another after you kill it; the state "
                                 "file and manifest are kept")
    return NotAnsweringError(
        f"{message}; systemd started it in {unit}", name,
        hint=f"see why with systemctl status {unit} and journalctl -u {unit}: if QEMU exited, fix the cause; if the "
        f"unit does not listen on {qmp_socket}, make it run the command line recorded in the manifest; a QEMU that "
        "hangs is left as it is; the state file and manifest are kept, run cpr_restore again",
    )


def _log_tail(state_dir: str, name: str) -> str:
    try:
        with open(os.path.join(state_dir, f"{name}.log"), encoding="utf-8", errors="replace") as handle:
            return " ".join(handle.read().strip().splitlines()[-3:]) or "no output"
    except OSError:
        return "no output"


async def wait_agent(name: str, qga_socket: str, timeout: float) -> None:
    """The guest agent answers again, where it did before."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with open_agent(qga_socket, vm=name, timeout=min(5.0, timeout)) as agent:
                await agent.execute("guest-ping")
            return
        except CprError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def _expected_runstate(manifest: Manifest) -> str:
    return "running" if manifest.suspended_by_us else manifest.runstate_before


async def _restore_one(manifest: Manifest, state_dir: str, timeout: float, keep_state: bool, launch_mode: str,
                       unit: str, verify_checksum: bool, running: Dict[str, VmEndpoint]) -> RestoreResult:
    name = manifest.name
    started = time.monotonic()
    existing = running.get(name)
    if existing is not None:
        async with open_qmp(existing.qmp_socket, vm=name, timeout=CONNECT_TIMEOUT) as session:
            state = await runstate(session)
        if state == "postmigrate":
            raise CprError("the QEMU that was saved is still running (postmigrate)", name,
                           hint="it was saved with quit=false: quit it (QMP quit) before restoring")
        if state != "inmigrate":
            # An earlier run restored it and stopped before cleaning up.
            return await _finish_restore(manifest, existing.pid, state_dir, timeout, keep_state, started,
                                         changed=state != _expected_runstate(manifest))

    if verify_checksum:
        # In a thread: the VMs' state files are checked at the same time.
        await asyncio.to_thread(verify_state_file, manifest)
    child, started_unit = (await asyncio.to_thread(launch, manifest, state_dir, launch_mode, unit)
                           if existing is None else (None, None))
    async with contextlib.AsyncExitStack() as stack:
        session = await wait_for_qmp(name, manifest.qmp_socket, child, state_dir, timeout, stack, started_unit)
        pid = session.pid
        await _set_migration(session, manifest.capabilities, manifest.parameters)
        await session.execute("migrate-incoming", {"uri": f"file:{manifest.state_file}"})
        try:
            await wait_migration(session, timeout, "the restore")
        except CprError as exc:
            with contextlib.suppress(CprError):
                await session.execute("quit")
            if child is not None and await wait_exit(child.pid, 1.0) and child.poll() not in (None, 0):
                # QEMU exits on a state it cannot load; its own words say why.
                raise CprError(f"the new QEMU exited while loading the state (status {child.returncode}): "
                               f"{_log_tail(state_dir, name)}", name, hint="the state file and manifest are kept; "
                               "fix the cause and run cpr_restore again") from exc
            raise
        expected = manifest.runstate_before
        state = await runstate(session)
        if state != expected:
            state = await wait_runstate(session, expected, timeout, "the restore")
        if manifest.suspended_by_us:
            await wake_guest(session, timeout)
        back_at = time.time()
    return await _finish_restore(manifest, pid, state_dir, timeout, keep_state, started, changed=True, back_at=back_at)


async def _finish_restore(manifest: Manifest, pid: Optional[int], state_dir: str, timeout: float, keep_state: bool,
                          started: float, changed: bool, back_at: Optional[float] = None) -> RestoreResult:
    """Check the VM is back in its old runstate, wait for its guest agent, then remove (or keep) its files.

    back_at is when the restore saw the VM back in its old runstate; the downtime ends there, not after the
    wait for the guest agent.
    """
    expected = _expected_runstate(manifest)
    async with open_qmp(manifest.qmp_socket, vm=manifest.name, timeout=CONNECT_TIMEOUT) as session:
        state = await runstate(session)
        if state == "suspended" and manifest.suspended_by_us:
            await wake_guest(session, timeout)
            state, changed, back_at = "running", True, time.time()
    if state != expected:
        raise CprError(f"after the restore the VM is {state}, not {expected} as before the save", manifest.name,
                       hint="the state file and manifest are kept; inspect the VM")
    # An earlier run brought it back and stopped before cleaning up: back at the latest now.
    back_at = back_at or time.time()
    if manifest.agent_answered and state == "running" and manifest.qga_socket:
        await wait_agent(manifest.name, manifest.qga_socket, timeout)
    await asyncio.to_thread(keep_restored if keep_state else remove_saved, state_dir, manifest.name)
    return RestoreResult(manifest.name, changed, pid, state, time.monotonic() - started, back_at - manifest.paused_at,
                         keep_state, manifest.runstate_before, manifest.suspended_by_us, manifest.paused_at,
                         manifest.save_seconds, manifest.state_bytes, manifest.ram_in_place, back_at)


def restore(state_dir: str = "/var/lib/qemu-cpr", names: Optional[List[str]] = None, timeout: float = 300.0,
            keep_state: bool = False, launch_mode: str = "argv", unit: str = "qemu@{name}.service",
            verify_checksum: bool = True, check_mode: bool = False) -> Dict[str, Any]:
    """Restore every saved VM (or the named ones); return what the cpr_restore module reports."""
    if os.path.lexists(state_dir):
        ensure_state_dir(state_dir, create=False)
    manifests = list_manifests(state_dir)
    discovered = discover()
    if names:
        found = {m.name for m in manifests}
        running_names = {e.name for e in discovered}
        unknown = [n for n in names if n not in found and n not in running_names]
        if unknown:
            raise ManifestError(f"no manifest in {state_dir} and no running VM for {', '.join(unknown)}",
                                hint="check the names and state_dir")
        manifests = [m for m in manifests if m.name in names]
    running = {e.name: e for e in discovered}
    if check_mode or not manifests:
        if check_mode:
            for manifest in manifests:
                if manifest.name not in running and verify_checksum:
                    verify_state_file(manifest)
        return {"changed": bool(manifests), "vms": [], "would_restore": [m.name for m in manifests]}

    with host_lock(state_dir):
        results = asyncio.run(_restore_all(manifests, state_dir, timeout, keep_state, launch_mode, unit,
                                           verify_checksum, running))
    done = [r.to_dict() for r in results if isinstance(r, RestoreResult)]
    detail = {"changed": any(r["changed"] for r in done), "vms": done, "would_restore": [m.name for m in manifests]}
    raise_failures([m.name for m in manifests], results, detail, "Restored",
                   "the state files and manifests of the failed VMs are kept: fix the cause and run again")
    return detail


async def _restore_all(manifests: List[Manifest], state_dir: str, timeout: float, keep_state: bool, launch_mode: str,
                       unit: str, verify_checksum: bool, running: Dict[str, VmEndpoint]) -> List[Any]:
    return list(await asyncio.gather(*(
        _restore_one(m, state_dir, timeout, keep_state, launch_mode, unit, verify_checksum, running)
        for m in manifests), return_exceptions=True))
