# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: phase_spans
short_description: The phases of a host's update as spans of time, from the moments each began
version_added: 0.2.0
description:
  - The P(hypervisor.cpr.kernel_update#role) role notes when each phase of a host's update begins (prepare, save,
    pre_reboot, reboot, restore, verify). Each phase lasts until the next one begins, the last one until O(end).
  - Marks without a number for C(started_at) are left out; a phase that begins after O(end) (a clock that went back)
    ends where it begins.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description: The marks in the order they were made, each with C(name) and C(started_at) (seconds since the epoch).
    type: list
    elements: dict
    required: true
  end:
    description: When the last phase ended, in seconds since the epoch.
    type: float
    required: true
"""

EXAMPLES = r"""
- name: The phases of the update with their times
  ansible.builtin.debug:
    msg: "{{ [{'name': 'prepare', 'started_at': 1000.0}, {'name': 'save', 'started_at': 1004.5}]
             | hypervisor.cpr.phase_spans(1010.0) }}"
"""

RETURN = r"""
_value:
  description: One entry per phase with C(name), C(started_at), C(finished_at) and C(seconds), rounded to milliseconds.
  type: list
  elements: dict
"""

from typing import Any, Dict, Iterable, List, Mapping


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def phase_spans(marks: Iterable[Mapping[str, Any]], end: float) -> List[Dict[str, Any]]:
    timed = [mark for mark in marks if _number(mark.get("started_at"))]
    spans = []
    for mark, following in zip(timed, timed[1:] + [{"started_at": float(end)}]):
        started = float(mark["started_at"])
        finished = max(started, float(following["started_at"]))
        spans.append({"name": mark["name"], "started_at": round(started, 3), "finished_at": round(finished, 3),
                      "seconds": round(finished - started, 3)})
    return spans


class FilterModule:
    """The phases of the kernel_update role's report."""

    def filters(self) -> Dict[str, Any]:
        return {"phase_spans": phase_spans}
