#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qemu_update
short_description: Move VMs to a new QEMU of the binary now installed, in one call, with cpr-transfer where it can
version_added: 0.3.0
description:
  - For a QEMU or library update without a reboot. Every selected VM ends up in a new QEMU process that runs the binary
    now at its old QEMU's path (C(/proc/<pid>/exe), checked as a restart checks it), with the same command line, the
    machine type pinned to the versioned type it runs, as the same user. Nothing leaves the host between the steps.
  - B(Transfer) (QEMU's C(cpr-transfer) mode), for a running VM that allows it
    (RV(hypervisor.cpr.vm_status#module:vms[].transfer)). The new QEMU is started beside the old one with two
    C(-incoming) channels, unix sockets in the VM's private
    directory C(/run/hypervisor-cpr/<name>/) (C(main) and C(cpr)); once it listens on the cpr socket, and only it does,
    the old QEMU migrates with mode C(cpr-transfer), handing guest RAM over as file descriptors; the guest pauses for
    the device state only. Once the new QEMU answers on the VM's QMP socket and runs, the old one is ended.
  - Until then the old QEMU keeps the VM; any failure ends the new process first, then resumes the old one as it was,
    and removes the channels' sockets. The old QEMU's QMP and guest agent sockets are kept under a second name
    (C(<path>.cpr-old)) during the transfer, so that where a failing new QEMU had already bound those paths, the undo
    puts the old QEMU's sockets back. The new QEMU is recorded (C(<state_dir>/<name>.transfer), pid and start time) before
    anything waits for it.
  - The old QEMU is ended with SIGKILL, not C(quit), because its exit would unlink the QMP and guest agent sockets the new
    QEMU now serves at the same paths. After a completed transfer it holds nothing the VM needs.
  - B(Relaunch). Every other selected VM (paused, suspended, RAM not shared, no C(aux-ram-share=on), QEMU before
    10.0, a blocker, an operator's systemd service) is saved with cpr-reboot as M(hypervisor.cpr.cpr_save) saves it, its
    QEMU quit, a new one started from the manifest and the state loaded as M(hypervisor.cpr.cpr_restore) does it, in
    the same call. A VM QEMU refuses to transfer once it is asked (a blocker its cpr-transfer mode shows) is relaunched
    too, with O(method=auto).
  - A VM that runs in a systemd service of the operator's is not transferred, because systemd would run that unit's
    C(ExecStop=) and C(Restart=) against the new QEMU when the old one ends. It is relaunched with its unit held,
    into the unit O(systemd_unit) with O(launch=systemd), else into a transient unit. Under systemd, a transferred
    QEMU runs in a transient unit C(hypervisor-cpr-<name>-<time>.service) (see RV(vms[].unit_after)), which
    C(systemctl status) and C(systemctl stop) manage and whose journal holds its output.
  - Everything is checked before any VM is touched; the module acts under the state directory's lock, and only for the
    run that holds the host (O(run_id)).
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.vm_selection
  - hypervisor.cpr.state_dir
options:
  method:
    description:
      - V(auto) transfers every VM that allows it and relaunches the others.
      - V(transfer) fails, touching nothing, when a selected VM cannot be transferred, naming each reason.
      - V(relaunch) relaunches every selected VM with cpr-reboot.
    type: str
    choices: [auto, transfer, relaunch]
    default: auto
  timeout:
    description:
      - Seconds for each VM's update, that is for its new QEMU to listen, for the migration, for the new QEMU to run, for a
        relaunch's save and load, and for its guest agent to answer again where it answered before.
    type: float
    default: 300.0
  suspend:
    description: Which running guests a relaunch suspends to RAM first (see M(hypervisor.cpr.cpr_save)).
    type: str
    choices: [vfio, all, none]
    default: vfio
  hold_units:
    description: Hold the systemd service of each VM relaunched while it is saved (see M(hypervisor.cpr.cpr_save)).
    type: bool
    default: true
  launch:
    description: How a relaunch starts the new QEMU (see M(hypervisor.cpr.cpr_restore)).
    type: str
    choices: [argv, systemd]
    default: argv
  systemd_unit:
    description: Unit a relaunch starts with O(launch=systemd); C({name}) is replaced by the VM's name.
    type: str
    default: qemu@{name}.service
requirements:
  - xxhash (Python library) on the hypervisor, for the fast XXH3-128 checksum of the state files of cpr-reboot
    relaunches; without it the checksum is SHA-256, about 8 times slower per core
attributes:
  check_mode:
    support: full
    details: Decides every VM's way and checks it, and reports RV(would_transfer) and RV(would_relaunch).
  diff_mode:
    support: none
notes:
  - Not idempotent by nature; select the VMs that need a restart, for example with the query
    C([?runs_replaced_code]) (the role's reboot method V(none) does).
  - A VM with a manifest in O(state_dir) (an earlier save not yet restored) is refused; run M(hypervisor.cpr.cpr_restore).
seealso:
  - module: hypervisor.cpr.vm_status
  - module: hypervisor.cpr.cpr_save
  - module: hypervisor.cpr.cpr_restore
  - name: QEMU CheckPoint and Restart (CPR)
    description: QEMU's documentation of the cpr-transfer migration mode.
    link: https://www.qemu.org/docs/master/devel/migration/CPR.html
"""

EXAMPLES = r"""
- name: Move every VM that runs replaced QEMU code to the new binary
  hypervisor.cpr.qemu_update:
    query: "[?runs_replaced_code]"
  register: updated

- name: Say which way each VM went and how long it paused
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.method }}, {{ item.qemu_version_before }} -> {{ item.qemu_version_after }},
      {{ (item.downtime_seconds * 1000) | round(1) }} ms"
  loop: "{{ updated.vms }}"
"""

RETURN = r"""
vms:
  description: One entry per VM updated; when some fail, the module fails and this lists the others.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    method:
      description: V(transfer) (cpr-transfer) or V(relaunch) (cpr-reboot save, new QEMU, load).
      type: str
      sample: transfer
    changed:
      description: Always V(true) for an entry.
      type: bool
    reason:
      description: Why a VM relaunched was not transferred; V(null) for a transfer.
      type: str
    runstate:
      description: Its runstate in the new QEMU (as it was in the old one).
      type: str
    pid_before:
      description: Process id of the old QEMU.
      type: int
    pid_after:
      description: Process id of the new QEMU.
      type: int
    qemu_version_before:
      description: Version the old QEMU reported.
      type: str
    qemu_version_after:
      description: Version the new QEMU reports.
      type: str
    binary_before:
      description: The binary the old QEMU ran (its C(/proc/<pid>/exe), replaced on disk when the package was updated).
      type: str
    binary_after:
      description: The binary the new QEMU runs.
      type: str
    unit_after:
      description: The systemd unit the new QEMU runs in, or V(null).
      type: str
    paused_at:
      description: When the guest stopped, in seconds since the epoch.
      type: float
    back_at:
      description: When it ran again in the new QEMU (in its old runstate), in seconds since the epoch.
      type: float
    downtime_seconds:
      description: RV(vms[].back_at) minus RV(vms[].paused_at); the wait for the guest agent afterwards is not in it.
      type: float
    qemu_downtime_ms:
      description: QEMU's own figure for the pause of a transfer (C(query-migrate)), V(null) for a relaunch.
      type: int
    update_seconds:
      description: Seconds this VM's update took, checks and the guest agent's answer included.
      type: float
    runstate_before:
      description: Its runstate in the old QEMU (V(running) for a transfer).
      type: str
    suspended_by_us:
      description: Whether a relaunch suspended the guest to RAM first (and woke it); V(false) for a transfer.
      type: bool
    ram_in_place:
      description:
        - Whether guest RAM stayed where it was instead of being copied; V(true) for a transfer (handed over as file
          descriptors).
      type: bool
    save_seconds:
      description: Seconds a relaunch's save took (as RV(hypervisor.cpr.cpr_save#module:vms[].save_seconds)); V(null) for a transfer.
      type: float
    restore_seconds:
      description: Seconds from a relaunch's new QEMU start to the VM back in its runstate; V(null) for a transfer.
      type: float
    state_bytes:
      description: Size of a relaunch's state file; V(null) for a transfer, which writes none.
      type: int
would_transfer:
  description: The VMs this call transfers (in check mode, would transfer).
  returned: always
  type: list
  elements: str
would_relaunch:
  description: The VMs this call relaunches (in check mode, would relaunch).
  returned: always
  type: list
  elements: str
errors:
  description: One entry per VM whose update failed, with why and what was done.
  returned: when the module fails because some VMs could not be updated
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    msg:
      description: Why, and what to do.
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SUSPEND_CHOICES
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import LAUNCH_MODES, Launcher
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import SELECTION_SPEC, STATE_DIR_SPEC, run, selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._update import METHODS, UpdateOptions, update


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            SELECTION_SPEC,
            **STATE_DIR_SPEC,
            method=dict(type="str", choices=list(METHODS), default="auto"),
            timeout=dict(type="float", default=300.0),
            suspend=dict(type="str", choices=list(SUSPEND_CHOICES), default="vfio"),
            hold_units=dict(type="bool", default=True),
            launch=dict(type="str", choices=list(LAUNCH_MODES), default="argv"),
            systemd_unit=dict(type="str", default="qemu@{name}.service"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    options = UpdateOptions(method=params["method"], timeout=params["timeout"], suspend=params["suspend"],
                            hold_units=params["hold_units"], launcher=Launcher(params["launch"], params["systemd_unit"]))
    run(module, lambda: update(selection(module), params["state_dir"], options, module.check_mode, params["run_id"]))


if __name__ == "__main__":
    main()
