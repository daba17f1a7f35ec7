# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Find the QEMU processes of a host and their sockets.

Everything is read from ``/proc/<pid>/cmdline``: the VM name (``-name``), the
QMP socket (``-qmp unix:...`` or ``-chardev socket,...`` with ``-mon
...,mode=control``) and the guest agent socket (the chardev of the
``virtserialport`` named ``org.qemu.guest_agent.0``). VMs whose argv does
not say can be given explicitly instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple


AGENT_PORT_NAME = "org.qemu.guest_agent.0"

# QEMU options that take no value; every other option consumes the next word.
_FLAGS = frozenset((
    "S", "s", "daemonize", "nodefaults", "no-user-config", "no-shutdown", "no-reboot",
    "enable-kvm", "snapshot", "nographic", "no-hpet", "no-acpi", "full-screen", "no-quit",
    "preconfig", "only-migratable", "enable-sync-profile", "no-fd-bootchk", "win2k-hack",
    "rtc-td-hack", "no-kvm", "old-param", "semihosting", "version", "help", "h", "ctrl-grab",
    "alt-grab", "no-frame", "curses", "portrait", "msg", "mem-prealloc", "enable-fips",
))


@dataclass
class VmEndpoint:
    """How to reach one VM: its name, process and sockets."""

    name: str
    qmp_socket: str
    qga_socket: Optional[str] = None
    pid: Optional[int] = None
    argv: List[str] = field(default_factory=list)
    source: str = "discovered"


def parse_opts(value: str, implied: Optional[str] = None) -> Dict[str, str]:
    """Parse a QemuOpts string (``a=b,c=d``; ``,,`` is a literal comma).

    The first element may be a bare value for the option's implied key, as in
    ``-name vm1`` or ``-device virtserialport,...``. JSON values (``-device
    '{"driver": ...}'``) are accepted too.
    """
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return {str(key): _opt_text(val) for key, val in parsed.items()} if isinstance(parsed, dict) else {}

    parts: List[str] = []
    current = ""
    index = 0
    while index < len(value):
        char = value[index]
        if char == ",":
            if value[index + 1:index + 2] == ",":
                current += ","
                index += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    parts.append(current)

    opts: Dict[str, str] = {}
    for position, part in enumerate(parts):
        key, sep, val = part.partition("=")
        if sep:
            opts[key] = val
        elif position == 0 and implied:
            opts[implied] = part
        elif part:
            # A bare flag such as "server" or "nowait" in the legacy syntax.
            opts[part] = "on"
    return opts


def _opt_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def iter_options(argv: List[str]) -> Iterator[Tuple[str, Optional[str]]]:
    """Yield (option, value) pairs of a QEMU argv; flags yield a None value."""
    index = 1
    while index < len(argv):
        word = argv[index]
        if not word.startswith("-") or word == "-":
            index += 1
            continue
        option = word.lstrip("-")
        if option in _FLAGS or index + 1 >= len(argv):
            yield option, None
            index += 1
        else:
            yield option, argv[index + 1]
            index += 2


def _legacy_unix_path(spec: str) -> Optional[str]:
    """The socket path of a legacy chardev spec such as ``unix:/run/vm.qmp,server=on,wait=off``."""
    if not spec.startswith("unix:"):
        return None
    opts = parse_opts(spec[len("unix:"):], implied="path")
    return opts.get("path") or None


