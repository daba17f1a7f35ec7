# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""systemd units that would start a saved VM cold, held until the VM is back from its saved state.

A VM whose QEMU runs in an operator's service (say ``qemu@web1.service``) would
be started afresh by that service at boot, or at once by ``Restart=always``
when the save quits QEMU: with RAM kept in place, that cold boot writes over
the guest memory the saved state needs. So before its QEMU quits, the service
gets a drop-in that lets it start only once the VM's manifest is gone
(``ConditionPathExists=!<state_dir>/<vm>.json``), and the restore removes the
drop-in once the VM is back. A unit that a restore started (``hypervisor-cpr-*``)
or a manager's scope is not held: nothing starts those from a command line.
"""

from __future__ import annotations

import os
import subprocess
from typing import List, NamedTuple, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import parent_of, systemd_runs_host

UNIT_DIR = "/etc/systemd/system"
DROP_IN = "50-hypervisor-cpr-hold.conf"


class Hold(NamedTuple):
    """A unit to hold while a VM is saved, and the manifest whose existence keeps it from starting."""

    unit: str
    vm: str
    manifest_path: str


def holdable(unit: Optional[str]) -> bool:
    """A service of the operator's that could start the VM: not a transient unit of ours, not a scope."""
    return bool(unit) and str(unit).endswith(".service") and not str(unit).startswith("hypervisor-cpr-")


def drop_in_path(unit: str, unit_dir: str = UNIT_DIR) -> str:
    return os.path.join(unit_dir, f"{unit}.d", DROP_IN)


def drop_in(vm: str, manifest_path: str) -> str:
    """The drop-in that keeps a unit from starting while the VM is saved."""
    return (f"# Written by hypervisor.cpr while VM {vm} is saved: it must come back from its saved state, not\n"
            "# start afresh. cpr_restore removes this file once the VM is back.\n"
            f"[Unit]\nConditionPathExists=!{manifest_path}\n")


def systemctl(args: List[str], hint: str = "the units that start VMs could not be held; nothing was saved") -> None:
    try:
        subprocess.run(["systemctl", *args], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip()
        raise CprError(f"systemctl {' '.join(args)} failed: {detail}", hint=hint) from None


def hold(holds: List[Hold], unit_dir: str = UNIT_DIR) -> None:
    """Give each unit its drop-in, then reload systemd once."""
    for unit, vm, manifest_path in holds:
        path = drop_in_path(unit, unit_dir)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(drop_in(vm, manifest_path))
    if holds:
        systemctl(["daemon-reload"])


def release(units: List[str], unit_dir: str = UNIT_DIR) -> None:
    """Remove the drop-ins of these units (those that are there), then reload systemd once."""
    removed = False
    for unit in units:
        path = drop_in_path(unit, unit_dir)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed = True
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass  # the operator's own drop-ins live there too
    if removed and systemd_runs_host():
        systemctl(["daemon-reload"])


def unheld_launcher(pid: Optional[int]) -> Optional[str]:
    """On a host systemd does not run: what may start this QEMU again that we cannot hold, for a warning."""
    if systemd_runs_host() or not pid:
        return None
    parent = parent_of(pid)
    who = f"its parent {parent[1]} (pid {parent[0]})" if parent and parent[0] > 1 else "nothing hypervisor.cpr can see"
    return (f"systemd does not run this host, so no unit can be held for it, and {who} may start it: make sure nothing "
            "starts it afresh before cpr_restore brings it back (its boot scripts, a supervisor, a manager)")
