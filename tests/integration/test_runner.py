"""The rolling playbook run the way AWX runs a job: through ansible-runner.

AWX (and Ansible Automation Platform, and ansible-navigator) do not call
ansible-playbook themselves: they write a private data directory and run it
with ansible-runner, then read what the job did from ansible-runner's
artifacts, not from its text output. This test does the same with a job
template's worth of input:

- ``project/``: the project checkout (here: this collection's ``playbooks/``);
- ``inventory/hosts``: an executable inventory script printing JSON, as AWX
  writes it, with one hypervisor, this machine over the local connection;
- ``env/extravars``: JSON with the variables AWX adds to every job
  (``awx_job_id``, ``awx_user_name``, ``tower_job_id``...), the template's extra
  variables and survey answers, typed as a survey types them (text answers
  are strings, integer answers numbers, multiple-select answers lists);
- ``env/envvars``: the collections path of the execution environment.

It then checks the artifacts AWX reads: ``rc`` and ``status``, the job events
(``runner_on_ok`` of the cpr_save and cpr_restore tasks, no failure,
``playbook_on_stats`` with its counts), the set_stats data AWX shows as the
job's artifacts and hands to the next node of a workflow
(``playbook_on_stats`` -> ``artifact_data``), and the fact cache. And, as
every test of this suite, that the two real test-bed VMs came back with their
RAM intact.

The reboot method is ``none`` with ``kernel_update_force`` (every VM is saved,
its QEMU restarted and the VM restored; the host is not rebooted), since CI
cannot reboot the machine it runs on.
"""

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
import testbed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
ANSIBLE_RUNNER = os.path.join(BIN, "ansible-runner")
PLAYBOOK = os.path.join("playbooks", "rolling_kernel_update.yml")
HOST = "hv-awx"
# The role finds VMs by name among every QEMU of the machine: the pid keeps runs of other checkouts apart.
VMS = [f"awx-a-{os.getpid()}", f"awx-b-{os.getpid()}"]
JOB_ID = 4242

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(not os.path.exists(ANSIBLE_RUNNER), reason="ansible-runner is not installed in the venv"),
    pytest.mark.skipif(not os.path.exists(os.path.join(REPO_ROOT, PLAYBOOK)), reason="no rolling playbook yet"),
]

# What AWX puts into env/extravars for every job (awx/main/models/jobs.py, awx_meta_vars), with the
# legacy tower_* names it still sets.
AWX_META_VARS = {
    "awx_job_id": JOB_ID,
    "awx_job_launch_type": "manual",
    "awx_job_template_id": 7,
    "awx_job_template_name": "Rolling kernel update",
    "awx_user_id": 1,
    "awx_user_name": "admin",
    "awx_user_email": "admin@example.com",
    "awx_inventory_id": 3,
    "awx_inventory_name": "Hypervisors",
    "awx_project_revision": "0123456789abcdef0123456789abcdef01234567",
    "awx_execution_node": "localhost",
}
AWX_META_VARS.update({"tower_" + key[len("awx_"):]: value for key, value in AWX_META_VARS.items()})


