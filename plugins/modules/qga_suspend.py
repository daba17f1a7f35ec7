#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qga_suspend
short_description: Suspend QEMU guests to RAM through their guest agent, or wake them
version_added: 0.1.0
description:
  - Sends C(guest-suspend-ram) to the guest agent of each selected VM and waits, on QMP, until QEMU reports the
    V(suspended) runstate. The agent never answers that command when it works, so an answer means the guest refused.
  - With O(state=awake), sends C(system_wakeup) over QMP and waits for V(running).
  - Guests already in the wanted state are left alone and reported unchanged. All guests are handled concurrently.
  - Guests with VFIO devices must be suspended before a cpr-reboot save; M(hypervisor.cpr.cpr_save) does that itself
    for them, this module is for operators who want to do it as a separate step.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.vm_selection
options:
  state:
    description:
      - V(suspended) suspends running guests to RAM; V(awake) wakes suspended guests.
    type: str
    choices: [suspended, awake]
    default: suspended
attributes:
  check_mode:
    support: full
    details: Reports which guests would change, and changes none.
  diff_mode:
    support: none
notes:
  - The guest must support suspend to RAM; QEMU must offer S3 (C(-global ICH9-LPC.disable_s3=0) on q35,
    C(-global PIIX4_PM.disable_s3=0) on pc).
  - A guest that does not reach V(suspended) within O(timeout) is left as it is, and the error says in which runstate.
    The other guests of the call are handled all the same.
"""

EXAMPLES = r"""
- name: Suspend two guests before maintenance
  hypervisor.cpr.qga_suspend:
    names: [gpu1, gpu2]
    timeout: 30

- name: Wake them again
  hypervisor.cpr.qga_suspend:
    names: [gpu1, gpu2]
    state: awake
"""

RETURN = r"""
vms:
  description:
    - One entry per selected VM.
    - When some VMs fail, the module fails and this still lists the others, in the state they reached.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    changed:
      description: Whether this VM was (or in check mode would be) changed.
      type: bool
    runstate_before:
      description: Runstate before the module ran.
      type: str
      sample: running
    runstate:
      description: Runstate afterwards.
      type: str
      sample: suspended
    seconds:
      description: Seconds it took to reach the runstate.
      type: float
errors:
  description: One entry per VM that did not reach the wanted state; each is left as it is.
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
  sample: [{"name": "gpu1", "msg": "VM gpu1: the guest did not reach the suspended runstate within 10 s ..."}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._module import SELECTION_SPEC, run, selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._suspend import STATES, set_states


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(SELECTION_SPEC, state=dict(type="str", choices=list(STATES), default="suspended")),
        supports_check_mode=True,
    )
    params = module.params

    def change() -> dict:
        vms = set_states(selection(module), params["state"], params["timeout"], module.check_mode)
        return dict(changed=any(vm["changed"] for vm in vms), vms=vms)

    run(module, change)


if __name__ == "__main__":
    main()
