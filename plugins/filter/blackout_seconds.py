# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: blackout_seconds
short_description: A host's blackout, from the first VM stopped to the last VM back
version_added: 0.2.0
description:
  - From VMs that each have C(paused_at) (seconds since the epoch) and C(downtime_seconds), as
    RV(hypervisor.cpr.cpr_restore#module:vms) and the entries of C(kernel_update_report.vms) have them, the seconds
    from the first C(paused_at) to the last C(paused_at + downtime_seconds), rounded to milliseconds.
  - VMs without both numbers are left out; V(null) when none has them.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description: The VMs.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: How long the host's VMs were stopped, first to last
  ansible.builtin.debug:
    msg: "{{ restored.vms | hypervisor.cpr.blackout_seconds }}"
"""

RETURN = r"""
_value:
  description: Seconds, or V(null).
  type: float
"""

from typing import Any, Dict, Iterable, Mapping, Optional


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def blackout_seconds(vms: Iterable[Mapping[str, Any]]) -> Optional[float]:
    timed = [vm for vm in vms if _number(vm.get("paused_at")) and _number(vm.get("downtime_seconds"))]
    if not timed:
        return None
    first_paused = min(vm["paused_at"] for vm in timed)
    last_back = max(vm["paused_at"] + vm["downtime_seconds"] for vm in timed)
    return round(last_back - first_paused, 3)


class FilterModule:
    """A host's blackout."""

    def filters(self) -> Dict[str, Any]:
        return {"blackout_seconds": blackout_seconds}
