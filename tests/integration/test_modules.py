"""The modules through ansible-playbook, against real test-bed VMs."""

import json
import os
import subprocess
import sys

import testbed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(REPO_ROOT, "tests", "integration", "playbooks")


def ansible_playbook(playbook, *extra_vars, check=True):
    """Run a playbook on localhost with this checkout as hypervisor.cpr."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO_ROOT, ".cache", "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), os.path.join(PLAYBOOKS, playbook),
            "-e", f"ansible_python_interpreter={sys.executable}"]
    for value in extra_vars:
        argv += ["-e", value]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result


def test_every_module_against_real_vms(vm_dir):
    # The modules find VMs by name among every QEMU of the machine: the pid keeps other test runs apart.
    names = [f"mod-a-{os.getpid()}", f"mod-b-{os.getpid()}"]
    vms = testbed.boot_vms(vm_dir, names=names)
    before = {vm.name: (vm.marker(), vm.counter()) for vm in vms}
    ansible_playbook("modules.yml", json.dumps({"vm_names": names}), f"state_dir={vm_dir}/state")
    for vm in vms:
        vm.refresh_pid()
        assert vm.runstate() == "running"
        assert vm.marker() == before[vm.name][0]
        assert vm.counter() >= before[vm.name][1]
