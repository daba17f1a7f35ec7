#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_power
short_description: Shut QEMU guests down cleanly and start them again with the same command line
version_added: 0.1.0
description:
  - For VMs that cpr-reboot cannot save (see M(hypervisor.cpr.vm_status)), a clean guest shutdown before the reboot
    and a fresh start after it is the next best thing. Their guests lose what was in RAM, not their disks.
  - With O(state=stopped), records in O(state_dir) how each selected VM's QEMU was started (its command line and
    working directory), then asks the guest to power off, through its guest agent (C(guest-shutdown)) when the agent
    answers, else with the ACPI power button (C(system_powerdown)), and waits until QEMU has exited.
  - While a QEMU may be exiting, nothing is sent to it (QEMU 10.0 can hang in its exit on a command that arrives
    then); the power-off is seen in QEMU's C(SHUTDOWN) event. A QEMU that stays once its guest powered off
    (C(-no-shutdown), C(-action shutdown=pause)) is then told to quit. A QEMU that still does not exit is named,
    and its VM keeps its record; O(state=started) refuses such a QEMU until it is ended.
  - With O(state=started), starts the recorded VMs again with the same command line, waits until QMP answers and,
    when the agent answered before the shutdown, until the guest agent answers, then removes the record. This
    includes VMs that M(hypervisor.cpr.cpr_save) recorded because their QEMU died during the save.
  - VMs already in the wanted state are reported unchanged, so a run interrupted anywhere is finished by running
    again. All VMs are handled concurrently.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.state_dir
  - hypervisor.cpr.vm_selection
options:
  state:
    description:
      - V(stopped) shuts the selected running VMs down; V(started) starts the recorded ones again.
      - With V(started) only O(names) selects (the VMs do not run, so there is nothing to query); without it every
        VM recorded in O(state_dir) is started.
    type: str
    choices: [stopped, started]
    default: stopped
  timeout:
    description:
      - Seconds for each guest to power off, or to start until its guest agent answers. Sockets are given at most
        10 seconds to answer.
    type: float
    default: 300.0
  wait_for_agent:
    description:
      - With O(state=started), wait until the guest agent of each VM whose agent answered before the shutdown answers
        again (the guest has booted).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Runs every check and reports which VMs would change, and changes none.
  diff_mode:
    support: none
notes:
  - Only a running guest can shut down cleanly, so a paused or suspended one is refused before any VM is touched.
  - The guest must handle the request. Linux guests need qemu-guest-agent (which runs C(shutdown -P)), or acpid or
    systemd for the power button. A guest that does not power off within O(timeout) is left running and named in
    the error.
  - A QEMU started with C(-no-shutdown) stays in the V(shutdown) runstate after the guest powered off; it is told
    to quit.
seealso:
  - module: hypervisor.cpr.vm_status
  - module: hypervisor.cpr.cpr_save
"""

EXAMPLES = r"""
- name: Shut down the VMs that cannot be saved for a kexec
  hypervisor.cpr.vm_power:
    names: "{{ status.vms | rejectattr('cpr.ready') | map(attribute='name') | list }}"
    state: stopped

- name: Start them again after the reboot
  hypervisor.cpr.vm_power:
    names: "{{ status.vms | rejectattr('cpr.ready') | map(attribute='name') | list }}"
    state: started

- name: Start every VM an interrupted run shut down
  hypervisor.cpr.vm_power:
    state: started
"""

RETURN = r"""
vms:
  description:
    - One entry per VM this call stopped or started, or found already so.
    - When some VMs fail, the module fails and this still lists the others.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    changed:
      description: Whether this call changed the VM.
      type: bool
    how:
      description:
        - How the guest went down. V(guest-shutdown) or V(system_powerdown) when it was asked to power off,
          V(qemu-died-during-save) when its QEMU died during a M(hypervisor.cpr.cpr_save).
      type: str
      sample: guest-shutdown
    seconds:
      description: Seconds until QEMU exited (V(stopped)) or until the VM answered again (V(started)).
      type: float
    pid:
      description: Process id of the started QEMU (V(started)).
      type: int
      returned: when started
would_change:
  description: Names of the VMs this call stops or starts (or in check mode would).
  returned: always
  type: list
  elements: str
errors:
  description: One entry per VM that failed, with why.
  returned: when the module fails because some VMs failed
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

from ansible_collections.hypervisor.cpr.plugins.module_utils._module import SELECTION_SPEC, STATE_DIR_SPEC, run, selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._power import STATES, start, stop


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            SELECTION_SPEC,
            **STATE_DIR_SPEC,
            state=dict(type="str", choices=list(STATES), default="stopped"),
            timeout=dict(type="float", default=300.0),
            wait_for_agent=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["state"] == "started" and (params["vms"] or params["query"]):
        module.fail_json(msg="state=started selects with names only: the VMs do not run, so vms and query do not apply")
    if params["state"] == "stopped":
        run(module, lambda: stop(selection(module), params["state_dir"], params["timeout"], module.check_mode,
                                 params["run_id"]))
    else:
        run(module, lambda: start(params["state_dir"], params["names"], params["timeout"], params["wait_for_agent"],
                                  module.check_mode, params["run_id"]))


if __name__ == "__main__":
    main()
