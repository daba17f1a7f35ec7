# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The records a state directory holds: a saved VM's manifest and a shut-down VM's stop record.

A manifest is written (as ``<vm>.saving``) before QEMU is told to stop, becomes
``<vm>.json`` once the state file is complete, and is removed only once the new
QEMU has the VM back in its old runstate. A run that dies anywhere can
therefore be finished from the manifests. A stop record says how to start a VM
again whose guest was shut down (vm_power) or whose QEMU died during a save.
_state_dir.StateDir reads and writes them; this file only says what they hold.
"""

from __future__ import annotations

import re
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, ManifestError

# 2: the state file's checksum is one SHA-256 per chunk (state_chunks), no longer one over the whole file
# (state_sha256). Format 1 manifests are still read and verified as before; an older hypervisor.cpr refuses
# format 2 by its number instead of taking the file for a damaged one.
# 3: the chunks' digests may be XXH3-128, named by state_checksum (format 2's are SHA-256, its default), so that
# a version that only knows SHA-256 refuses it by its number too.
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
# A VM name becomes a file name: keep it to characters that are safe there.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
# How a VM recorded for a fresh start went down, when it was not vm_power that shut it down.
HOW_QEMU_DIED = "qemu-died-during-save"


@dataclass
class Manifest:
    """Everything needed to bring one VM back after its QEMU is gone."""

    name: str
    argv: List[str]
    cwd: str
    qmp_socket: str
    qga_socket: Optional[str]
    machine_type: str
    qemu_version: str
    runstate_before: str
    suspended_by_us: bool
    agent_answered: bool
    ram_in_place: bool
    memory_backends: List[Dict[str, Any]]
    capabilities: Dict[str, bool]
    parameters: Dict[str, Any]
    state_file: str
    reboot: str
    paused_at: float
    boot_id: str
    kernel: str
    state_bytes: int = 0
    # Format 1: the SHA-256 of the whole state file. Formats 2 and 3 leave it empty and have the fields below.
    state_sha256: str = ""
    # The digest of each state_chunk_bytes of the state file, in order (_checksum), by state_checksum.
    state_chunk_bytes: int = 0
    state_chunks: List[str] = field(default_factory=list)
    state_checksum: str = "sha256"
    saved_at: float = 0.0
    # Seconds from QEMU's migrate command to the state file synced and checksummed.
    save_seconds: float = 0.0
    # The QEMU that was saved (pid, start time, boot id): a running QEMU of the VM's name is it only if it matches.
    qemu_process: Dict[str, Any] = field(default_factory=dict)
    # Who it ran as (uid, gid, groups): the restore starts it as the same user.
    credentials: Dict[str, Any] = field(default_factory=dict)
    # The systemd unit kept from starting it cold while it is saved; the restore releases it.
    held_unit: Optional[str] = None
    # The run that saved it (run_lock's run id): the boot restore brings back only its own run's VMs.
    run_id: Optional[str] = None
    format: int = FORMAT_VERSION
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def runstate_after(self) -> str:
        """The runstate a restore brings the VM back to: a guest the save suspended is woken."""
        return "running" if self.suspended_by_us else self.runstate_before

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self, current_boot_id: str) -> Dict[str, Any]:
        """What vm_status reports of a VM saved and not yet restored."""
        keys = ("name", "runstate_before", "suspended_by_us", "agent_answered", "ram_in_place", "state_bytes",
                "paused_at", "saved_at", "save_seconds", "reboot", "kernel", "boot_id")
        return dict({key: getattr(self, key) for key in keys}, saved_this_boot=self.boot_id == current_boot_id)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: str) -> "Manifest":
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls)
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if data.get("format") not in READABLE_FORMATS or missing:
            raise ManifestError(
                f"manifest {path} has format {data.get('format')!r}"
                + (f" and lacks {', '.join(missing)}" if missing else ""),
                data.get("name"),
                hint="this version of hypervisor.cpr reads formats "
                f"{', '.join(str(f) for f in READABLE_FORMATS)}; restore the VM with the version that saved it",
            )
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class StopRecord:
    """What starting a shut-down VM again needs."""

    name: str
    argv: List[str]
    cwd: str
    qmp_socket: str
    qga_socket: Optional[str]
    agent_answered: bool
    how: str
    stopped_at: float = field(default_factory=time.time)
    # Who it ran as (uid, gid, groups): it is started again as the same user.
    credentials: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> Dict[str, Any]:
        """What vm_status reports of a VM shut down and not yet started."""
        return {"name": self.name, "how": self.how, "stopped_at": self.stopped_at, "agent_answered": self.agent_answered}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: str) -> "StopRecord":
        try:
            return cls(**data)
        except TypeError as exc:
            raise ManifestError(f"the record {path} of a shut-down VM cannot be read: {exc}", data.get("name"),
                                hint="start the VM by hand with the command line it had, then remove the record") from None


def check_name(name: str) -> None:
    """A VM name must be usable as a file name in the state directory."""
    if not _SAFE_NAME.match(name):
        raise CprError(
            f"the VM name {name!r} cannot name a state file", name,
            hint="use letters, digits, dot, dash, underscore or plus, starting with a letter or digit",
        )
