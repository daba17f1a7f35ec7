"""hypervisor.cpr.blocking_alerts: which alerts of a Prometheus-compatible alerts API hold the rollout."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hypervisor.cpr.plugins.filter.blocking_alerts import FilterModule, blocking_alerts, parse_matchers


def alert(name, state="firing", **labels):
    """One alert as Prometheus's GET /api/v1/alerts lists it."""
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": f"{name} is bad"}, "state": state,
            "activeAt": "2026-11-27T21:02:11.5Z", "value": "1e+00"}


ALERTS = [
    alert("HostDown", severity="critical", instance="db1"),
    alert("DiskFilling", severity="warning", instance="db1"),
    alert("Watchdog", severity="none"),
    alert("CephDegraded", state="pending", severity="critical"),
    alert("NoSeverity"),
]
ANSWER = {"status": "success", "data": {"alerts": ALERTS}}


@pytest.mark.parametrize("match, ignore, pending, names", [
    # Every firing alert blocks by default; pending ones do not.
    ([], [], False, ["HostDown", "DiskFilling", "Watchdog", "NoSeverity"]),
    ([], [], True, ["HostDown", "DiskFilling", "Watchdog", "CephDegraded", "NoSeverity"]),
    # One matcher, with or without quotes, as a list or a string.
    (["severity=critical"], [], False, ["HostDown"]),
    ('severity="critical"', [], True, ["HostDown", "CephDegraded"]),
    ("{severity='critical'}", [], False, ["HostDown"]),
    # Regular expressions match the whole value; a missing label is empty.
    (['severity=~"critical|warning"'], [], False, ["HostDown", "DiskFilling"]),
    (["severity=~crit"], [], False, []),
    (["severity!~.+"], [], False, ["NoSeverity"]),
    (["severity!=none", "instance=db1"], [], False, ["HostDown", "DiskFilling"]),
    ('{severity=~"critical|warning", instance!="db2"}', [], False, ["HostDown", "DiskFilling"]),
    # Ignored: by alert name, by matcher, or a string of both.
    ([], ["Watchdog", "NoSeverity"], False, ["HostDown", "DiskFilling"]),
    ([], ['alertname=~"Disk.*"'], False, ["HostDown", "Watchdog", "NoSeverity"]),
    ([], "Watchdog, severity=warning", False, ["HostDown", "NoSeverity"]),
    (["severity=critical"], ["HostDown"], True, ["CephDegraded"]),
])
def test_blocking_alerts(match, ignore, pending, names):
    assert [a["name"] for a in blocking_alerts(ANSWER, match, ignore, pending)] == names


def test_what_it_says_about_an_alert():
    [blocking] = blocking_alerts(ANSWER, ["alertname=HostDown"])
    assert blocking == {
        "name": "HostDown", "state": "firing", "labels": {"alertname": "HostDown", "severity": "critical", "instance": "db1"},
        "active_at": "2026-11-27T21:02:11.5Z", "summary": "HostDown is bad",
        "text": 'HostDown {severity="critical", instance="db1"} firing since 2026-11-27T21:02:11.5Z'}


@pytest.mark.parametrize("answer, names", [
    # The list of alerts alone, and an answer without alerts.
    (ALERTS[:1], ["HostDown"]),
    ({"status": "success", "data": {"alerts": []}}, []),
    # VictoriaMetrics and some rulers answer without the state of inactive alerts: firing is assumed.
    ([{"labels": {"alertname": "X"}}], ["X"]),
    # An alert without a name, with a description instead of a summary.
    ([{"labels": {"severity": "critical"}, "annotations": {"description": "d"}, "state": "firing"}], ["(no alertname)"]),
])
def test_answers(answer, names):
    assert [a["name"] for a in blocking_alerts(answer)] == names


@pytest.mark.parametrize("answer, match, ignore, message", [
    ({"status": "error", "errorType": "bad_data", "error": "boom"}, [], [], "the alerts API answered 'error': boom"),
    ({"status": "success", "data": {"result": []}}, [], [], "not a list of alerts"),
    ("<html>", [], [], "not a list of alerts"),
    (ANSWER, ["severity"], [], "match: 'severity' is not a matcher"),
    (ANSWER, ["severity==critical"], [], "match: 'severity==critical' is not a matcher"),
    (ANSWER, [{"severity": "critical"}], [], "is not a matcher"),
    (ANSWER, ["severity=~(crit"], [], "bad regular expression"),
    (ANSWER, [], ["not an alert name!"], "ignore: 'not an alert name!' is not a matcher"),
])
def test_bad_input_is_named(answer, match, ignore, message):
    with pytest.raises(AnsibleFilterError) as error:
        blocking_alerts(answer, match, ignore)
    assert message in str(error.value)


@pytest.mark.parametrize("text, expected", [
    ('a="x,y", b!~"c\\\\.d"', [("a", "=", "x,y"), ("b", "!~", "c\\.d")]),
    ("{a = 'q'}", [("a", "=", "q")]),
    ('a="say \\"hi\\""', [("a", "=", 'say "hi"')]),
    ("", []),
])
def test_parse_matchers(text, expected):
    assert parse_matchers(text, "match") == expected


def test_registered_as_blocking_alerts():
    assert FilterModule().filters() == {"blocking_alerts": blocking_alerts}
