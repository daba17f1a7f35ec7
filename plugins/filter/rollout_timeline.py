# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: rollout_timeline
short_description: The timeline of a rolling kernel update as an inline SVG
version_added: 0.2.0
description:
  - From the fleet summary of the playbook C(hypervisor.cpr.rolling_kernel_update), an SVG drawing for its HTML report.
    Time runs from left to right (UTC); each host is a row of its phases (preflight, prepare, save, pre_reboot, reboot,
    restore, verify), and under it each VM's blackout (from its stop to its return) is a bar. A failed host is red,
    with a cross where it failed.
  - A run of more than O(collapse_above) hosts collapses into one row per batch (C(batch) of each host's entry),
    each phase drawn in a thin lane of its own from its first start to its last end in the batch, the blackout from the first VM stopped to the
    last one back, and the count of hosts and failures as its label. Hosts without any phase are left out of the
    drawing, and their count is its caption.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description: The fleet summary (C(hosts), each with C(host), C(status), C(batch), C(phases) and C(vms)).
    type: dict
    required: true
  collapse_above:
    description: Draw one row per batch when more hosts than this have phases.
    type: int
    default: 40
"""

EXAMPLES = r"""
- name: Write the timeline
  ansible.builtin.copy:
    content: "{{ summary | hypervisor.cpr.rollout_timeline }}"
    dest: /tmp/timeline.svg
    mode: "0644"
"""

RETURN = r"""
_value:
  description: An C(<svg>) element with its width, height and C(viewBox), ready to put inline in HTML.
  type: str
"""

import html
import time
from typing import Any, Dict, Iterable, List, Mapping, Tuple

PHASES = ("preflight", "prepare", "save", "pre_reboot", "reboot", "restore", "verify")
COLORS = {"preflight": "#9aa5b1", "prepare": "#5b8def", "save": "#f0a35e", "pre_reboot": "#c98ed8",
          "reboot": "#e4c441", "restore": "#4fb98f", "verify": "#7fc8d8"}
BLACKOUT = "#333333"
FAILED = "#d62728"
# Pixels: the labels' column, the chart, a host's row, a VM's bar within it, the time axis.
LABEL_WIDTH = 190
CHART_WIDTH = 860
ROW = 20
VM_ROW = 7
AXIS = 34
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _blackouts(vms: Iterable[Mapping[str, Any]]) -> List[Tuple[str, float, float]]:
    """(name, stopped, back) of each VM with times."""
    return [(str(vm.get("name")), float(vm["paused_at"]), float(vm["paused_at"]) + float(vm["downtime_seconds"]))
            for vm in vms if _number(vm.get("paused_at")) and _number(vm.get("downtime_seconds"))]


def _spans(phases: Iterable[Mapping[str, Any]]) -> List[Tuple[str, float, float]]:
    return [(str(p.get("name")), float(p["started_at"]), float(p["finished_at"]))
            for p in phases if _number(p.get("started_at")) and _number(p.get("finished_at"))]


def _row(label: str, failed: bool, spans: List[Tuple[str, float, float]],
         bars: List[Tuple[str, float, float]], lanes: bool = False) -> Dict[str, Any]:
    """A row of the drawing; with lanes, each phase gets a thin lane of its own (a batch's phases overlap)."""
    return {"label": label, "failed": failed, "spans": spans, "bars": bars, "lanes": lanes}


def _batches(hosts: List[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One row per batch: each phase from its first start to its last end, the blackout from first stop to last back."""
    grouped: Dict[Any, List[Mapping[str, Any]]] = {}
    for host in hosts:
        grouped.setdefault(host.get("batch"), []).append(host)
    rows = []
    for batch, members in sorted(grouped.items(), key=lambda item: min(s[1] for h in item[1] for s in _spans(h["phases"]))):
        spans: Dict[str, Tuple[float, float]] = {}
        for name, start, end in (s for h in members for s in _spans(h["phases"])):
            first, last = spans.get(name, (start, end))
            spans[name] = (min(first, start), max(last, end))
        times = [b for h in members for b in _blackouts(h.get("vms") or [])]
        failed = sum(1 for h in members if h.get("status") == "failed")
        label = (f"batch {batch}" if batch is not None else "preflight only") + f": {len(members)} hosts" + (
            f", {failed} failed" if failed else "")
        bars = [(f"{len(times)} VMs", min(t[1] for t in times), max(t[2] for t in times))] if times else []
        rows.append(_row(label, failed > 0, [(n, s, e) for n, (s, e) in spans.items()], bars, lanes=True))
    return rows


def _lane(phase: str) -> int:
    return PHASES.index(phase) if phase in PHASES else len(PHASES) - 1


def _step(seconds: float) -> int:
    return next((step for step in STEPS if seconds / step <= 10), STEPS[-1])


def _clock(moment: float, step: int) -> str:
    return time.strftime("%H:%M:%S" if step < 60 else "%H:%M", time.gmtime(moment))


def rollout_timeline(summary: Mapping[str, Any], collapse_above: int = 40) -> str:
    hosts = [h for h in summary.get("hosts") or [] if _spans(h.get("phases") or [])]
    left = len(summary.get("hosts") or []) - len(hosts)
    collapsed = len(hosts) > collapse_above
    rows = _batches(hosts) if collapsed else [
        _row(str(h.get("host")) + ("" if h.get("status") != "failed" else " (failed)"), h.get("status") == "failed",
             _spans(h["phases"]), _blackouts(h.get("vms") or [])) for h in hosts]
    moments = [t for row in rows for _n, start, end in row["spans"] + row["bars"] for t in (start, end)]
    first, last = (min(moments), max(moments)) if moments else (0.0, 1.0)
    length = max(last - first, 1.0)
    step = _step(length)

    def x(moment: float) -> float:
        return round(LABEL_WIDTH + (moment - first) / length * CHART_WIDTH, 1)

    parts: List[str] = []
    y = AXIS
    for row in rows:
        height = ROW + len(row["bars"]) * (VM_ROW + 2)
        parts.append(f'<g class="row"><text x="4" y="{y + 14}" fill="{FAILED if row["failed"] else "#222"}">'
                     f'{html.escape(row["label"])}</text>')
        for name, start, end in row["spans"]:
            lane = (ROW - 6) / len(PHASES)
            top, tall = (y + 3 + _lane(name) * lane, lane) if row["lanes"] else (y + 3, ROW - 6)
            parts.append(f'<rect x="{x(start)}" y="{top:.1f}" width="{max(x(end) - x(start), 1.0):.1f}" height="{tall:.1f}" '
                         f'fill="{COLORS.get(name, "#bbbbbb")}"><title>{html.escape(name)}: {end - start:.2f} s</title></rect>')
        if row["failed"] and row["spans"]:
            cross = x(max(end for _n, _s, end in row["spans"]))
            parts.append(f'<path d="M{cross - 6},{y + 2}l12,{ROW - 4}M{cross + 6},{y + 2}l-12,{ROW - 4}" '
                         f'stroke="{FAILED}" stroke-width="3"><title>failed</title></path>')
        for index, (name, start, end) in enumerate(row["bars"]):
            top = y + ROW + index * (VM_ROW + 2)
            parts.append(f'<rect x="{x(start)}" y="{top}" width="{max(x(end) - x(start), 1.5):.1f}" height="{VM_ROW}" '
                         f'fill="{BLACKOUT}"><title>{html.escape(name)}: blackout {end - start:.2f} s</title></rect>'
                         f'<text x="{LABEL_WIDTH - 6}" y="{top + VM_ROW}" font-size="9" text-anchor="end" fill="#555">'
                         f'{html.escape(name)} {end - start:.2f} s</text>')
        parts.append(f'<line x1="0" x2="{LABEL_WIDTH + CHART_WIDTH}" y1="{y + height + 1}" y2="{y + height + 1}" '
                     'stroke="#eeeeee"/></g>')
        y += height + 3
    axis = []
    tick = (int(first) // step + 1) * step
    while tick <= last:
        axis.append(f'<line x1="{x(tick)}" x2="{x(tick)}" y1="{AXIS - 6}" y2="{y}" stroke="#dddddd"/>'
                    f'<text x="{x(tick)}" y="{AXIS - 10}" font-size="10" text-anchor="middle">{_clock(tick, step)}</text>')
        tick += step
    legend = "".join(f'<rect x="{LABEL_WIDTH + i * 105}" y="{y + 8}" width="10" height="10" fill="{COLORS[name]}"/>'
                     f'<text x="{LABEL_WIDTH + i * 105 + 14}" y="{y + 17}" font-size="10">{name}</text>'
                     for i, name in enumerate(PHASES))
    legend += (f'<rect x="{LABEL_WIDTH}" y="{y + 24}" width="10" height="{VM_ROW}" fill="{BLACKOUT}"/>'
               f'<text x="{LABEL_WIDTH + 14}" y="{y + 31}" font-size="10">VM blackout (stop to back)</text>')
    caption = (f"{len(hosts)} hosts" + (" in batches" if collapsed else "") + f", UTC, ticks every {step} s"
               + (f"; {left} hosts without phases (not started, unchanged or not checked) are not drawn" if left else ""))
    height = y + 50
    width = LABEL_WIDTH + CHART_WIDTH + 20
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'font-family="DejaVu Sans, sans-serif" font-size="12" role="img">'
            f'<title>Timeline of rolling kernel update {html.escape(str(summary.get("run_id") or ""))}</title>'
            f'<text x="4" y="14" font-size="11" fill="#555">{html.escape(caption)}</text>'
            + "".join(axis) + "".join(parts) + legend + "</svg>")


class FilterModule:
    """The rolling playbook's HTML report."""

    def filters(self) -> Dict[str, Any]:
        return {"rollout_timeline": rollout_timeline}
