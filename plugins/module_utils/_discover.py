# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Every QEMU process of the host: how to reach it, who runs it, who manages it, and whether we may drive it.

Everything is read from ``/proc/<pid>``: the command line (its VM name, QMP and
guest agent sockets, see _argv), the binary it runs (``exe``, never argv[0]),
its credentials, its parent and its systemd unit. A QEMU that libvirt, Proxmox
VE or Ganeti runs, or whose monitor we cannot reach, is listed too, with why
it cannot be driven: a reboot takes it down like any other. VMs whose argv does
not say where their sockets are can be given explicitly instead.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import QemuArgs, read_args
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import parent_of, unit_of
from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import Credentials, binary_problem, credentials_of

LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")
_WHAT_TO_DO = {
    "libvirt": "libvirt owns its monitor, and driving QEMU behind libvirt's back breaks libvirt's view of the domain: "
               "save it with virsh managedsave or migrate it away before the reboot, or shut it down",
    "proxmox": "Proxmox VE starts it and cleans up (volumes, sockets) when its QEMU exits: use Proxmox's own tools "
               "(qm suspend --todisk, qm migrate) before the reboot",
    "ganeti": "Ganeti starts it with descriptors a restart cannot hand over: use gnt-instance migrate or shutdown "
              "before the reboot",
}


@dataclass
class VmEndpoint:
    """One QEMU of the host: how to reach it, who runs it, and why we cannot drive it (problem) if we cannot."""

    name: str
    qmp_socket: Optional[str]
    qga_socket: Optional[str] = None
    pid: Optional[int] = None
    argv: List[str] = field(default_factory=list)
    source: str = "discovered"
    # The binary it runs, from /proc/<pid>/exe: what a restart runs, never argv[0].
    exe: Optional[str] = None
    credentials: Optional[Credentials] = None
    managed_by: str = "none"
    recognised_by: List[str] = field(default_factory=list)
    unit: Optional[str] = None
    problem: Optional[str] = None


def is_qemu_argv(argv: List[str], exe: str = "") -> bool:
    """Whether a process is a QEMU system emulator (Proxmox runs it as /usr/bin/kvm)."""
    names = {os.path.basename(argv[0]) if argv else "", os.path.basename(exe).removesuffix(" (deleted)")}
    return any(n.startswith("qemu-system-") or n in ("qemu-kvm", "kvm") for n in names)


def read_argv(pid: int, proc: str = "/proc") -> List[str]:
    """The argv of a process, or [] when it is gone or unreadable."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [word.decode("utf-8", "surrogateescape") for word in raw.split(b"\0")[:-1]]


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def manager_of(args: QemuArgs, parent: str, unit: Optional[str]) -> Dict[str, Any]:
    """Who manages a QEMU, and the signs that tell: libvirt, proxmox, ganeti, or none."""
    argv_text = " ".join(value for values in args.options.values() for value in values)
    signs = {
        "libvirt": [sign for sign, seen in (
            (f"its parent is {parent}", parent in LIBVIRT_DAEMONS),
            ("its monitor was passed as an inherited descriptor (fd=)", bool(args.monitor_fds)),
            (f"it runs in the libvirt machine unit {unit}", bool(unit) and "machine-qemu" in (unit or "")),
            ("its command line names /var/lib/libvirt or /run/libvirt",
             "/var/lib/libvirt/" in argv_text or "/run/libvirt/" in argv_text),
        ) if seen],
        "proxmox": [sign for sign, seen in (
            ("it has a Proxmox VM id (-id)", "id" in args.options),
            ("its sockets are in /run/qemu-server", "/run/qemu-server/" in argv_text),
        ) if seen],
        "ganeti": [sign for sign, seen in (
            ("its monitors are in Ganeti's control directory", "/run/ganeti/kvm-hypervisor/ctrl/" in argv_text),
            ("its pid file is Ganeti's", "/run/ganeti/kvm-hypervisor/pid/" in argv_text),
        ) if seen],
    }
    for manager in ("libvirt", "proxmox", "ganeti"):
        # One sign alone could be a coincidence, except libvirt's own daemon as the parent.
        if len(signs[manager]) >= 2 or (manager == "libvirt" and parent in LIBVIRT_DAEMONS):
            return {"managed_by": manager, "recognised_by": signs[manager]}
    return {"managed_by": "none", "recognised_by": []}


def endpoint_of(pid: int, argv: List[str], proc: str = "/proc") -> VmEndpoint:
    """A QEMU process as the engine sees it, with why it cannot be driven if it cannot."""
    args = read_args(argv)
    cwd = _readlink(os.path.join(proc, str(pid), "cwd"))
    exe = _readlink(os.path.join(proc, str(pid), "exe"))
    unit = unit_of(pid)
    endpoint = VmEndpoint(
        name=args.name or f"qemu-{pid}",
        qmp_socket=os.path.join(cwd, args.qmp_socket) if args.qmp_socket and cwd else args.qmp_socket,
        qga_socket=os.path.join(cwd, args.qga_socket) if args.qga_socket and cwd else args.qga_socket,
        pid=pid, argv=list(argv), exe=exe.removesuffix(" (deleted)") or None,
        credentials=credentials_of(pid, proc), unit=unit, **manager_of(args, (parent_of(pid) or (0, ""))[1], unit))
    endpoint.problem = _why_not_drivable(endpoint, args)
    return endpoint


def _why_not_drivable(endpoint: VmEndpoint, args: QemuArgs) -> Optional[str]:
    if endpoint.managed_by != "none":
        return (f"{endpoint.managed_by} runs this VM ({'; '.join(endpoint.recognised_by)}): "
                f"{_WHAT_TO_DO[endpoint.managed_by]}")
    if endpoint.qmp_socket is None:
        how = "an HMP monitor (-monitor) only" if args.hmp else "no monitor socket"
        return (f"its QEMU has {how}, and no QMP unix socket hypervisor.cpr could reach: restart it with "
                "-qmp unix:<path>,server=on,wait=off (or a -chardev socket with -mon mode=control), or give its "
                "socket explicitly in vms")
    if endpoint.credentials is None:
        return "its credentials cannot be read from /proc, so it could not be started again as the same user"
    return binary_problem(endpoint.exe)


def qemu_processes(proc: str = "/proc") -> Dict[int, List[str]]:
    """Every running QEMU system emulator: pid -> argv."""
    found: Dict[int, List[str]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        argv = read_argv(int(entry), proc)
        if argv and is_qemu_argv(argv, _readlink(os.path.join(proc, entry, "exe"))):
            found[int(entry)] = argv
    return found


def discover(proc: str = "/proc") -> List[VmEndpoint]:
    """Every QEMU on the host, the ones we cannot drive included, sorted by name."""
    return sorted((endpoint_of(pid, argv, proc) for pid, argv in qemu_processes(proc).items()), key=lambda e: e.name)


def explicit_endpoints(vms: Iterable[Dict[str, Any]], proc: str = "/proc") -> List[VmEndpoint]:
    """Endpoints from an explicit list, matched to their process by QMP socket when possible."""
    running = {e.qmp_socket: e for e in discover(proc) if e.qmp_socket}
    endpoints = []
    for spec in vms:
        qmp_socket = os.path.abspath(spec["qmp_socket"])
        match = running.get(qmp_socket) or VmEndpoint(name=spec["name"], qmp_socket=qmp_socket)
        endpoints.append(dataclasses.replace(match, name=spec["name"], source="explicit",
                                             qga_socket=spec.get("qga_socket") or match.qga_socket))
    return endpoints
