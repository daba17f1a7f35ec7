# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""QEMU command lines: what they say (name, monitor, guest agent), the same with secrets hidden, and the lines a
restart runs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
REDACTED = "********"

# QEMU options that take no value; every other option consumes the next word.
_FLAGS = frozenset((
    "S", "s", "daemonize", "nodefaults", "no-user-config", "no-shutdown", "no-reboot",
    "enable-kvm", "snapshot", "nographic", "no-hpet", "no-acpi", "full-screen", "no-quit",
    "preconfig", "only-migratable", "enable-sync-profile", "no-fd-bootchk", "win2k-hack",
    "rtc-td-hack", "no-kvm", "old-param", "semihosting", "version", "help", "h", "ctrl-grab",
    "alt-grab", "no-frame", "curses", "portrait", "msg", "mem-prealloc", "enable-fips",
))
# Keys whose values are secrets wherever they appear (-spice password=, -drive ...,password=, iscsi, rbd keys).
_SECRET_KEYS = re.compile(r"(^|\.)(password|passwd|key-secret-data|secret-data)$")


@dataclass
class QemuArgs:
    """What a QEMU command line says about reaching its VM."""

    name: Optional[str] = None
    qmp_socket: Optional[str] = None
    qga_socket: Optional[str] = None
    # Monitors QEMU was handed as an inherited descriptor (-chardev socket,fd=N, as libvirt starts it).
    monitor_fds: List[str] = field(default_factory=list)
    # Human monitors (-monitor, -mon mode=readline): no QMP there.
    hmp: bool = False
    # Options by name with their values, for the callers that look for one (-sandbox, -id, -run-with).
    options: Dict[str, List[str]] = field(default_factory=dict)


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
    opts: Dict[str, str] = {}
    for position, part in enumerate(_split_opts(value)):
        key, sep, val = part.partition("=")
        if sep:
            opts[key] = val
        elif position == 0 and implied:
            opts[implied] = part
        elif part:
            # A bare flag such as "server" or "nowait" in the legacy syntax.
            opts[part] = "on"
    return opts


def _split_opts(value: str) -> List[str]:
    """QemuOpts parts split on single commas; ``,,`` stays a literal comma inside a part."""
    return [part.replace("\0", ",") for part in value.replace(",,", "\0").split(",")]


def _opt_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def iter_options(argv: List[str]) -> Iterator[Tuple[int, str, Optional[str]]]:
    """Yield (index of its value, option, value) for a QEMU argv; flags yield a None value."""
    index = 1
    while index < len(argv):
        word = argv[index]
        if not word.startswith("-") or word == "-":
            index += 1
            continue
        option = word.lstrip("-")
        if option in _FLAGS or index + 1 >= len(argv):
            yield index, option, None
            index += 1
        else:
            yield index + 1, option, argv[index + 1]
            index += 2


def stays_after_power_off(argv: List[str]) -> bool:
    """Whether QEMU stays, in the shutdown runstate, once its guest powered off, instead of exiting.

    -no-shutdown does that (libvirt starts every QEMU so), and -action shutdown=pause.
    """
    return any(option == "no-shutdown" or (option == "action" and value is not None
                                           and parse_opts(value).get("shutdown") == "pause")
               for _index, option, value in iter_options(argv))


def _legacy_unix_path(spec: str) -> Optional[str]:
    """The socket path of a legacy chardev spec such as ``unix:/run/vm.qmp,server=on,wait=off``."""
    if not spec.startswith("unix:"):
        return None
    return parse_opts(spec[len("unix:"):], implied="path").get("path") or None


