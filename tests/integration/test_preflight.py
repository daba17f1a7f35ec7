"""The role's preflight accounts for every QEMU a reboot would take down (issue 13), on this machine, for real.

A kexec is only planned here, never done: the preflight entry point changes nothing. The target kernel is a file of
the test's own (the preflight needs one to plan a kexec), and the QEMU nobody can drive has only a human monitor.
"""

import json
import os
import subprocess
import sys

import pytest
import testbed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFLIGHT = """
- name: Preflight of a kexec
  hosts: local
  gather_facts: false
  tasks:
    - name: Check the host
      ansible.builtin.include_role:
        name: hypervisor.cpr.kernel_update
        tasks_from: preflight
    - name: Tell what it would do
      ansible.builtin.copy:
        content: "{{ kernel_update_preflight | to_json }}"
        dest: "{{ report }}"
        mode: "0600"
"""


@pytest.fixture
def kexec_plan(vm_dir, tmp_path):
    """(run the preflight with these variables, the test-bed VM it selects, the QEMU it cannot drive)."""
    name = f"pre{os.getpid()}"
    [vm] = testbed.boot_vms(vm_dir, names=[name])
    hmp = os.path.join(vm_dir, "hmp.sock")
    # A QEMU with a human monitor only: hypervisor.cpr cannot drive it, a kexec would take it down.
    undrivable = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", "-name", f"{name}hmp",
         "-monitor", f"unix:{hmp},server=on,wait=off"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    boot = tmp_path / "boot"
    boot.mkdir()
    for image in ("vmlinuz-99.0.0-test", "initrd.img-99.0.0-test"):
        (boot / image).write_text("not booted: the preflight only plans the kexec\n")
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PREFLIGHT, encoding="utf-8")
    report = tmp_path / "plan.json"

    def preflight(**variables):
        inventory = {"all": {"hosts": {"local": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "kernel_update_reboot_method": "kexec", "kernel_update_kernel": str(boot / "vmlinuz-99.0.0-test"),
            "kernel_update_initrd": str(boot / "initrd.img-99.0.0-test"), "kernel_update_vms": [name],
            "kernel_update_state_dir": os.path.join(vm_dir, "state"), "report": str(report), **variables}}}}
        (tmp_path / "inventory.json").write_text(json.dumps(inventory), encoding="utf-8")
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO_ROOT, ".cache", "collections"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false")
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                               str(tmp_path / "inventory.json"), str(playbook)], env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        plan = json.loads(report.read_text(encoding="utf-8")) if done.returncode == 0 else None
        return done.returncode, done.stdout + done.stderr, plan

    try:
        yield preflight, vm, undrivable
    finally:
        undrivable.kill()
        undrivable.wait()


def test_a_kexec_that_would_take_down_a_qemu_it_does_not_save_is_refused(kexec_plan):
    preflight, vm, undrivable = kexec_plan
    code, output, _plan = preflight()
    assert code != 0
    assert "would take down" in output and "that this run does not save, so nothing was touched" in output
    assert (f"VM {vm.name}hmp (pid {undrivable.pid}): its QEMU has an HMP monitor (-monitor) only, and no QMP unix "
            "socket hypervisor.cpr could reach") in " ".join(output.split())

    # shutdown covers only the VMs hypervisor.cpr can drive.
    code, output, _plan = preflight(kernel_update_unsupported_vms="shutdown")
    assert code != 0 and "kernel_update_unsupported_vms=shutdown shuts down only the VMs hypervisor.cpr can drive" in (
        " ".join(output.split()))

    # skip lets the reboot take it down, and the plan says so.
    code, output, plan = preflight(kernel_update_unsupported_vms="skip")
    assert code == 0, output[-4000:]
    assert plan["reboot"] and plan["vms"] == [vm.name] and f"{vm.name}hmp" in plan["taken_down"]
    assert undrivable.poll() is None and vm.runstate() == "running"
