# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: blocking_alerts
short_description: The alerts of a Prometheus-compatible alerts API that hold a rollout
version_added: 0.2.0
description:
  - From the answer of a Prometheus-compatible C(GET /api/v1/alerts) (Prometheus, Thanos Ruler, VictoriaMetrics
    vmalert, Mimir and Cortex rulers), the alerts that block the next batch of the playbook
    C(hypervisor.cpr.rolling_kernel_update) (C(rolling_block_on_alerts)).
  - An alert blocks when it fires (or is pending, with O(include_pending)), every matcher of O(match) matches its labels,
    and no entry of O(ignore) matches it.
  - Matchers are written as in PromQL and Alertmanager, C(label=value), C(label!=value), C(label=~regex),
    C(label!~regex), the value quoted or not; regular expressions match the whole value; a label the alert lacks is
    empty.
  - Bad matchers and answers that are not an alerts list raise an error that names them.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description: The API's answer, parsed (C(status) and C(data.alerts)), or its list of alerts.
    type: raw
    required: true
  match:
    description:
      - Matchers every blocking alert matches, as a list or one string such as V({severity="critical", team=~"infra|db"}).
        Empty means every firing alert blocks.
    type: raw
    default: []
  ignore:
    description:
      - Alerts that never block, as a list of alert names (V(Watchdog)) or matchers (V(alertname=~"Info.*")), or one
        string of them separated by commas. An alert matching any entry is ignored.
    type: raw
    default: []
  include_pending:
    description: Pending alerts (not yet firing for their C(for) time) block too.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Ask Prometheus for its alerts
  ansible.builtin.uri:
    url: http://prometheus.example.com:9090/api/v1/alerts
  register: alerts

- name: Show the critical ones that are not the watchdog
  ansible.builtin.debug:
    msg: "{{ alerts.json | hypervisor.cpr.blocking_alerts(match=['severity=critical'], ignore=['Watchdog']) }}"
"""

RETURN = r"""
_value:
  description:
    - The blocking alerts, in the API's order, each with C(name) (its C(alertname)), C(state), C(labels), C(active_at),
      C(summary) (its C(summary) or C(description) annotation, else V(null)) and C(text), a short line for people such
      as V(HostDown {severity="critical", instance="db1"} firing since 2026-11-27T21:02:11Z).
  type: list
  elements: dict
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - outside Ansible
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|((?![=~])[^"\',]*?))\s*$')
_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")

Matcher = Tuple[str, str, str]


def _split(text: str) -> List[str]:
    """Split a string of matchers on the commas outside quotes, without the braces around them."""
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    parts, current, quote = [], "", None
    for char in text:
        if quote:
            quote = None if char == quote and not current.endswith("\\") else quote
        elif char in "\"'":
            quote = char
        elif char == ",":
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_matchers(value: Any, what: str, names_allowed: bool = False) -> List[Matcher]:
    """(label, operator, value) for each matcher; a bare alert name means alertname=<it> where names are allowed."""
    if value in (None, "", [], ()):
        return []
    items = _split(value) if isinstance(value, str) else list(value)
    matchers = []
    for item in items:
        if not isinstance(item, str):
            raise AnsibleFilterError(f"rolling_block_on_alerts.{what}: {item!r} is not a matcher such as severity=critical")
        if names_allowed and _NAME.match(item.strip()):
            matchers.append(("alertname", "=", item.strip()))
            continue
        found = _MATCHER.match(item)
        if not found:
            raise AnsibleFilterError(f"rolling_block_on_alerts.{what}: {item!r} is not a matcher such as severity=critical "
                                     "(label=value, label!=value, label=~regex, label!~regex)")
        label, operator = found[1], found[2]
        # In double quotes, as in PromQL: \\ is one backslash and \" a quote.
        text = re.sub(r'\\(.)', r'\1', found[3]) if found[3] is not None else (
            found[4] if found[4] is not None else found[5])
        if operator in ("=~", "!~"):
            try:
                re.compile(text)
            except re.error as exc:
                raise AnsibleFilterError(f"rolling_block_on_alerts.{what}: {item!r}: bad regular expression ({exc})") from exc
        matchers.append((label, operator, text))
    return matchers


def _matches(labels: Mapping[str, Any], matcher: Matcher) -> bool:
    label, operator, value = matcher
    actual = str(labels.get(label, ""))
    if operator == "=":
        return actual == value
    if operator == "!=":
        return actual != value
    found = re.fullmatch(value, actual) is not None
    return found if operator == "=~" else not found


def _alerts(answer: Any) -> Sequence[Mapping[str, Any]]:
    if isinstance(answer, Mapping):
        if answer.get("status") not in (None, "success"):
            raise AnsibleFilterError(f"the alerts API answered {answer.get('status')!r}: "
                                     f"{answer.get('error') or answer.get('errorType') or 'no reason given'}")
        answer = (answer.get("data") or {}).get("alerts") if isinstance(answer.get("data"), Mapping) else answer.get("data")
    if not isinstance(answer, list) or not all(isinstance(alert, Mapping) for alert in answer):
        raise AnsibleFilterError("the answer is not a list of alerts (expected the JSON of GET /api/v1/alerts: "
                                 '{"status": "success", "data": {"alerts": [...]}})')
    return answer


def describe(name: str, labels: Mapping[str, Any], state: str, active_at: Optional[str]) -> str:
    shown = ", ".join(f'{key}="{value}"' for key, value in labels.items() if key != "alertname")
    return f"{name} {{{shown}}} {state}" + (f" since {active_at}" if active_at else "")


def blocking_alerts(answer: Any, match: Any = (), ignore: Any = (), include_pending: bool = False) -> List[Dict[str, Any]]:
    matchers = parse_matchers(match, "match")
    ignored = parse_matchers(ignore, "ignore", names_allowed=True)
    states = ("firing", "pending") if include_pending else ("firing",)
    blocking = []
    for alert in _alerts(answer):
        labels = dict(alert.get("labels") or {})
        state = str(alert.get("state", "firing")).lower()
        if state not in states or not all(_matches(labels, m) for m in matchers):
            continue
        if any(_matches(labels, m) for m in ignored):
            continue
        annotations = alert.get("annotations") or {}
        name = str(labels.get("alertname", "(no alertname)"))
        active_at = alert.get("activeAt")
        blocking.append({
            "name": name,
            "state": state,
            "labels": labels,
            "active_at": active_at,
            "summary": annotations.get("summary") or annotations.get("description"),
            "text": describe(name, labels, state, active_at),
        })
    return blocking


class FilterModule:
    """The rolling playbook's alert gate."""

    def filters(self) -> Dict[str, Any]:
        return {"blocking_alerts": blocking_alerts}
