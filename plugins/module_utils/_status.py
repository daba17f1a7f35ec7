# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""vm_status: the facts and readiness of the selected VMs and, with a state directory, what it holds.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import discover
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection, select_vms
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import check_timeout


# What vm_status says of a QEMU it was not asked about, read from /proc only.
OTHER_KEYS = ("name", "pid", "exe", "managed_by", "recognised_by", "unit", "problem")


def status(selection: Selection, options: FactsOptions, state_dir_path: Optional[str] = None) -> Dict[str, Any]:
    """What the vm_status module returns.

    A VM the state directory holds (saved, or shut down) is listed there and not among the running VMs, and
    naming it is not an error.
    """
    check_timeout(options.timeout)
    result: Dict[str, Any] = {"changed": False}
    held = set()
    if state_dir_path is not None:
        with StateDir.open(state_dir_path) as state_dir:
            result.update(state_dir.pending(boot_id()))
        held = {vm["name"] for vm in result["saved"] + result["stopped"]} | set(result["libvirt_saved"])
    result["vms"] = [f.to_dict() for f in select_vms(selection, options, held)]
    selected = {vm["pid"] for vm in result["vms"] if vm["pid"]}
    # A reboot takes every QEMU of the host down, the ones not selected too: they are accounted for here.
    result["others"] = [{key: getattr(e, key) for key in OTHER_KEYS} for e in discover() if e.pid not in selected]
    result["warnings"] = [vm["error"] for vm in result["vms"] if vm["error"]]
    return result
