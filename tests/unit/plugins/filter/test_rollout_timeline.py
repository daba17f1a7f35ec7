"""The rolling playbook's timeline (hypervisor.cpr.rollout_timeline): rows, bars, failures, and the collapse per batch."""

import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.hypervisor.cpr.plugins.filter.rollout_timeline import BLACKOUT, COLORS, FAILED, rollout_timeline

SVG = "{http://www.w3.org/2000/svg}"


def _host(name, start, batch=1, status="updated", vms=1):
    phases = [{"name": phase, "started_at": start + i, "finished_at": start + i + 1}
              for i, phase in enumerate(("preflight", "prepare", "save", "reboot", "restore", "verify"))]
    return {"host": name, "status": status, "batch": batch, "phases": phases,
            "vms": [{"name": f"{name}-vm{i}", "paused_at": start + 2.5, "downtime_seconds": 2.0} for i in range(vms)]}


def _fills(svg):
    root = ET.fromstring(svg)
    return [rect.get("fill") for rect in root.iter(f"{SVG}rect")]


@pytest.mark.parametrize("hosts, rows, labels", [
    # Three hosts: a row each, a blackout bar per VM, the failed one named.
    ([_host("hv1", 1000, vms=2), _host("hv2", 1000), _host("hv3", 1010, batch=2, status="failed")], 3,
     ["hv1", "hv2", "hv3 (failed)"]),
    # A host without phases (not started) is not drawn.
    ([_host("hv1", 1000), {"host": "hv2", "status": "not_started", "batch": None, "phases": [], "vms": []}], 1, ["hv1"]),
    # 300 hosts in batches of 100: a row per batch, its hosts and failures counted.
    ([_host(f"hv{i}", 1000 + 60 * (i // 100), batch=i // 100 + 1, status="failed" if i == 150 else "updated")
      for i in range(300)], 3, ["batch 1: 100 hosts", "batch 2: 100 hosts, 1 failed", "batch 3: 100 hosts"]),
])
def test_rows(hosts, rows, labels):
    svg = rollout_timeline({"run_id": "4711", "hosts": hosts})
    root = ET.fromstring(svg)
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "row"]
    assert len(groups) == rows
    assert [g.find(f"{SVG}text").text for g in groups] == labels
    assert all(float(r.get("width")) > 0 for r in root.iter(f"{SVG}rect"))
    # Every VM bar (each VM, or one per batch) is drawn, failures get a cross.
    bars = _fills(svg).count(BLACKOUT) - 1  # the legend's
    assert bars == (sum(len(h["vms"]) for h in hosts) if rows == len([h for h in hosts if h["phases"]]) else rows)
    assert len([p for p in root.iter(f"{SVG}path") if p.get("stroke") == FAILED]) == sum(1 for label in labels if "failed" in label)


def test_the_time_axis_and_escaping():
    svg = rollout_timeline({"run_id": "<b>", "hosts": [_host("hv<1>", 1796051565)]})
    assert "<b>" not in svg and "hv&lt;1&gt;" in svg
    root = ET.fromstring(svg)
    ticks = [t.text for t in root.iter(f"{SVG}text") if re.fullmatch(r"\d\d:\d\d:\d\d", t.text or "")]
    assert ticks == [f"15:12:{s}" for s in range(46, 52)]
    # The phases are left to right in time, each in its colour.
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("fill") in COLORS.values() and r.find(f"{SVG}title") is not None]
    assert [r.find(f"{SVG}title").text.split(":")[0] for r in rects] == [
        "preflight", "prepare", "save", "reboot", "restore", "verify"]
    assert [float(r.get("x")) for r in rects] == sorted(float(r.get("x")) for r in rects)


def test_an_empty_run():
    root = ET.fromstring(rollout_timeline({"hosts": []}))
    assert not [g for g in root.iter(f"{SVG}g") if g.get("class") == "row"]
