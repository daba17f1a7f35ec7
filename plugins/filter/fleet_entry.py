# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_entry
short_description: One host's entry in the rolling playbook's fleet summary, from the host's variables
version_added: 0.2.0
description:
  - Turns one host's variables (C(hostvars[host])) into its entry of the fleet summary of the playbook
    C(hypervisor.cpr.rolling_kernel_update).
  - The host's C(kernel_update_report) when the role left one (its status C(failed) when the playbook noted an error
    the role did not, in C(rolling_error)); else C(failed) with C(rolling_error), C(preflight_failed) with
    C(rolling_preflight_error), C(not_started) when only the preflight ran (C(kernel_update_preflight)), or
    C(not_checked).
  - Keys the entry lacks come from the host's preflight plan (reboot method, kernels, planned VMs, whether the host
    needs the update and why) or are empty.
  - C(phases) begins with the preflight (from C(rolling_preflight_times), when the playbook noted it), followed by the
    role's phases; C(batch) is the number of the host's batch (C(rolling_batch_number)), V(null) before its batch.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description: The host's variables, such as C(hostvars[host]).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Every host of the rollout, as the summary lists it
  ansible.builtin.debug:
    msg: "{{ groups['hypervisors'] | map('extract', hostvars) | map('hypervisor.cpr.fleet_entry') }}"
"""

RETURN = r"""
_value:
  description:
    - The host's entry, with at least host, status, error, reboot_method, kernel_before, kernel_after, kernel_target,
      planned_vms, needed, why, batch, phases, blackout_seconds, host_blackout, boot_restore, vms, left_out, shut_down,
      started, still_saved and still_stopped.
  type: dict
"""

from typing import Any, Dict, List, Mapping


def _outcome(host: Mapping[str, Any], plan: Mapping[str, Any]) -> Dict[str, Any]:
    """What happened to the host: the role's report, or why there is none."""
    name = host["inventory_hostname"]
    if "kernel_update_report" in host:
        report = dict(host["kernel_update_report"])
        if "rolling_error" in host and report.get("status") != "failed":
            report.update(status="failed", error=host["rolling_error"])
        return report
    if "rolling_error" in host:
        return {"host": name, "status": "failed", "error": host["rolling_error"]}
    if "rolling_preflight_error" in host:
        return {"host": name, "status": "preflight_failed", "error": host["rolling_preflight_error"]}
    return {"host": name, "status": "not_started" if plan else "not_checked", "error": None}


def _preflight(host: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The preflight as a phase, from the times the playbook noted around it."""
    times = host.get("rolling_preflight_times") or {}
    started, finished = times.get("started_at"), times.get("finished_at")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (started, finished)):
        return []
    finished = max(float(started), float(finished))
    return [{"name": "preflight", "started_at": round(float(started), 3), "finished_at": round(finished, 3),
             "seconds": round(finished - float(started), 3)}]


def fleet_entry(host: Mapping[str, Any]) -> Dict[str, Any]:
    plan = host.get("kernel_update_preflight") or {}
    facts = host.get("ansible_facts") or {}
    planned = {
        "reboot_method": plan.get("reboot_method"),
        "kernel_before": plan.get("kernel_running", facts.get("kernel")),
        "kernel_after": None,
        "kernel_target": plan.get("kernel_target"),
        "planned_vms": plan.get("vms", []),
        "needed": plan.get("needed"),
        "why": list(plan.get("why") or []),
        "batch": host.get("rolling_batch_number"),
        "blackout_seconds": None, "host_blackout": None, "boot_restore": None,
        "vms": [], "left_out": [], "shut_down": [], "started": [], "still_saved": [], "still_stopped": [],
    }
    entry = {**planned, **_outcome(host, plan)}
    entry["phases"] = _preflight(host) + list(entry.get("phases") or [])
    return entry


class FilterModule:
    """The rolling playbook's fleet summary."""

    def filters(self) -> Dict[str, Any]:
        return {"fleet_entry": fleet_entry}
