"""_rollout_notify: the rolling playbook's notifications, what they say and how they are sent.

send() posts to a real HTTP server on localhost, started here, with Ansible's own open_url: a receiver that
answers, one that answers 500, one that never answers in time, and a port nobody listens on.
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible.module_utils.urls import open_url

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import OptionError
from ansible_collections.hypervisor.cpr.plugins.module_utils._rollout_notify import (
    message, payload, redact, send, targets)


@pytest.mark.parametrize("value, expected", [
    (None, []),
    ("", []),
    # A survey's string: commas or spaces; a format prefix.
    ("https://a.example.com/x, slack:https://hooks.example.com/T0/B0/secret  http://b:8080",
     [("https://a.example.com/x", "json"), ("https://hooks.example.com/T0/B0/secret", "slack"), ("http://b:8080", "json")]),
    # Dictionaries, with their own settings.
    ([{"url": "https://a.example.com/x", "format": "slack", "timeout": 2, "headers": {"Authorization": "Bearer t"}}],
     [("https://a.example.com/x", "slack")]),
    (["json:http://127.0.0.1:9/hook"], [("http://127.0.0.1:9/hook", "json")]),
])
def test_targets(value, expected):
    found = targets(value, timeout=5)
    assert [(t["url"], t["format"]) for t in found] == expected
    assert all(set(t) == {"url", "format", "headers", "timeout", "validate_certs"} for t in found)


def test_target_settings():
    [target] = targets([{"url": "https://a.example.com/x", "timeout": 2, "headers": {"X": "1"}, "validate_certs": False}])
    assert target == {"url": "https://a.example.com/x", "format": "json", "headers": {"X": "1"}, "timeout": 2.0,
                      "validate_certs": False}
    assert targets("https://a.example.com/x", timeout=7)[0]["timeout"] == 7.0


@pytest.mark.parametrize("value, error", [
    ([{"format": "slack"}], "has no URL"),
    (["ftp://files.example.com/x"], "ftp://files.example.com/... is not an http or https URL"),
    (["hooks.example.com/T0/B0/secret"], "?/... is not an http or https URL"),
    ([{"url": "https://a.example.com/x", "format": "teams"}], "format 'teams' of https://a.example.com/... is not one of"),
    ([{"url": "https://a.example.com/x", "method": "PUT"}], "unknown keys ['method']"),
])
def test_bad_targets_are_named_without_their_secret(value, error):
    with pytest.raises(OptionError) as raised:
        targets(value)
    assert error in str(raised.value) and "secret" not in str(raised.value)


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/..."),
    ("http://user:pw@127.0.0.1:8080/hook?token=1", "http://127.0.0.1:8080/..."),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://[::1]:9/", "http://::1:9"),
])
def test_redact(url, shown):
    assert redact(url) == shown


HOST = {"host": "hv1", "kernel_before": "6.1.0-27-amd64", "kernel_after": "6.1.0-28-amd64", "blackout_seconds": 19.84,
        "vms": [{"name": "web1"}, {"name": "web2"}], "batch": 2, "run_id": "4711", "phase": None, "error": None}


@pytest.mark.parametrize("event, data, text", [
    ("started", {"run_id": "4711", "hosts": 5, "needing": ["hv1", "hv2", "hv3"], "serial": "1,50%",
                 "window": "inside the window (every day 22:00-05:00 UTC) until Sat 2026-11-28 05:00 UTC"},
     "Rolling kernel update 4711 started: 3 of 5 hosts need the update (hv1, hv2, hv3), batches of 1,50%. "
     "Inside the window (every day 22:00-05:00 UTC) until Sat 2026-11-28 05:00 UTC."),
    ("started", {"run_id": "7", "hosts": 2, "needing": [], "serial": "1"},
     "Rolling kernel update 7 started: 0 of 2 hosts need the update, batches of 1."),
    ("held", {"run_id": "7", "batch": 2, "batch_hosts": ["hv2"], "blockers": ["alert HostDown firing", "hv2: backup runs"],
              "until": "2026-11-27T22:30:00Z"},
     "Rolling kernel update 7: batch 2 (hv2) is held: alert HostDown firing; hv2: backup runs. "
     "Checking again until 2026-11-27T22:30:00Z."),
    ("host_updated", HOST,
     "hv1 updated: kernel 6.1.0-27-amd64 -> 6.1.0-28-amd64, 2 VMs, blackout 19.8 s (batch 2, run 4711)."),
    ("host_updated", {**HOST, "vms": [{"name": "a"}], "blackout_seconds": None, "kernel_after": ""},
     "hv1 updated: 1 VM, blackout - (batch 2, run 4711)."),
    ("host_failed", {**HOST, "phase": "restore", "error": "cpr_restore: web2 did not come back", "still_saved": ["web2"],
                     "vms": [{"name": "web1"}]},
     "hv1 FAILED in its restore phase: cpr_restore: web2 did not come back. Still saved: web2. "
     "kernel 6.1.0-27-amd64 -> 6.1.0-28-amd64, 1 VM, blackout 19.8 s (batch 2, run 4711)."),
    ("host_failed", {"host": "hv9", "error": "x" * 400},
     "hv9 FAILED: " + "x" * 300 + ". 0 VMs, blackout - (batch ?, run ?)."),
    ("stopped", {"run_id": "7", "reason": "window closed", "hosts_left": [f"hv{i}" for i in range(12)],
                 "report": "/r/x.html"},
     "Rolling kernel update 7 stopped: window closed. Hosts left: hv0, hv1, hv2, hv3, hv4, hv5, hv6, hv7, hv8, hv9 "
     "and 2 more. Report: /r/x.html"),
    ("stopped", {"run_id": "7", "reason": "1 of 1 hosts of a batch failed (hv1)"},
     "Rolling kernel update 7 stopped: 1 of 1 hosts of a batch failed (hv1). No host is left."),
    ("finished", {"run_id": "7", "counts": {"updated": 2, "unchanged": 1}, "vms": 4, "max_blackout_seconds": 1.234,
                  "report": "/r/x.html"},
     "Rolling kernel update 7 finished: 1 unchanged, 2 updated; 4 VMs, longest blackout 1.2 s. Report: /r/x.html"),
])
def test_message(event, data, text):
    assert message(event, data) == text


def test_payloads():
    assert payload("slack", "host_updated", HOST, 0) == {"text": message("host_updated", HOST)}
    assert payload("json", "host_updated", HOST, 1796051565.9) == {
        "event": "host_updated", "run_id": "4711", "text": message("host_updated", HOST),
        "sent_at": "2026-11-30T15:12:45Z", "data": HOST}


class Receiver(BaseHTTPRequestHandler):
    """Records every POST; /fail answers 500, /slow answers too late."""

    def do_POST(self):  # pylint: disable=invalid-name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/slow":
            self.server.release.wait(10)
        self.server.received.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(500 if self.path == "/fail" else 200)
        self.end_headers()

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


@pytest.fixture(name="receiver")
def fixture_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received, server.release = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_send_to_real_receivers(receiver):
    base = f"http://127.0.0.1:{receiver.server_port}"
    closed = _closed_port()
    receivers = targets([f"{base}/json", f"slack:{base}/slack/T0/secret",
                         {"url": f"{base}/auth", "headers": {"Authorization": "Bearer t0ken"}},
                         f"{base}/fail", {"url": f"{base}/slow", "timeout": 0.5}, f"http://127.0.0.1:{closed}/hook"])
    sent, failures = send(receivers, "host_updated", HOST, open_url, now=0)
    assert [(s["url"], s["format"], s["status"]) for s in sent] == [
        (f"{base}/...", "json", 200), (f"{base}/...", "slack", 200), (f"{base}/...", "json", 200)]
    assert len(failures) == 3, failures
    assert failures[0] == f"notification 'host_updated' to {base}/... not sent: HTTP 500 Internal Server Error"
    assert failures[1].startswith(f"notification 'host_updated' to {base}/... not sent: ") and "timed out" in failures[1]
    assert failures[2].startswith(f"notification 'host_updated' to http://127.0.0.1:{closed}/... not sent: ")
    assert "refused" in failures[2].lower()
    assert not any("secret" in f or "t0ken" in f for f in failures)

    receiver.release.set()
    by_path = {path: (headers, body) for path, headers, body in receiver.received}
    assert by_path["/json"][1] == payload("json", "host_updated", HOST, 0)
    assert by_path["/slack/T0/secret"][1] == {"text": message("host_updated", HOST)}
    assert by_path["/auth"][0]["Authorization"] == "Bearer t0ken"
    assert all(headers["Content-Type"] == "application/json" for headers, _body in by_path.values())