def endpoint_from_argv(argv: List[str], pid: Optional[int] = None) -> Optional[VmEndpoint]:
    """Read name and sockets from a QEMU argv; None when it has no unix QMP socket."""
    name: Optional[str] = None
    qmp_socket: Optional[str] = None
    chardev_paths: Dict[str, str] = {}
    control_chardevs: List[str] = []
    agent_chardev: Optional[str] = None

    for option, value in iter_options(argv):
        if value is None:
            continue
        if option == "name":
            name = parse_opts(value, implied="guest").get("guest") or name
        elif option in ("qmp", "qmp-pretty"):
            qmp_socket = qmp_socket or _legacy_unix_path(value)
        elif option == "chardev":
            opts = parse_opts(value, implied="backend")
            if opts.get("backend") == "socket" and opts.get("id") and opts.get("path"):
                chardev_paths[opts["id"]] = opts["path"]
        elif option == "mon":
            opts = parse_opts(value, implied="chardev")
            if opts.get("mode") == "control" and opts.get("chardev"):
                control_chardevs.append(opts["chardev"])
        elif option == "device":
            opts = parse_opts(value, implied="driver")
            if opts.get("driver") == "virtserialport" and opts.get("name") == AGENT_PORT_NAME:
                agent_chardev = opts.get("chardev")

    if qmp_socket is None:
        qmp_socket = next((chardev_paths[c] for c in control_chardevs if c in chardev_paths), None)
    if qmp_socket is None:
        return None
    if not name:
        # Without -name, the socket's file name is the one label that survives a restart.
        name = os.path.splitext(os.path.basename(qmp_socket))[0]
    return VmEndpoint(
        name=name,
        qmp_socket=qmp_socket,
        qga_socket=chardev_paths.get(agent_chardev) if agent_chardev else None,
        pid=pid,
        argv=list(argv),
    )


def is_qemu_argv(argv: List[str], exe: str = "") -> bool:
    """Whether a process is a QEMU system emulator."""
    names = {os.path.basename(argv[0]) if argv else "", os.path.basename(exe)}
    return any(n.startswith("qemu-system-") or n == "qemu-kvm" for n in names)


def read_argv(pid: int, proc: str = "/proc") -> List[str]:
    """The argv of a process, or [] when it is gone or unreadable."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [word.decode("utf-8", "surrogateescape") for word in raw.split(b"\0")[:-1]]


def qemu_processes(proc: str = "/proc") -> Dict[int, List[str]]:
    """Every running QEMU system emulator: pid -> argv."""
    found: Dict[int, List[str]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = read_argv(pid, proc)
        if not argv:
            continue
        try:
            exe = os.readlink(os.path.join(proc, entry, "exe"))
        except OSError:
            exe = ""
        if is_qemu_argv(argv, exe):
            found[pid] = argv
    return found


def _resolve_relative_sockets(endpoint: VmEndpoint, proc: str) -> None:
    """Socket paths in argv are relative to QEMU's working directory, not ours."""
    if os.path.isabs(endpoint.qmp_socket) and (endpoint.qga_socket is None or os.path.isabs(endpoint.qga_socket)):
        return
    try:
        cwd = os.readlink(os.path.join(proc, str(endpoint.pid), "cwd"))
    except OSError:
        return
    endpoint.qmp_socket = os.path.join(cwd, endpoint.qmp_socket)
    if endpoint.qga_socket:
        endpoint.qga_socket = os.path.join(cwd, endpoint.qga_socket)


def discover(proc: str = "/proc") -> List[VmEndpoint]:
    """Every QEMU on the host that has a unix QMP socket, sorted by name."""
    endpoints = []
    for pid, argv in qemu_processes(proc).items():
        endpoint = endpoint_from_argv(argv, pid)
        if endpoint is not None:
            _resolve_relative_sockets(endpoint, proc)
            endpoints.append(endpoint)
    return sorted(endpoints, key=lambda e: e.name)


def explicit_endpoints(vms: Iterable[Dict[str, Any]], proc: str = "/proc") -> List[VmEndpoint]:
    """Endpoints from an explicit list, matched to their process by QMP socket when possible."""
    running = {e.qmp_socket: e for e in discover(proc)}
    endpoints = []
    for spec in vms:
        qmp_socket = os.path.abspath(spec["qmp_socket"])
        match = running.get(qmp_socket)
        endpoints.append(VmEndpoint(
            name=spec["name"],
            qmp_socket=qmp_socket,
            qga_socket=spec.get("qga_socket") or (match.qga_socket if match else None),
            pid=match.pid if match else None,
            argv=match.argv if match else [],
            source="explicit",
        ))
    return endpoints
