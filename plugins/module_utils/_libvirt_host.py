# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""libvirt_status: the host's libvirt domains, what would start or save them behind our back, and what is saved.

Three things on a libvirt host act on domains around a reboot besides us:
a domain's autostart flag (libvirt starts it when its daemon starts),
``libvirt-guests`` (``ON_SHUTDOWN`` saves or shuts down running domains at
shutdown, ``ON_BOOT=start`` starts the ones it handled at boot), and, since
libvirt 11.2, the daemon's own ``auto_shutdown_*`` settings in qemu.conf. The
report says what is configured, so that an operator sees it before the
reboot; libvirt_save turns the autostart of each domain it saves off until
libvirt_restore brought the domain back from its image.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._host import (
    systemd_runs_host,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import (
    SPARSE_SINCE,
    Libvirt,
    save_dir,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_state import (
    records,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir

GUESTS_DEFAULTS = "/etc/default/libvirt-guests"
QEMU_CONF = "/etc/libvirt/qemu.conf"
# libvirt-guests' own defaults, when the file does not set them.
GUESTS_DEFAULT_VALUES = {"ON_BOOT": "ignore", "ON_SHUTDOWN": "shutdown", "PARALLEL_SHUTDOWN": "0"}
_ASSIGNMENT = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"?([^"#]*?)"?\s*(#.*)?$')


def read_assignments(path: str) -> Dict[str, str]:
    """KEY=value (shell) or key = "value" (libvirt's .conf) lines of a file; {} when it cannot be read."""
    values: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = _ASSIGNMENT.match(line)
                if match and not line.lstrip().startswith("#"):
                    values[match.group(1)] = match.group(2).strip()
    except OSError:
        pass
    return values


def guests_service_enabled() -> Optional[bool]:
    """Whether libvirt-guests runs at boot and shutdown (systemd, else SysV links); None when it is not installed."""
    if not os.path.exists("/usr/lib/libvirt/libvirt-guests.sh") and not os.path.exists("/etc/init.d/libvirt-guests"):
        return None
    if systemd_runs_host():
        return os.path.exists("/etc/systemd/system/multi-user.target.wants/libvirt-guests.service")
    try:
        return any(entry.startswith("S") and entry.endswith("libvirt-guests")
                   for level in ("2", "3", "4", "5") for entry in os.listdir(f"/etc/rc{level}.d"))
    except OSError:
        return False


def host_config(lv: Libvirt) -> Dict[str, Any]:
    """libvirt-guests and the daemon's settings that act on domains around a reboot, and what they mean for us."""
    guests = dict(GUESTS_DEFAULT_VALUES, **read_assignments(GUESTS_DEFAULTS))
    # The daemon's own qemu.conf, as the daemon sees it (it may run in a mount namespace of its own).
    qemu = read_assignments(lv.local(QEMU_CONF))
    enabled = guests_service_enabled()
    config = {
        "libvirt_guests": {"installed": enabled is not None, "enabled": bool(enabled),
                           "on_boot": guests["ON_BOOT"], "on_shutdown": guests["ON_SHUTDOWN"],
                           "parallel_shutdown": guests["PARALLEL_SHUTDOWN"]},
        "save_image_format": qemu.get("save_image_format", "raw"),
        "auto_shutdown_try_save": qemu.get("auto_shutdown_try_save"),
        "auto_start_bypass_cache": qemu.get("auto_start_bypass_cache"),
        "save_dir": save_dir(lv.uri),
    }
    findings = []
    if enabled and guests["ON_BOOT"] == "start":
        findings.append("libvirt-guests has ON_BOOT=start: at boot it starts the domains it saved or shut down itself "
                        "at shutdown; a domain libvirt_save saved is shut off before the reboot, so libvirt-guests "
                        "does not handle it, and libvirt starts a domain with a managed save image from that image")
    if config["save_image_format"] != "sparse":
        findings.append(f"libvirt writes managed save images in the {config['save_image_format']} format (qemu.conf "
                        "save_image_format), as big as each domain's RAM"
                        + (": set save_image_format = \"sparse\" to write each page at a fixed place and skip unused "
                           "RAM" if lv.conn.getLibVersion() >= SPARSE_SINCE else
                           f"; libvirt 11.2 or later (this is {lv.version()}) writes sparse ones"))
    return {"config": config, "findings": findings}


def status(uri: str, state_dir_path: Optional[str] = None) -> Dict[str, Any]:
    """What libvirt_status returns: libvirt's version, every domain, the host's settings, the saved domains."""
    with Libvirt(uri) as lv:
        result: Dict[str, Any] = {"changed": False, "uri": uri, "libvirt_version": lv.version(),
                                  "domains": [d.to_dict() for d in lv.domains()]}
        result.update(host_config(lv))
    result["autostart"] = [d["name"] for d in result["domains"] if d["autostart"]]
    result["saved"] = []
    if state_dir_path is not None:
        with StateDir.open(state_dir_path) as state_dir:
            result["saved"] = [r.report() for r in records(state_dir)]
    return result