def write_private_data_dir(pdd, workdir, extravars):
    """The private data directory of one job, as AWX lays it out."""
    shutil.copytree(os.path.join(REPO_ROOT, "playbooks"), os.path.join(pdd, "project", "playbooks"))

    inventory = {
        "all": {"children": ["hypervisors", "ungrouped"]},
        "hypervisors": {"hosts": [HOST], "vars": {}},
        "_meta": {"hostvars": {HOST: {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            # This machine runs other VMs too: name this host's own.
            "kernel_update_vms": VMS,
            "kernel_update_state_dir": os.path.join(workdir, "state"),
        }}},
    }
    script = os.path.join(pdd, "inventory", "hosts")
    os.makedirs(os.path.dirname(script))
    with open(script, "w", encoding="utf-8") as handle:
        # AWX writes the inventory as a script that prints it as JSON.
        handle.write(f"#!{sys.executable}\nprint({json.dumps(json.dumps(inventory))})\n")
    os.chmod(script, stat.S_IRWXU)

    os.makedirs(os.path.join(pdd, "env"))
    envvars = {
        # The execution environment's collections path, where hypervisor.cpr is installed.
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO_ROOT, ".cache", "collections"),
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(workdir, "ansible-remote"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "True",
        "JOB_ID": str(JOB_ID),
        "AWX_HOST": "https://awx.example.com",
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
    }
    for name, data in (("extravars", extravars), ("envvars", envvars), ("settings", {"suppress_ansible_output": True})):
        with open(os.path.join(pdd, "env", name), "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)


def run_job(pdd, ident, *cmdline):
    """ansible-runner run, the way AWX's receptor worker starts it; returns its exit code."""
    # env/cmdline holds the job template's options (job type check: --check); it is read by every run.
    path = os.path.join(pdd, "env", "cmdline")
    if cmdline:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(" ".join(cmdline))
    elif os.path.exists(path):
        os.unlink(path)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([ANSIBLE_RUNNER, "run", pdd, "--playbook", PLAYBOOK, "--ident", str(ident)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    return done.returncode, done.stdout + done.stderr


class Job:
    """What AWX reads of a finished job: artifacts/<ident>/."""

    def __init__(self, pdd, ident):
        self.dir = os.path.join(pdd, "artifacts", str(ident))
        with open(os.path.join(self.dir, "rc"), encoding="utf-8") as handle:
            self.rc = int(handle.read())
        with open(os.path.join(self.dir, "status"), encoding="utf-8") as handle:
            self.status = handle.read().strip()
        self.events = []
        for path in glob.glob(os.path.join(self.dir, "job_events", "*.json")):
            with open(path, encoding="utf-8") as handle:
                self.events.append(json.load(handle))
        self.events.sort(key=lambda e: e["counter"])

    def stdout(self):
        with open(os.path.join(self.dir, "stdout"), encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def of(self, *kinds):
        return [e for e in self.events if e["event"] in kinds]

    def stats(self):
        found = self.of("playbook_on_stats")
        assert len(found) == 1, [e["event"] for e in self.events]
        return found[0]["event_data"]

    def results_of(self, action, host=HOST):
        """The module results of the runner_on_ok events of tasks running this action."""
        return [e["event_data"]["res"] for e in self.of("runner_on_ok")
                if e["event_data"].get("resolved_action", e["event_data"].get("task_action")) == action
                and e["event_data"].get("host") == host]

    def cached_facts(self, host):
        directory = os.path.join(self.dir, "fact_cache")
        names = [n for n in os.listdir(directory) if n == host or re.fullmatch(r"s\d+_" + re.escape(host), n)]
        assert len(names) == 1, os.listdir(directory)
        with open(os.path.join(directory, names[0]), encoding="utf-8") as handle:
            data = json.load(handle)
        return json.loads(data["__payload__"]) if "__payload__" in data else data

    def explain(self):
        return self.stdout()[-6000:]


@pytest.fixture(scope="module")
def awx_job_dirs():
    # Short: unix socket paths are limited to 108 bytes.
    workdir = tempfile.mkdtemp(prefix="hcpr-awx-", dir=tempfile.gettempdir())
    os.chmod(workdir, 0o700)
    try:
        vms = testbed.boot_vms(workdir, names=VMS, timeout=240)
        yield workdir, {vm.name: vm for vm in vms}
    finally:
        testbed.kill_all(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_job_template_runs_the_rolling_update_through_ansible_runner(awx_job_dirs):
    workdir, vms = awx_job_dirs
    before = {name: (vm.marker(), vm.counter(), vm.refresh_pid()) for name, vm in vms.items()}
    pdd = os.path.join(workdir, "job")
    survey = {
        "rolling_hosts": "hypervisors",          # text
        "rolling_serial": "1",                   # text: a number, a percentage or a list
        "rolling_max_fail_percentage": 0,        # integer
        "kernel_update_reboot_method": "none",   # multiple choice
        "kernel_update_timeout": 60,             # integer
    }
    # The save and the restore as tasks of their own, whose events this test reads (method none would otherwise
    # give each VM its new QEMU in one qemu_update call).
    template_extra_vars = {"kernel_update_force": True, "kernel_update_qemu_update": "separate"}
    write_private_data_dir(pdd, workdir, {**AWX_META_VARS, **template_extra_vars, **survey})

    # A job template of job type "check" first: AWX adds --check. Nothing may change.
    code, output = run_job(pdd, f"{JOB_ID}-check", "--check")
    check = Job(pdd, f"{JOB_ID}-check")
    assert (code, check.rc, check.status) == (0, 0, "successful"), output[-3000:] + check.explain()
    assert not check.of("runner_on_failed", "runner_on_unreachable"), check.explain()
    assert not check.stats()["failures"], check.stats()
    check_saves = check.results_of("hypervisor.cpr.cpr_save")
    assert check_saves and all(sorted(r["would_save"]) == VMS and not r["vms"] for r in check_saves), check_saves
    for name, vm in vms.items():
        assert vm.refresh_pid() == before[name][2], f"{name}: the check job restarted it"
        assert vm.runstate() == "running"

    # The job itself.
    code, output = run_job(pdd, JOB_ID)
    job = Job(pdd, JOB_ID)
    assert (code, job.rc, job.status) == (0, 0, "successful"), output[-3000:] + job.explain()

    # The events AWX shows and counts.
    assert job.of("playbook_on_start") and job.of("playbook_on_play_start")
    assert not job.of("runner_on_failed", "runner_on_unreachable"), job.explain()
    # The role also runs cpr_save and cpr_restore in check mode, to plan: the changed result is the real one.
    saves = [r for r in job.results_of("hypervisor.cpr.cpr_save") if r["changed"]]
    restores = [r for r in job.results_of("hypervisor.cpr.cpr_restore") if r["changed"]]
    assert len(saves) == 1, job.explain()
    assert sorted(vm["name"] for vm in saves[0]["vms"]) == VMS
    assert len(restores) == 1, job.explain()
    assert sorted(vm["name"] for vm in restores[0]["vms"]) == VMS
    assert all(vm["runstate"] == "running" for vm in restores[0]["vms"])
    stats = job.stats()
    assert stats["changed"].get(HOST, 0) > 0 and stats["ok"].get(HOST, 0) > 0, stats
    assert not stats["failures"] and not stats["dark"], stats

    # The set_stats data: AWX's job artifacts, handed on to the next workflow node.
    summary = stats["artifact_data"]["rolling_kernel_update"]
    assert summary["run_id"] == str(JOB_ID), "the run is named after the AWX job"
    assert summary["complete"] and summary["stopped"] is None
    assert summary["counts"] == {"updated": 1} and summary["vms"] == len(VMS)
    (entry,) = summary["hosts"]
    assert entry["host"] == HOST and entry["status"] == "updated" and entry["reboot_method"] == "none"
    assert sorted(vm["name"] for vm in entry["vms"]) == VMS
    assert all(vm["downtime_seconds"] > 0 for vm in entry["vms"])
    # The same summary was written on the controller, beside the project's playbooks.
    with open(os.path.join(pdd, "project", "reports", f"rolling-kernel-update-{JOB_ID}.json"), encoding="utf-8") as handle:
        assert json.load(handle)["hosts"] == summary["hosts"]

    # The fact cache AWX keeps per host (ansible-runner's jsonfile cache in the artifacts) has the facts the
    # role gathered. ansible-core 2.19 names the file s<schema>_<host> and wraps the facts in __payload__;
    # older versions name it <host>.
    facts = job.cached_facts(HOST)
    assert facts.get("ansible_kernel") == os.uname().release, sorted(facts)[:20]

    # And the VMs: restarted, with the RAM they had.
    for name, vm in vms.items():
        marker, counter, pid = before[name]
        assert vm.refresh_pid() not in (None, pid), f"{name} was not restarted"
        assert vm.runstate() == "running"
        assert vm.marker() == marker, f"{name}: guest RAM changed"
        assert vm.counter() >= counter
    assert not [f for f in os.listdir(os.path.join(workdir, "state")) if f.endswith((".json", ".state"))]
