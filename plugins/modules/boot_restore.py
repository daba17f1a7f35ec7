#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: boot_restore
short_description: Restore the saved VMs at the host's next boot, before Ansible is back
version_added: 0.1.0
description:
  - With O(state=present), arms a boot entry on the host, before a reboot, so that the VMs this run (O(run_id))
    saves with M(hypervisor.cpr.cpr_save) are restored as soon as the new kernel is up, without Ansible, the network
    or the controller.
  - The entry is the collection's own engine (the code M(hypervisor.cpr.cpr_restore) runs, as a zip), a launcher for
    the Python that runs this module, and a configuration, in C(<state_dir>/.boot-restore). With O(init=systemd) the
    unit C(hypervisor-cpr-boot-restore.service) runs it once the local file systems (and the state directory's)
    are mounted, before C(multi-user.target) and the services that start VMs (libvirt, Proxmox's C(pve-guests),
    Ganeti). With O(init=script) the host's own init must run C(<state_dir>/.boot-restore/run) at that point.
  - At boot the entry first disarms itself, so it runs once only; then it restores, concurrently, every VM this run
    saved on the boot before (by the run id and the boot id in each manifest), exactly as
    M(hypervisor.cpr.cpr_restore) would, and records for each the pid of the QEMU it started and when the VM was
    back. It never starts a VM afresh, and a VM of the run that runs already (something started it at boot) is left
    alone and reported. A VM it cannot restore (a damaged state file, say) stays down with its files.
  - It leaves the manifests in place (so the units M(hypervisor.cpr.cpr_save) held stay held) and the clean-up to
    M(hypervisor.cpr.cpr_restore), which finds each VM back, checks it is the QEMU the boot restore started, waits
    for its guest agent, removes its files and reports the boot restore's timings (RV(hypervisor.cpr.cpr_restore#module:boot_restore)).
    It restores itself what the boot restore did not.
  - With O(state=absent), removes the entry and the result of its last run (run it after
    M(hypervisor.cpr.cpr_restore), which reports that result). A boot restore at work is waited for.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.state_dir
options:
  state:
    description: V(present) arms the boot entry, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description:
      - The run whose saved VMs the boot restore brings back. Required with O(state=present).
      - As for the other modules, it must be the run that holds the host's run lock, if one does.
    type: str
  timeout:
    description:
      - Seconds the boot restore may take for each VM (with O(state=absent), to wait for one at work). The unit is
        stopped 60 seconds after it, so nothing else on the host waits longer.
    type: float
    default: 300.0
  launch:
    description: How the boot restore starts each new QEMU, as O(hypervisor.cpr.cpr_restore#module:launch).
    type: str
    choices: [argv, systemd]
    default: argv
  systemd_unit:
    description: The unit started with O(launch=systemd), as O(hypervisor.cpr.cpr_restore#module:systemd_unit).
    type: str
    default: qemu@{name}.service
  init:
    description:
      - What runs the entry at boot.
      - V(systemd) installs and enables a unit; V(script) leaves it to the host's init, which must run
        C(<state_dir>/.boot-restore/run) once the file systems are mounted and before anything starts VMs.
      - V(auto) is V(systemd) when systemd runs the host, else V(script) with a warning.
    type: str
    choices: [auto, systemd, script]
    default: auto
requirements:
  - qemu.qmp (Python library) on the hypervisor
  - xxhash (Python library) on the hypervisor, to verify state files saved with an XXH3-128 checksum
attributes:
  check_mode:
    description: Tells whether the entry would be armed or removed.
    support: full
  diff_mode:
    description: Has no diff to show.
    support: none
notes:
  - The Python that runs this module runs the entry at boot, as root, isolated (C(-I)). It must be owned by root in
    directories only root may change (a virtual environment's C(python) symlink is followed), and import
    C(qemu.qmp) (and C(xxhash), when the module imports it) without C(PYTHONPATH); the module fails otherwise.
  - The reboot command may touch RV(reboot_mark) right before the reboot; the host's blackout
    (RV(hypervisor.cpr.cpr_restore#module:host_blackout)) is then counted from there, else from the new kernel's start.
  - The P(hypervisor.cpr.kernel_update#role) role arms the entry before the save and removes it after the restore
    (variable C(kernel_update_boot_restore)).
seealso:
  - module: hypervisor.cpr.cpr_save
  - module: hypervisor.cpr.cpr_restore
"""

EXAMPLES = r"""
# Save, kexec, and have the VMs back the moment the new kernel is up (run_id: this run's, e.g. AWX's job id).
- name: Arm the boot restore for this run
  hypervisor.cpr.boot_restore:
    run_id: "{{ run_id }}"
  register: entry

- name: Save every VM
  hypervisor.cpr.cpr_save:
    run_id: "{{ run_id }}"

- name: Kexec into the loaded kernel, touching the mark where the host's blackout starts
  ansible.builtin.reboot:
    reboot_command: /bin/sh -c 'touch -- "$1"; exec systemctl kexec' sh {{ entry.reboot_mark | quote }}

- name: Verify and clean up what the boot restore did (and restore what it did not)
  hypervisor.cpr.cpr_restore:
    run_id: "{{ run_id }}"
  register: restored

- name: Remove the boot entry
  hypervisor.cpr.boot_restore:
    state: absent
    run_id: "{{ run_id }}"

# On a host whose init is not systemd, its boot scripts must run the entry's run script.
- name: Arm the boot restore for the host's own init
  hypervisor.cpr.boot_restore:
    run_id: "{{ run_id }}"
    init: script
"""

RETURN = r"""
state:
  description: The entry's state after the call.
  returned: always
  type: str
  sample: present
init:
  description: What runs the entry at boot (V(systemd) or V(script)).
  returned: when O(state=present)
  type: str
entry:
  description: The unit file (V(systemd)) or the script the host's init must run (V(script)).
  returned: when O(state=present)
  type: str
  sample: /etc/systemd/system/hypervisor-cpr-boot-restore.service
reboot_mark:
  description: The file the reboot command may touch right before the reboot, to start the host's blackout there.
  returned: when O(state=present)
  type: str
  sample: /var/lib/qemu-cpr/.boot-restore/reboot-started
python:
  description: The Python that runs the entry at boot.
  returned: when O(state=present)
  type: str
  sample: /usr/bin/python3
run_id:
  description: The run whose VMs the entry restores.
  returned: when O(state=present)
  type: str
removed:
  description: The files removed.
  returned: when O(state=absent)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._boot import INIT_CHOICES, BootOptions, install, remove
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import LAUNCH_MODES, Launcher
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import STATE_DIR_SPEC, run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            STATE_DIR_SPEC,
            state=dict(type="str", choices=["present", "absent"], default="present"),
            timeout=dict(type="float", default=300.0),
            launch=dict(type="str", choices=list(LAUNCH_MODES), default="argv"),
            systemd_unit=dict(type="str", default="qemu@{name}.service"),
            init=dict(type="str", choices=list(INIT_CHOICES), default="auto"),
        ),
        required_if=[("state", "present", ["run_id"])],
        supports_check_mode=True,
    )
    params = module.params
    if params["state"] == "present":
        options = BootOptions(timeout=params["timeout"], launcher=Launcher(params["launch"], params["systemd_unit"]),
                              init=params["init"])
        run(module, lambda: install(params["state_dir"], params["run_id"], options, module.check_mode))
    else:
        run(module, lambda: remove(params["state_dir"], params["run_id"], params["timeout"], module.check_mode))


if __name__ == "__main__":
    main()