def read_args(argv: List[str]) -> QemuArgs:
    """Name, QMP and agent sockets of a QEMU argv (sockets as written: relative ones are QEMU's cwd's)."""
    args = QemuArgs()
    chardev_paths: Dict[str, str] = {}
    chardev_fds: Dict[str, str] = {}
    control_chardevs: List[str] = []
    agent_chardev: Optional[str] = None
    for _index, option, value in iter_options(argv):
        if value is None:
            continue
        args.options.setdefault(option, []).append(value)
        if option == "name":
            args.name = parse_opts(value, implied="guest").get("guest") or args.name
        elif option in ("qmp", "qmp-pretty"):
            args.qmp_socket = args.qmp_socket or _legacy_unix_path(value)
        elif option == "monitor":
            args.hmp = True
        elif option == "chardev":
            opts = parse_opts(value, implied="backend")
            if opts.get("backend") == "socket" and opts.get("id"):
                if opts.get("path"):
                    chardev_paths[opts["id"]] = opts["path"]
                elif opts.get("fd"):
                    chardev_fds[opts["id"]] = opts["fd"]
        elif option == "mon":
            opts = parse_opts(value, implied="chardev")
            if opts.get("mode", "readline") != "control":
                args.hmp = True
            elif opts.get("chardev"):
                control_chardevs.append(opts["chardev"])
        elif option == "device":
            opts = parse_opts(value, implied="driver")
            if opts.get("driver") == "virtserialport" and opts.get("name") == AGENT_PORT_NAME:
                agent_chardev = opts.get("chardev")
    if args.qmp_socket is None:
        args.qmp_socket = next((chardev_paths[c] for c in control_chardevs if c in chardev_paths), None)
    args.monitor_fds = [chardev_fds[c] for c in control_chardevs if c in chardev_fds]
    args.qga_socket = chardev_paths.get(agent_chardev) if agent_chardev else None
    if not args.name and args.qmp_socket:
        # Without -name, the socket's file name is the one label that survives a restart.
        args.name = os.path.splitext(os.path.basename(args.qmp_socket))[0]
    return args


# --------------------------------------------------------------------------- secrets


def redact(argv: List[str]) -> List[str]:
    """The argv with every secret hidden: secret objects' data, passwords; for results, reports and logs."""
    hidden = list(argv)
    for index, option, value in iter_options(argv):
        if value is not None:
            hidden[index] = _redact_value(option, value)
    return hidden


def _redact_value(option: str, value: str) -> str:
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, dict):
            hidden = _redact_dict(parsed, option == "object" and parsed.get("qom-type") == "secret")
            return json.dumps(hidden, separators=(",", ":")) if hidden != parsed else value
        return value
    parts = _split_opts(value)
    secret_object = option == "object" and parts[0] in ("secret", "qom-type=secret")
    redacted = []
    for part in parts:
        key, sep, _val = part.partition("=")
        if sep and (_SECRET_KEYS.search(key) or (secret_object and key in ("data", "iv"))):
            part = f"{key}={REDACTED}"
        redacted.append(part.replace(",", ",,"))
    return ",".join(redacted)


def _redact_dict(data: Dict[str, Any], secret_object: bool) -> Dict[str, Any]:
    def secret(key: str, val: Any) -> bool:
        return isinstance(val, str) and bool(_SECRET_KEYS.search(key) or (secret_object and key in ("data", "iv")))

    return {key: REDACTED if secret(key, val) else _redact_dict(val, False) if isinstance(val, dict) else val
            for key, val in data.items()}


# --------------------------------------------------------------------------- restarts


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


def restore_argv(argv: List[str], machine_type: str) -> List[str]:
    """The recorded argv with the machine type pinned, any -S and old -incoming removed, -incoming defer added."""
    return pinned_argv(argv, machine_type) + ["-incoming", "defer"]


def pinned_argv(argv: List[str], machine_type: str) -> List[str]:
    """The recorded argv with any -S and old -incoming removed and the versioned machine type pinned at the end.

    A newer QEMU binary maps an unversioned machine (q35) to its own newest version; the pin keeps the guest's ABI.
    """
    old = fresh_argv(argv)
    pinned: List[str] = []
    index = 0
    while index < len(old):
        # A VM restored before already carries the pin; do not stack another.
        if old[index] in ("-machine", "--machine", "-M") and index + 1 < len(old) and old[index + 1] == machine_type:
            index += 2
        else:
            pinned.append(old[index])
            index += 1
    return pinned + ["-machine", machine_type]
