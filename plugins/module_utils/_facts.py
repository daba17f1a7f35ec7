# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The facts of one VM, read over QMP, and whether it is ready for a cpr-reboot checkpoint.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import redact
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint, endpoint_of, read_argv
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CommandFailedError, CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import MemoryBackend, QemuBackend, classify
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import QmpSession, open_agent, open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_ready import (
    TransferVerdict,
    migration_blockers,
    transfer_verdict,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import binary_problem

MIN_QEMU_CPR = (8, 2, 0)
MIN_QEMU_VFIO = (9, 0, 0)
REBOOT_METHODS = ("kexec", "reboot", "none")
SAVABLE_RUNSTATES = ("running", "paused", "suspended")
VFIO_TYPE_PREFIX = "vfio"
ICH9_LPC = "ICH9-LPC"
S3_BLOCKED = (
    "the guest cannot suspend to RAM again in this boot: after its last resume its firmware left the q35 ACPI "
    "power-management block unmapped (SeaBIOS does not map it again; OVMF does), so its next suspend never reaches "
    "QEMU; reboot the guest once, or boot it with OVMF (UEFI) firmware"
)


@dataclass
class AgentFacts:
    """The guest agent as seen from the host."""

    socket: Optional[str] = None
    # None when it was not asked: no socket, or a guest that is not running.
    answering: Optional[bool] = None
    version: Optional[str] = None
    error: Optional[str] = None


@dataclass
class CprVerdict:
    """Whether a VM can be saved with cpr-reboot, and how its RAM would travel."""

    ready: bool
    reboot: str
    ram_in_place: bool
    ram_copy_bytes: int
    reasons: List[str] = field(default_factory=list)


@dataclass
class VmFacts(VmEndpoint):
    """What hypervisor.cpr knows about one VM: how to reach it (VmEndpoint), and what QEMU said."""

    runstate: Optional[str] = None
    qemu_version: Optional[str] = None
    machine_type: Optional[str] = None
    memory_backends: List[MemoryBackend] = field(default_factory=list)
    vfio: List[Dict[str, str]] = field(default_factory=list)
    agent: AgentFacts = field(default_factory=AgentFacts)
    migration: Dict[str, Any] = field(default_factory=dict)
    # True when the guest's next suspend to RAM cannot reach QEMU (see s3_blocked).
    s3_blocked: bool = False
    # QEMU maps executable code deleted from disk since it started (an upgraded binary or library); None: unknown.
    runs_replaced_code: Optional[bool] = None
    # -machine aux-ram-share (QEMU 10.0+): ROMs and video RAM shared too, as cpr-transfer needs; None: unknown.
    aux_ram_share: Optional[bool] = None
    cpr: Optional[CprVerdict] = None
    transfer: Optional[TransferVerdict] = None
    error: Optional[str] = None

    @property
    def version_tuple(self) -> Tuple[int, ...]:
        return version_tuple(self.qemu_version)

    def to_dict(self) -> Dict[str, Any]:
        """The facts as results and queries see them: secrets on the command line hidden."""
        return dict(asdict(self), argv=redact(self.argv))


def version_tuple(version: Optional[str]) -> Tuple[int, ...]:
    """'10.0.2' -> (10, 0, 2); unknown -> ()."""
    if not version:
        return ()
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def runs_replaced_code(pid: Optional[int]) -> Optional[bool]:
    """Whether a process maps executable files deleted from disk, as an upgrade of QEMU or a library leaves them."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
            # address perms offset dev inode path: an executable mapping of a replaced file ends in " (deleted)".
            return any(len(fields) > 1 and fields[1][2:3] == "x" and line.endswith(" (deleted)")
                       for line in handle.read().splitlines() for fields in [line.split(None, 5)])
    except OSError:
        return None


def ram_plan(backends: Sequence[MemoryBackend], ignore_shared: Optional[bool]) -> Tuple[bool, int]:
    """(RAM stays in place with x-ignore-shared, bytes of RAM copied into the state file).

    ignore_shared None means auto: in place when every shared backend can be
    mapped again by a new QEMU.
    """
    shared = [b for b in backends if b.share]
    capable = bool(shared) and all(b.mappable for b in shared)
    in_place = capable if ignore_shared is None else ignore_shared
    copied = sum(b.size for b in backends if not (in_place and b.share))
    return in_place, copied


def verdict(facts: VmFacts, reboot: str = "kexec", ignore_shared: Optional[bool] = None) -> CprVerdict:
    """Every reason a VM cannot be saved with cpr-reboot for the planned reboot."""
    if facts.error or facts.problem:
        return CprVerdict(False, reboot, False, 0, [reason for reason in (facts.problem, facts.error) if reason])
    reasons: List[str] = []
    version = facts.version_tuple
    if version < MIN_QEMU_CPR:
        reasons.append(
            f"QEMU {facts.qemu_version} has no cpr-reboot (it needs 8.2 or newer): upgrade QEMU and restart the VM cold once"
        )
    if facts.runstate not in SAVABLE_RUNSTATES:
        reasons.append(f"its runstate is {facts.runstate}; only running, paused or suspended VMs can be saved")
    reasons.extend(migration_blockers(facts.migration, "cpr-reboot"))
    if facts.vfio:
        reasons.extend(_vfio_reasons(facts, version))

    in_place, copied = ram_plan(facts.memory_backends, ignore_shared)
    for backend in facts.memory_backends:
        if not (in_place and backend.share):
            continue
        if not backend.mappable:
            reasons.append(
                f"x-ignore-shared would skip memory backend {backend.id}, but {backend.note}: its RAM would be lost; "
                "set ignore_shared to auto or false to copy it into the state file"
            )
        elif reboot != "none" and not backend.persistent:
            reasons.append(
                f"the RAM of memory backend {backend.id} would stay in place, but {backend.note}: it would not survive "
                f"the {reboot}; back it with DAX/pmem or a file on disk, or set ignore_shared=false to copy it into the state file"
            )
    return CprVerdict(not reasons, reboot, in_place, copied, reasons)


def _vfio_reasons(facts: VmFacts, version: Tuple[int, ...]) -> List[str]:
    devices = ", ".join(d["id"] for d in facts.vfio)
    if version < MIN_QEMU_VFIO:
        return [f"VFIO devices ({devices}) need QEMU 9.0 or newer for cpr-reboot; this VM runs QEMU {facts.qemu_version}: "
                "upgrade QEMU and restart the VM cold once"]
    if facts.runstate == "suspended":
        return []
    if not facts.qga_socket:
        return [
            f"VFIO devices ({devices}) require the guest to be suspended to RAM first, and the VM has no guest agent "
            "socket (a virtserialport named org.qemu.guest_agent.0): add one and install qemu-guest-agent in the guest"
        ]
    if not facts.agent.answering:
        return [
            f"VFIO devices ({devices}) require the guest to be suspended to RAM first, and its guest agent does not "
            f"answer: {facts.agent.error or 'the guest is not running'}"
        ]
    if facts.s3_blocked:
        return [f"VFIO devices ({devices}) require the guest to be suspended to RAM first, and {S3_BLOCKED}"]
    return []


async def _optional(session: QmpSession, command: str, arguments: Optional[Dict[str, Any]] = None) -> Any:
    """A query older QEMUs may not know: None instead of an error."""
    try:
        return await session.execute(command, arguments)
    except CommandFailedError:
        return None


async def _memory_backends(session: QmpSession, pid: Optional[int]) -> List[MemoryBackend]:
    types = {
        child["name"]: child["type"][len("child<"):-1]
        for child in await session.execute("qom-list", {"path": "/objects"})
        if child["type"].startswith("child<")
    }
    backends = []
    for memdev in await session.execute("query-memdev"):
        backend_id = memdev["id"]
        qom_type = types.get(backend_id, "memory-backend")
        path = f"/objects/{backend_id}"
        mem_path = discard = None
        if qom_type == "memory-backend-file":
            mem_path = await session.execute("qom-get", {"path": path, "property": "mem-path"})
            discard = await _optional(session, "qom-get", {"path": path, "property": "discard-data"})
        backends.append(classify(QemuBackend(backend_id, qom_type, memdev["size"], bool(memdev.get("share")), mem_path,
                                             bool(discard)), pid))
    return backends


async def _vfio_devices(session: QmpSession) -> List[Dict[str, str]]:
    devices = []
    for container in ("/machine/peripheral", "/machine/peripheral-anon"):
        children = await _optional(session, "qom-list", {"path": container}) or []
        for child in children:
            qom_type = child["type"][len("child<"):-1] if child["type"].startswith("child<") else ""
            if qom_type.startswith(VFIO_TYPE_PREFIX):
                devices.append({"id": child["name"], "type": qom_type, "path": f"{container}/{child['name']}"})
    return devices


async def s3_blocked(session: QmpSession) -> bool:
    """True when the ACPI power-management I/O block of a q35 machine is unmapped.

    On q35, system_wakeup resets the ICH9 LPC bridge, and SeaBIOS's resume path does not map its PM block
    again (OVMF does; the pc machine's PIIX4 is not affected). The guest's next S3 request then goes to an
    unmapped port: QEMU never sees it and the guest comes straight back, as if woken at once.
    """
    for child in await _optional(session, "qom-list", {"path": "/machine/unattached"}) or []:
        if child["type"] == f"child<{ICH9_LPC}>":
            path = f"/machine/unattached/{child['name']}"
            return await _optional(session, "qom-get", {"path": path, "property": "pm_io_base"}) == 0
    return False


async def _migration(session: QmpSession) -> Dict[str, Any]:
    info = await session.execute("query-migrate")
    capabilities = await session.execute("query-migrate-capabilities")
    parameters = await _optional(session, "query-migrate-parameters") or {}
    return {
        "mode": parameters.get("mode", "normal"),
        "status": info.get("status", "none"),
        "blocked_reasons": info.get("blocked-reasons", []),
        "capabilities": sorted(c["capability"] for c in capabilities if c["state"]),
    }


async def _agent(endpoint: VmEndpoint, runstate: Optional[str], timeout: float) -> AgentFacts:
    facts = AgentFacts(socket=endpoint.qga_socket)
    if not endpoint.qga_socket or runstate != "running":
        return facts
    try:
        async with open_agent(endpoint.qga_socket, vm=endpoint.name, timeout=timeout) as agent:
            await agent.execute("guest-ping")
            info = await agent.execute("guest-info")
        facts.answering = True
        facts.version = info.get("version")
    except CprError as exc:
        facts.answering = False
        facts.error = str(exc)
    return facts


@dataclass(frozen=True)
class FactsOptions:
    """How a VM's facts are read and judged: the socket timeout, the planned reboot, RAM kept in place, the agent."""

    timeout: float = 10.0
    reboot: str = "kexec"
    ignore_shared: Optional[bool] = None
    check_agent: bool = True


async def gather(endpoint: VmEndpoint, options: FactsOptions) -> VmFacts:
    """Read every fact of one VM; an unreachable VM comes back with its error set.

    A QEMU another manager runs, or that has no QMP socket, is not asked at all: its monitor is not ours.
    """
    facts = VmFacts(**{f.name: getattr(endpoint, f.name) for f in fields(VmEndpoint)})
    if endpoint.qmp_socket is None or endpoint.managed_by != "none":
        return _judged(facts, options)
    try:
        async with open_qmp(endpoint.qmp_socket, vm=endpoint.name, timeout=options.timeout) as session:
            _check_peer(facts, session.pid)
            version = await session.execute("query-version")
            facts.qemu_version = "{major}.{minor}.{micro}".format(**version["qemu"])
            facts.runstate = (await session.execute("query-status"))["status"]
            facts.machine_type = (await session.execute(
                "qom-get", {"path": "/machine", "property": "type"})).replace("-machine", "")
            facts.memory_backends = await _memory_backends(session, facts.pid)
            facts.vfio = await _vfio_devices(session)
            facts.s3_blocked = await s3_blocked(session)
            facts.migration = await _migration(session)
            facts.runs_replaced_code = runs_replaced_code(facts.pid)
            facts.aux_ram_share = await _optional(session, "qom-get", {"path": "/machine", "property": "aux-ram-share"})
    except CprError as exc:
        facts.error = str(exc)
    if options.check_agent and not facts.error:
        facts.agent = await _agent(endpoint, facts.runstate, options.timeout)
    else:
        facts.agent = AgentFacts(socket=endpoint.qga_socket)
    return _judged(facts, options)


def _judged(facts: VmFacts, options: FactsOptions) -> VmFacts:
    """The facts with both verdicts: a cpr-reboot save for the planned reboot, and a cpr-transfer."""
    facts.cpr = verdict(facts, options.reboot, options.ignore_shared)
    facts.transfer = transfer_verdict(facts)
    return facts


def _check_peer(facts: VmFacts, peer: Optional[int]) -> None:
    """The process at the other end of the QMP socket must be the VM's QEMU; one given explicitly is adopted."""
    if facts.pid is None and peer:
        process = endpoint_of(peer, read_argv(peer))
        facts.pid, facts.argv, facts.exe, facts.credentials, facts.unit = (
            peer, process.argv, process.exe, process.credentials, process.unit)
        facts.managed_by, facts.recognised_by = process.managed_by, process.recognised_by
        facts.problem = process.problem if process.managed_by != "none" else (
            binary_problem(process.exe) if process.credentials else "its credentials cannot be read from /proc")
    elif facts.pid and peer and peer != facts.pid:
        facts.problem = (f"the process at the other end of its QMP socket {facts.qmp_socket} is pid {peer}, not its "
                         f"QEMU (pid {facts.pid}): something else took the socket's path")


async def gather_all(selected: List[VmEndpoint], options: FactsOptions) -> List[VmFacts]:
    """The facts of many VMs, read concurrently."""
    return list(await asyncio.gather(*(gather(e, options) for e in selected)))
