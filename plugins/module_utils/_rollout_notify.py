# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The rolling playbook's notifications (hypervisor.cpr.rollout_notify, an action on the controller): where they go,
what they say, and sending them. A notification that cannot be sent is returned as a failure for a warning; nothing
here raises for a receiver's sake."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import OptionError

FORMATS = ("json", "slack")
EVENTS = ("started", "held", "host_updated", "host_failed", "stopped", "finished")

ARGUMENT_SPEC: Dict[str, Any] = {
    "urls": {"type": "raw", "required": True},
    "event": {"type": "str", "required": True, "choices": list(EVENTS)},
    "data": {"type": "dict", "default": {}},
    "timeout": {"type": "float", "default": 10.0},
}


def targets(value: Any, timeout: float = 10.0) -> List[Dict[str, Any]]:
    """The receivers: a list of URLs or dictionaries, or a string of URLs separated by commas or spaces.

    A URL may start with its payload's format, slack: or json: (the default). A dictionary has url, and may have
    format, headers, timeout and validate_certs.
    """
    if value in (None, "", []):
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    found = []
    for item in items:
        entry: Dict[str, Any] = dict(item) if isinstance(item, Mapping) else {"url": item}
        url = entry.get("url")
        if not isinstance(url, str) or not url.strip():
            raise OptionError(f"rolling_notify: {item!r} has no URL")
        url = url.strip()
        fmt = entry.get("format")
        for prefix in FORMATS:
            if url.startswith(prefix + ":") and not url.startswith(prefix + "://"):
                fmt, url = fmt or prefix, url[len(prefix) + 1:]
        fmt = fmt or "json"
        if fmt not in FORMATS:
            raise OptionError(f"rolling_notify: format {fmt!r} of {redact(url)} is not one of {', '.join(FORMATS)}")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise OptionError(f"rolling_notify: {redact(url)} is not an http or https URL")
        unknown = set(entry) - {"url", "format", "headers", "timeout", "validate_certs"}
        if unknown:
            raise OptionError(f"rolling_notify: unknown keys {sorted(unknown)} for {redact(url)} "
                              "(url, format, headers, timeout, validate_certs)")
        found.append({"url": url, "format": fmt, "headers": dict(entry.get("headers") or {}),
                      "timeout": float(entry.get("timeout") or timeout),
                      "validate_certs": bool(entry.get("validate_certs", True))})
    return found


def redact(url: str) -> str:
    """scheme://host[:port]/... : a webhook's path and query are its secret (Slack's carry the token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" + ("/..." if parts.path.strip("/") or parts.query else "")


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _names(names: List[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _report(data: Mapping[str, Any]) -> str:
    return f" Report: {data['report']}" if data.get("report") else ""


def message(event: str, data: Mapping[str, Any]) -> str:
    """One or two sentences for people."""
    run = f"Rolling kernel update {data.get('run_id') or ''}".rstrip()
    if event == "started":
        needing = list(data.get("needing") or [])
        window = f" {data['window'][:1].upper()}{data['window'][1:]}." if data.get("window") else ""
        return (f"{run} started: {len(needing)} of {data.get('hosts', len(needing))} hosts need the update"
                + (f" ({_names(needing)})" if needing else "") + f", batches of {data.get('serial', '?')}.{window}")
    if event == "held":
        return (f"{run}: batch {data.get('batch', '?')} ({_names(list(data.get('batch_hosts') or []))}) is held: "
                + "; ".join(data.get("blockers") or ["a gate"]) + f". Checking again until {data.get('until', '?')}.")
    if event in ("host_updated", "host_failed"):
        vms = len(data.get("vms") or [])
        kernels = (f"kernel {data.get('kernel_before')} -> {data.get('kernel_after')}, "
                   if data.get("kernel_before") and data.get("kernel_after") else "")
        head = f"{data.get('host', '?')} updated: " if event == "host_updated" else \
            f"{data.get('host', '?')} FAILED" + (f" in its {data['phase']} phase" if data.get("phase") else "") + ": "
        error = f"{str(data.get('error') or 'no reason given')[:300]}. " if event == "host_failed" else ""
        saved = list(data.get("still_saved") or [])
        left = f"Still saved: {_names(saved)}. " if saved else ""
        return (f"{head}{error}{left}{kernels}{vms} VM{'' if vms == 1 else 's'}, blackout {_seconds(data.get('blackout_seconds'))}"
                f" (batch {data.get('batch') or '?'}, run {data.get('run_id') or '?'}).")
    if event == "stopped":
        hosts_left = list(data.get("hosts_left") or [])
        return (f"{run} stopped: {data.get('reason') or 'no reason given'}."
                + (f" Hosts left: {_names(hosts_left)}." if hosts_left else " No host is left.") + _report(data))
    counts = data.get("counts") or {}
    shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no host"
    return (f"{run} finished: {shown}; {data.get('vms', 0)} VMs, longest blackout "
            f"{_seconds(data.get('max_blackout_seconds'))}." + _report(data))


def payload(fmt: str, event: str, data: Mapping[str, Any], sent_at: float) -> Dict[str, Any]:
    """What is posted: Slack's incoming-webhook JSON (text, which Mattermost, Rocket.Chat and Teams workflows read too),
    or a generic JSON document with the event, the text and every datum."""
    text = message(event, data)
    if fmt == "slack":
        return {"text": text}
    return {"event": event, "run_id": data.get("run_id"), "text": text,
            "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sent_at)), "data": dict(data)}


Opener = Callable[..., Any]


def send(receivers: List[Dict[str, Any]], event: str, data: Mapping[str, Any], opener: Opener,
         now: Optional[float] = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Post the event to every receiver; ([{url, format, status}], [why each failed, for a warning])."""
    sent, failures = [], []
    for receiver in receivers:
        body = json.dumps(payload(receiver["format"], event, data, now if now is not None else time.time()), default=str)
        shown = redact(receiver["url"])
        try:
            answer = opener(receiver["url"], data=body.encode(), method="POST", timeout=receiver["timeout"],
                            headers={"Content-Type": "application/json", **receiver["headers"]},
                            validate_certs=receiver["validate_certs"])
            status = answer.getcode()
        except Exception as exc:  # pylint: disable=broad-except  # any failure of a receiver is a warning, never an error
            reason = getattr(exc, "reason", None) or exc
            code = getattr(exc, "code", None)
            failures.append(f"notification '{event}' to {shown} not sent: " + (f"HTTP {code} " if code else "") + f"{reason}")
            continue
        sent.append({"url": shown, "format": receiver["format"], "status": status})
    return sent, failures
