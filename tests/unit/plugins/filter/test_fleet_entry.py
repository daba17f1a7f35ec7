"""hypervisor.cpr.fleet_entry: one host's entry in the rolling playbook's fleet summary."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.filter.fleet_entry import FilterModule, fleet_entry

PLAN = {"host": "hv1", "needed": True, "reboot_method": "kexec", "reboot": True, "kernel_running": "6.1.0-27-amd64",
        "kernel_target": "6.1.0-28-amd64", "vms": ["web1", "web2"], "pending_vms": [], "unsupported_vms": [],
        "why": ["runs kernel 6.1.0-27-amd64, the target is 6.1.0-28-amd64"]}
WHY = {"needed": True, "why": ["runs kernel 6.1.0-27-amd64, the target is 6.1.0-28-amd64"]}
UNPLANNED = {"needed": None, "why": []}
REPORT = {"host": "hv1", "status": "updated", "reboot_method": "kexec", "kernel_before": "6.1.0-27-amd64",
          "kernel_after": "6.1.0-28-amd64", "kernel_target": "6.1.0-28-amd64", "blackout_seconds": 19.8,
          "host_blackout": {"from": "reboot command", "seconds": 9.1, "to_userspace_seconds": 7.9},
          "boot_restore": {"vms": [{"name": "web1"}], "failed": []},
          "vms": [{"name": "web1"}], "left_out": [], "shut_down": [], "started": [], "still_saved": [],
          "still_stopped": [], "phase": None, "error": None}
EMPTY = {"blackout_seconds": None, "host_blackout": None, "boot_restore": None, "kernel_after": None, "vms": [],
         "left_out": [], "shut_down": [], "started": [], "still_saved": [], "still_stopped": [], "batch": None,
         "phases": []}


def host(**variables):
    return {"inventory_hostname": "hv1", "ansible_facts": {"kernel": "6.1.0-27-amd64"}, **variables}


@pytest.mark.parametrize("variables, expected", [
    # The role reported: its report, with the planned VMs from the preflight.
    ({"kernel_update_preflight": PLAN, "kernel_update_report": REPORT},
     {**REPORT, **WHY, "planned_vms": ["web1", "web2"], "batch": None, "phases": []}),
    # The role reported success, then the playbook failed the host: failed, with the playbook's error.
    ({"kernel_update_preflight": PLAN, "kernel_update_report": REPORT, "rolling_error": "Fail the host: boom"},
     {**REPORT, **WHY, "planned_vms": ["web1", "web2"], "status": "failed", "error": "Fail the host: boom", "batch": None,
      "phases": []}),
    # The role reported its own failure: its error stays.
    ({"kernel_update_report": {**REPORT, "status": "failed", "error": "save: no space"}, "rolling_error": "other"},
     {**REPORT, **UNPLANNED, "planned_vms": [], "status": "failed", "error": "save: no space", "batch": None, "phases": []}),
    # Failed before the role could report: the plan's facts and the playbook's error.
    ({"kernel_update_preflight": PLAN, "rolling_error": "Update the hypervisor: unreachable"},
     {**EMPTY, **WHY, "host": "hv1", "status": "failed", "error": "Update the hypervisor: unreachable", "reboot_method": "kexec",
      "kernel_before": "6.1.0-27-amd64", "kernel_target": "6.1.0-28-amd64", "planned_vms": ["web1", "web2"]}),
    # The preflight failed: no plan; the kernel from the facts the role gathered.
    ({"rolling_preflight_error": "Fail when another run holds the host: locked by run 7"},
     {**EMPTY, **UNPLANNED, "host": "hv1", "status": "preflight_failed", "error": "Fail when another run holds the host: locked by run 7",
      "reboot_method": None, "kernel_before": "6.1.0-27-amd64", "kernel_target": None, "planned_vms": []}),
    # Checked, then the rollout stopped before its batch.
    ({"kernel_update_preflight": PLAN},
     {**EMPTY, **WHY, "host": "hv1", "status": "not_started", "error": None, "reboot_method": "kexec",
      "kernel_before": "6.1.0-27-amd64", "kernel_target": "6.1.0-28-amd64", "planned_vms": ["web1", "web2"]}),
    # Never checked (the preflight stopped before it), no facts either.
    ({"ansible_facts": {}},
     {**EMPTY, **UNPLANNED, "host": "hv1", "status": "not_checked", "error": None, "reboot_method": None, "kernel_before": None,
      "kernel_target": None, "planned_vms": []}),
    # An empty plan is no plan.
    ({"kernel_update_preflight": {}},
     {**EMPTY, **UNPLANNED, "host": "hv1", "status": "not_checked", "error": None, "reboot_method": None,
      "kernel_before": "6.1.0-27-amd64", "kernel_target": None, "planned_vms": []}),
])
def test_fleet_entry(variables, expected):
    assert fleet_entry(host(**variables)) == expected


PHASES = [{"name": "prepare", "started_at": 1010.0, "finished_at": 1012.5, "seconds": 2.5},
          {"name": "save", "started_at": 1012.5, "finished_at": 1013.0, "seconds": 0.5}]


@pytest.mark.parametrize("variables, batch, phases", [
    # The preflight first, then the role's phases; the batch the playbook noted.
    ({"rolling_preflight_times": {"started_at": 1000.0, "finished_at": 1004.25}, "rolling_batch_number": 2,
      "kernel_update_report": {**REPORT, "phases": PHASES}}, 2,
     [{"name": "preflight", "started_at": 1000.0, "finished_at": 1004.25, "seconds": 4.25}] + PHASES),
    # Preflight times that are not numbers (never noted) are left out; never a negative span.
    ({"rolling_preflight_times": {"started_at": 1000.0}, "kernel_update_report": {**REPORT, "phases": PHASES}}, None, PHASES),
    ({"rolling_preflight_times": {"started_at": 1000.0, "finished_at": 999}}, None,
     [{"name": "preflight", "started_at": 1000.0, "finished_at": 1000.0, "seconds": 0.0}]),
])
def test_phases_and_batch(variables, batch, phases):
    entry = fleet_entry(host(**variables))
    assert entry["batch"] == batch and entry["phases"] == phases


def test_the_report_is_not_changed():
    report = dict(REPORT)
    fleet_entry(host(kernel_update_report=report, rolling_error="boom"))
    assert report == REPORT


def test_registered_as_fleet_entry():
    assert FilterModule().filters() == {"fleet_entry": fleet_entry}
