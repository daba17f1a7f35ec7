# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The boot restore's systemd unit: its text, where it lives, enabling it and taking it away again.

Ordered after the local file systems (and the state directory's mount) and before multi-user.target and the
services that start VMs, so that a saved VM is back from its state before anything could start it cold.
"""

from __future__ import annotations

import os
from typing import Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._host import systemd_runs_host
from ansible_collections.hypervisor.cpr.plugins.module_utils._units import UNIT_DIR, systemctl

ENTRY_UNIT = "hypervisor-cpr-boot-restore.service"
WANTED_BY = "multi-user.target"
# The services that start VMs at boot: the boot restore runs before them.
VM_STARTERS = ("libvirtd.service", "virtqemud.service", "libvirt-guests.service", "pve-guests.service",
               "ganeti.service", "machines.target")
# systemd gives up on the unit this long after the restore's own timeout would have ended it.
UNIT_TIMEOUT_MARGIN = 60
# Characters a path in the unit (ExecStart, RequiresMountsFor) cannot hold without quoting systemd does not have.
UNSAFE_CHARS = set(" \t\n\"'\\%;$`")


def unit_text(python: str, state_dir_path: str, config_path: str, launcher_path: str, timeout: float) -> str:
    """The unit that runs the launcher once, while the entry's config exists."""
    return (
        "# Written by hypervisor.cpr's boot_restore module: at the next boot it brings back the VMs saved before the\n"
        "# reboot, once, then removes itself. boot_restore state=absent removes it too.\n"
        "[Unit]\n"
        "Description=Restore the VMs hypervisor.cpr saved before this reboot\n"
        f"RequiresMountsFor={state_dir_path}\n"
        "After=local-fs.target\n"
        f"Before={WANTED_BY} {' '.join(VM_STARTERS)}\n"
        f"ConditionPathExists={config_path}\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={python} -I -B {launcher_path}\n"
        f"TimeoutStartSec={int(timeout) + UNIT_TIMEOUT_MARGIN}\n"
        "# The QEMUs it starts run in transient units of their own.\n"
        "KillMode=process\n\n"
        "[Install]\n"
        f"WantedBy={WANTED_BY}\n")


def unit_path() -> str:
    return os.path.join(UNIT_DIR, ENTRY_UNIT)


def _wants_path() -> str:
    return os.path.join(UNIT_DIR, f"{WANTED_BY}.wants", ENTRY_UNIT)


def unit_enabled() -> bool:
    return os.path.islink(_wants_path())


def installed_unit() -> Optional[str]:
    """The unit file as it is now, None when there is none."""
    try:
        with open(unit_path(), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def install_unit(unit: Optional[str]) -> None:
    """Write and enable the unit (init systemd), or remove one an earlier entry left (unit None: init script)."""
    if unit is None:
        if os.path.exists(unit_path()) or unit_enabled():
            remove_unit(reload=systemd_runs_host())
        return
    tmp = unit_path() + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(unit)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, unit_path())
    hint = "the boot entry could not be armed; no VM was touched"
    systemctl(["daemon-reload"], hint)
    systemctl(["enable", ENTRY_UNIT], hint)


def remove_unit(reload: bool) -> None:
    """Remove the unit and its enablement; reload: tell systemd (not at boot, from inside the unit itself)."""
    for path in (_wants_path(), unit_path()):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if reload:
        systemctl(["daemon-reload"], "the boot entry's unit is removed, but systemd still knows it until a reload")
