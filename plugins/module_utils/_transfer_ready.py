# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Whether a running VM can move to a new QEMU with cpr-transfer, and the command line that new QEMU runs.

cpr-transfer starts the new QEMU beside the old one, with the old one's command line and two ``-incoming`` channels
(main and cpr, both unix sockets); ``migrate`` on the old one hands guest RAM over as file descriptors, so only device
state moves while the guest is paused. That needs every RAM block shared and backed by a descriptor: memory backends
with ``share=on`` and ``-machine aux-ram-share=on`` for the implicit ones (ROMs, video RAM). Pure logic: facts in,
reasons and argv out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import iter_options, pinned_argv

if TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import VmFacts

MIN_QEMU_TRANSFER = (10, 0, 0)
# QEMU preserves VFIO devices (and their pinned memory) across cpr-transfer from 10.1 on.
MIN_QEMU_TRANSFER_VFIO = (10, 1, 0)
# Migration capabilities neither cpr-reboot nor cpr-transfer can be combined with.
CONFLICTING = ("postcopy-ram", "x-colo", "background-snapshot")
# Where the channels' sockets live: one private directory per VM, owned by the user its QEMU runs as.
SOCKET_BASE = "/run/hypervisor-cpr"
SUN_PATH_MAX = 107
RELAUNCHED = "it is relaunched with cpr-reboot instead"


def migration_blockers(migration: Dict[str, Any], mode: str) -> List[str]:
    """What in QEMU's migration state (query-migrate, blockers, capabilities) keeps a VM from a cpr mode."""
    reasons = []
    status = migration.get("status")
    if status and status not in ("completed", "failed", "cancelled", "none"):
        reasons.append(f"a migration is already {status}: wait for it to end or cancel it (migrate_cancel)")
    reasons.extend(f"QEMU blocks migration: {reason}" for reason in migration.get("blocked_reasons", []))
    reasons.extend(f"migration capability {capability} is on, which {mode} cannot use: turn it off with "
                   "migrate-set-capabilities" for capability in migration.get("capabilities", [])
                   if capability in CONFLICTING)
    return reasons


@dataclass
class TransferVerdict:
    """Whether a VM can be transferred to a new QEMU (cpr-transfer), with every reason it cannot."""

    ready: bool
    reasons: List[str] = field(default_factory=list)


def transfer_verdict(facts: "VmFacts") -> TransferVerdict:
    """Every reason a VM cannot be transferred now; each says what it takes."""
    if facts.error or facts.problem:
        return TransferVerdict(False, [reason for reason in (facts.problem, facts.error) if reason])
    reasons: List[str] = []
    version = facts.version_tuple
    if version < MIN_QEMU_TRANSFER:
        reasons.append(f"QEMU {facts.qemu_version} has no cpr-transfer (it needs 10.0 or newer)")
    if facts.runstate != "running":
        reasons.append(f"its runstate is {facts.runstate}: only a running VM is transferred (one that does not run "
                       f"has no blackout to shorten), {RELAUNCHED}")
    if facts.aux_ram_share is not True:
        reasons.append("it was started without -machine aux-ram-share=on, so its ROMs and video RAM are not shared: "
                       "start it with that option once")
    for backend in facts.memory_backends:
        if not backend.share:
            reasons.append(f"the RAM of memory backend {backend.id} ({backend.type}) is not shared: give it share=on "
                           "(memory-backend-memfd or -file) and start the VM with it once")
    reasons.extend(migration_blockers(facts.migration, "cpr-transfer"))
    if facts.vfio and version < MIN_QEMU_TRANSFER_VFIO:
        reasons.append(f"it has VFIO devices ({', '.join(d['id'] for d in facts.vfio)}), which QEMU preserves across "
                       f"cpr-transfer only from 10.1 on (this is {facts.qemu_version}); {RELAUNCHED}, the guest "
                       "suspended first")
    reasons.extend(argv_reasons(facts.argv))
    if facts.unit and facts.unit.endswith(".service") and not facts.unit.startswith("hypervisor-cpr-"):
        reasons.append(f"its QEMU runs in systemd service {facts.unit}: when the old QEMU ends, systemd would run that "
                       "unit's ExecStop= and Restart= against the new QEMU, which serves the same socket paths; "
                       f"{RELAUNCHED} (into that unit with launch systemd)")
    return TransferVerdict(not reasons, reasons)


def argv_reasons(argv: List[str]) -> List[str]:
    """What on the command line keeps a second QEMU from starting beside the first."""
    options = {option for _index, option, _value in iter_options(argv)}
    reasons = []
    if "daemonize" in options:
        reasons.append(f"it runs with -daemonize: the new QEMU would fork away from the process the engine starts "
                       f"and records, so it could not be told apart from another; {RELAUNCHED}")
    if "pidfile" in options:
        reasons.append(f"it writes a -pidfile that the old QEMU holds locked, so a second QEMU could not start; "
                       f"{RELAUNCHED}")
    return reasons


# --------------------------------------------------------------------------- the channels


@dataclass(frozen=True)
class Channels:
    """The two sockets of one transfer, in the VM's private directory: main (device state) and cpr (descriptors)."""

    directory: str

    @classmethod
    def for_vm(cls, name: str, base: str = SOCKET_BASE) -> "Channels":
        """The VM's directory: its name, or a digest of it where the socket paths would be too long."""
        directory = os.path.join(base, name)
        if len(os.path.join(directory, "main")) > SUN_PATH_MAX:
            directory = os.path.join(base, hashlib.sha256(name.encode()).hexdigest()[:16])
        return cls(directory)

    @property
    def main(self) -> str:
        return os.path.join(self.directory, "main")

    @property
    def cpr(self) -> str:
        return os.path.join(self.directory, "cpr")

    @property
    def paths(self) -> Tuple[str, str]:
        return self.main, self.cpr

    def channel(self, kind: str) -> Dict[str, Any]:
        return {"channel-type": kind,
                "addr": {"transport": "socket", "type": "unix", "path": self.main if kind == "main" else self.cpr}}

    def incoming_args(self) -> List[str]:
        """The new QEMU's two -incoming options (JSON: QemuOpts has no syntax for a channel type)."""
        return [word for kind in ("main", "cpr")
                for word in ("-incoming", json.dumps(self.channel(kind), separators=(",", ":")))]

    def migrate_arguments(self) -> Dict[str, Any]:
        """The old QEMU's migrate command: both channels."""
        return {"channels": [self.channel("main"), self.channel("cpr")]}


def transfer_argv(argv: List[str], machine_type: str, channels: Channels) -> List[str]:
    """The recorded command line (binary from /proc) with the machine type pinned and the two channels added."""
    return pinned_argv(argv, machine_type) + channels.incoming_args()
