# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: vm_reports
short_description: The VMs of the kernel_update role's report, from what cpr_restore returned
version_added: 0.2.0
description:
  - Turns the RV(hypervisor.cpr.cpr_restore#module:vms) entries of one or more M(hypervisor.cpr.cpr_restore) results,
    and those of M(hypervisor.cpr.qemu_update), into the entries of C(kernel_update_report.vms) of the
    P(hypervisor.cpr.kernel_update#role) role, one per VM.
  - Where several results name a VM (the role's restore, then its rescue's), the first entry wins.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description: The RV(hypervisor.cpr.cpr_restore#module:vms) entries, of one result or of several joined.
    type: list
    elements: dict
    required: true
  saved_by_earlier_run:
    description: Names of the VMs the state directory held saved when the run started (an earlier run saved them).
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Report every VM restored, by the restore or by its rescue
  ansible.builtin.debug:
    msg: "{{ (restored.vms | default([]) + rescued.vms | default([])) | hypervisor.cpr.vm_reports(['web1']) }}"
"""

RETURN = r"""
_value:
  description:
    - One entry per VM, in the order of the input, with the keys C(name), C(method), C(reason), C(runstate_before),
      C(runstate), C(suspended_by_us), C(saved_by_earlier_run), C(paused_at), C(downtime_seconds), C(save_seconds),
      C(restore_seconds), C(state_bytes), C(ram_in_place), C(restored_at_boot), C(boot_restore_seconds),
      C(managed_by), C(qemu_version_before), C(qemu_version_after), C(binary_before), C(binary_after), C(pid_before)
      and C(pid_after).
    - All but C(saved_by_earlier_run) and C(method) are the ones of RV(hypervisor.cpr.cpr_restore#module:vms),
      RV(hypervisor.cpr.qemu_update#module:vms) or RV(hypervisor.cpr.libvirt_restore#module:vms) (whose C(managed_by)
      is V(libvirt) and C(state_bytes) the bytes its managed save image takes), V(null) where the entry lacks them
      (C(managed_by) is then V(none)); C(saved_by_earlier_run) tells whether the VM's name is in
      O(saved_by_earlier_run).
    - C(method) is V(transfer) or V(relaunch) as M(hypervisor.cpr.qemu_update) reports it, else V(save-restore)
      (saved by M(hypervisor.cpr.cpr_save) or M(hypervisor.cpr.libvirt_save), restored by M(hypervisor.cpr.cpr_restore)
      or M(hypervisor.cpr.libvirt_restore)).
  type: list
  elements: dict
"""

from typing import Any, Dict, Iterable, List, Mapping

# The keys of a report entry, in order; all but saved_by_earlier_run are cpr_restore's.
KEYS = ("name", "method", "reason", "runstate_before", "runstate", "suspended_by_us", "saved_by_earlier_run", "paused_at",
        "downtime_seconds", "save_seconds", "restore_seconds", "state_bytes", "ram_in_place", "restored_at_boot",
        "boot_restore_seconds", "managed_by", "qemu_version_before", "qemu_version_after", "binary_before",
        "binary_after", "pid_before", "pid_after")
# How a VM got its new QEMU: qemu_update says (transfer, relaunch); cpr_restore's entries were saved and restored.
SAVE_RESTORE = "save-restore"


def vm_reports(restored: Iterable[Mapping[str, Any]], saved_by_earlier_run: Iterable[str] = ()) -> List[Dict[str, Any]]:
    earlier = set(saved_by_earlier_run)
    reports: Dict[str, Dict[str, Any]] = {}
    for vm in restored:
        if vm["name"] not in reports:
            # cpr_restore's VMs are managed by no one else (vm_status's managed_by none); libvirt_restore's say libvirt.
            entry = dict(vm, saved_by_earlier_run=vm["name"] in earlier, method=vm.get("method") or SAVE_RESTORE,
                         managed_by=vm.get("managed_by", "none"))
            reports[vm["name"]] = {key: entry.get(key) for key in KEYS}
    return list(reports.values())


class FilterModule:
    """The kernel_update role's per-VM report."""

    def filters(self) -> Dict[str, Any]:
        return {"vm_reports": vm_reports}
