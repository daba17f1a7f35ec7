#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_restore
short_description: Bring libvirt domains saved by libvirt_save back from their images, each as it was
version_added: 0.2.0
description:
  - For every record M(hypervisor.cpr.libvirt_save) left in O(state_dir) (or the O(names) given), concurrently, it
    checks that the domain's managed save image is complete and has the size and checksum its save recorded, has
    libvirt start the domain from it, checks that the domain is back in its old state (V(running) or V(paused)) and,
    where it answered before, that its guest agent answers through libvirt; then puts its autostart flag back and
    removes the record.
  - A domain is never booted cold. A missing, incomplete or changed image is refused and kept with its record, and
    the domain left shut off, since libvirt would otherwise boot it afresh or load damaged memory.
  - A domain that already runs was started by something else. When libvirt says it was restored (and its image is
    gone), it came back from its image (libvirt's autostart, an operator's C(virsh start)) and is checked and reported
    unchanged, never started a second time. Otherwise it was booted cold, its saved state is lost; the module fails
    for it and says so.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.state_dir
  - hypervisor.cpr.libvirt
options:
  names:
    description: Restore only these domains. A name with no record (restored already) is skipped.
    type: list
    elements: str
  timeout:
    description: Seconds for each domain's guest agent to answer after its restore.
    type: float
    default: 300.0
attributes:
  check_mode:
    support: full
    details: Checks every image against its record and reports which domains would be restored.
  diff_mode:
    support: none
seealso:
  - module: hypervisor.cpr.libvirt_save
  - module: hypervisor.cpr.libvirt_status
"""

EXAMPLES = r"""
- name: Bring back every libvirt domain saved before the reboot
  hypervisor.cpr.libvirt_restore:
    state_dir: /var/lib/qemu-cpr
  register: restored

- name: Show each domain's downtime and image size
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.downtime_seconds }} s down, image {{ item.image_allocated | human_readable }}"
  loop: "{{ restored.vms }}"
"""

RETURN = r"""
vms:
  description:
    - One entry per domain restored (or found restored) by this call, with what its save recorded
      (see M(hypervisor.cpr.libvirt_save)).
    - When some domains fail, the module fails and this still lists the ones restored.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The domain's name.
      type: str
    changed:
      description: Whether this call started it.
      type: bool
    runstate:
      description: Its state now, the one it had before the save.
      type: str
    restore_seconds:
      description: Seconds libvirt took to start it from its image (null when something else did).
      type: float
    downtime_seconds:
      description: Seconds from the start of its save to its return, across the reboot.
      type: float
    restored_by:
      description: Who brought it back.
      type: str
    image_allocated:
      description: The bytes its image took on disk.
      type: int
would_restore:
  description: Names of the domains this call restores (or in check mode would restore).
  returned: always
  type: list
  elements: str
errors:
  description: One entry per domain not restored; its image and record are kept.
  returned: when the module fails because some domains could not be restored
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_restore import (
    restore,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import (
    LIBVIRT_SPEC,
    STATE_DIR_SPEC,
    run,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            STATE_DIR_SPEC,
            **LIBVIRT_SPEC,
            names=dict(type="list", elements="str"),
            timeout=dict(type="float", default=300.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run(module, lambda: restore(params["state_dir"], params["uri"], params["names"], params["timeout"],
                                module.check_mode, params["run_id"]))


if __name__ == "__main__":
    main()
