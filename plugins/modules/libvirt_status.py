#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_status
short_description: Report a host's libvirt domains, what would start them behind a restore, and what is saved
version_added: 0.2.0
description:
  - Lists every domain of the libvirt daemon (running or not) with its state, whether it is persistent, its autostart
    flag, whether it has a managed save image (and what the image's header says), and why it cannot be saved now.
  - Reports what acts on domains around a reboot besides hypervisor.cpr, with a finding for each that matters, namely
    C(libvirt-guests) (installed, enabled, C(ON_BOOT), C(ON_SHUTDOWN), C(PARALLEL_SHUTDOWN)), the daemon's
    C(save_image_format) and C(auto_shutdown_*) settings in C(qemu.conf), and the domains with autostart on.
  - With O(state_dir), also the domains M(hypervisor.cpr.libvirt_save) saved and M(hypervisor.cpr.libvirt_restore) has
    not brought back yet.
  - Reads only; it never changes the host.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.libvirt
options:
  state_dir:
    description: The state directory whose libvirt records to report. Not given, RV(saved) is empty.
    type: path
attributes:
  check_mode:
    support: full
    details: Returns the same in check mode, since it never changes anything.
  diff_mode:
    support: none
seealso:
  - module: hypervisor.cpr.libvirt_save
  - module: hypervisor.cpr.libvirt_restore
  - module: hypervisor.cpr.vm_status
"""

EXAMPLES = r"""
- name: What does libvirt run here, and what starts domains at boot?
  hypervisor.cpr.libvirt_status:
    state_dir: /var/lib/qemu-cpr
  register: libvirt

- name: Show the domains libvirt would start at boot
  ansible.builtin.debug:
    msg: "autostart: {{ libvirt.autostart | join(', ') }}; libvirt-guests ON_BOOT={{ libvirt.config.libvirt_guests.on_boot }}"
"""

RETURN = r"""
uri:
  description: The URI the module connected to.
  returned: always
  type: str
libvirt_version:
  description: The version of the daemon's libvirt.
  returned: always
  type: str
  sample: 11.3.0
domains:
  description: Every domain of the daemon, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The domain's name (its QEMU's C(-name guest=)).
      type: str
    state:
      description: V(running), V(paused), V(shutoff), ...
      type: str
    persistent:
      description: Whether the domain is defined (only a persistent domain can have a managed save).
      type: bool
    autostart:
      description: Whether libvirt starts the domain when its daemon starts.
      type: bool
    managed_save:
      description: Whether the domain has a managed save image.
      type: bool
    memory_bytes:
      description: The domain's maximum memory.
      type: int
    image:
      description: The managed save image's path, whether it is complete, its format and size, when there is one.
      type: dict
    problem:
      description: Why the domain cannot be saved now (null when it can).
      type: str
autostart:
  description: Names of the domains with autostart on.
  returned: always
  type: list
  elements: str
config:
  description: What acts on domains around a reboot besides hypervisor.cpr.
  returned: always
  type: dict
  contains:
    libvirt_guests:
      description: Whether C(libvirt-guests) is installed and enabled, and its C(ON_BOOT), C(ON_SHUTDOWN) and C(PARALLEL_SHUTDOWN).
      type: dict
    save_image_format:
      description: The format of managed save images (C(qemu.conf)'s C(save_image_format)).
      type: str
    save_dir:
      description: Where libvirt writes managed save images.
      type: str
findings:
  description: What in RV(config) can act against an update, and what to do.
  returned: always
  type: list
  elements: str
saved:
  description: The records of the domains saved in O(state_dir) and not yet restored (see M(hypervisor.cpr.libvirt_save)).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_host import status
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import (
    LIBVIRT_SPEC,
    run,
)


def main() -> None:
    module = AnsibleModule(argument_spec=dict(LIBVIRT_SPEC, state_dir=dict(type="path")), supports_check_mode=True)
    run(module, lambda: status(module.params["uri"], module.params["state_dir"]))


if __name__ == "__main__":
    main()
