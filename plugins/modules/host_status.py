#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_status
short_description: Report a hypervisor's running kernel, the kernels it has installed, kexec and systemd
version_added: 0.1.0
description:
  - Reports the running kernel and boot id, the kernel images in C(/boot) (newest release first, each with its initrd),
    whether kexec-tools is installed and a kernel is loaded for C(kexec -e), and whether systemd runs the host.
  - Reports whether the distribution says the host needs a reboot (C(/var/run/reboot-required) on Debian and Ubuntu,
    C(needs-restarting -r) on the RHEL family).
  - Resolves the kernel an update would boot into from O(kernel), O(initrd) and O(kernel_release), the way the
    P(hypervisor.cpr.kernel_update#role) role names it, and says whether its image and initrd exist.
  - Reads only; it never changes the host.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
options:
  kernel:
    description:
      - The target kernel, as an image path (V(/boot/vmlinuz-6.1.0-28-amd64)) or a release (V(6.1.0-28-amd64), meaning
        C(/boot/vmlinuz-<release>)).
      - Empty means the newest C(/boot/vmlinuz-*) by version.
    type: str
    default: ""
  initrd:
    description:
      - The target kernel's initrd. Empty means C(/boot/initrd.img-<release>) or C(/boot/initramfs-<release>.img),
        whichever exists.
    type: str
    default: ""
  kernel_release:
    description:
      - The release the target kernel reports once it runs (C(uname -r)). Empty means the one in the image's file name,
        C(vmlinuz-<release>).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: Returns the same in check mode, since it never changes anything.
  diff_mode:
    support: none
seealso:
  - module: hypervisor.cpr.vm_status
"""

EXAMPLES = r"""
- name: Which kernel would the update boot into?
  hypervisor.cpr.host_status:
  register: host

- name: Show it
  ansible.builtin.debug:
    msg: "{{ host.kernel }} -> {{ host.target.release }} ({{ host.target.image }}, initrd {{ host.target.initrd }})"
"""

RETURN = r"""
kernel:
  description: The running kernel's release, as C(uname -r) prints it.
  returned: always
  type: str
  sample: 6.1.0-27-amd64
boot_id:
  description: The boot id of the running kernel (C(/proc/sys/kernel/random/boot_id)); a kexec or reboot changes it.
  returned: always
  type: str
systemd:
  description: Whether systemd runs the host (C(/run/systemd/system) exists).
  returned: always
  type: bool
kexec:
  description: kexec-tools on the host.
  returned: always
  type: dict
  contains:
    path:
      description: Path of C(kexec), or V(null) when it is not installed.
      type: str
    version:
      description: What C(kexec --version) prints.
      type: str
    loaded:
      description: Whether a kernel is loaded for C(kexec -e) (C(/sys/kernel/kexec_loaded)).
      type: bool
kernels:
  description: The kernel images in C(/boot), newest release first.
  returned: always
  type: list
  elements: dict
  contains:
    release:
      description: The release in the image's file name.
      type: str
      sample: 6.1.0-28-amd64
    image:
      description: Path of the image.
      type: str
      sample: /boot/vmlinuz-6.1.0-28-amd64
    initrd:
      description: Path of its initrd, or V(null) when there is none.
      type: str
target:
  description: The kernel an update would boot into, from O(kernel), O(initrd) and O(kernel_release).
  returned: always
  type: dict
  contains:
    image:
      description: Path of its image; empty when O(kernel) is empty and C(/boot) has no kernel.
      type: str
    image_exists:
      description: Whether the image is a file.
      type: bool
    release:
      description: The release it reports once it runs; empty when it cannot be told.
      type: str
    initrd:
      description: Its initrd; empty when none of RV(target.initrd_candidates) exists.
      type: str
    initrd_candidates:
      description: Where its initrd was looked for.
      type: list
      elements: str
reboot_required:
  description:
    - Whether the distribution says the host needs a reboot, as its own tools say it. On the Debian family (C(ID) or
      C(ID_LIKE) of C(/etc/os-release)), whether C(/var/run/reboot-required) exists, with the packages
      C(/var/run/reboot-required.pkgs) names. On the RHEL family, the exit status of C(needs-restarting -r)
      (C(dnf needs-restarting -r) where only dnf has it), with the packages it lists.
  returned: always
  type: dict
  version_added: 0.2.0
  contains:
    required:
      description: V(true) or V(false); V(null) when it cannot be told (another distribution, the tool missing or failing).
      type: bool
    source:
      description: What was asked, V(/var/run/reboot-required) or the command; V(null) when nothing could be.
      type: str
    detail:
      description: What it said, for people.
      type: str
      sample: /var/run/reboot-required exists (System restart required), asked for by linux-image-6.1.0-28-amd64
    packages:
      description: The packages that asked for the reboot, where the distribution names them.
      type: list
      elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._host import status
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import run
from ansible_collections.hypervisor.cpr.plugins.module_utils._reboot_required import reboot_required


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            kernel=dict(type="str", default=""),
            initrd=dict(type="str", default=""),
            kernel_release=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run(module, lambda: {**status(params["kernel"], params["initrd"], params["kernel_release"]),
                         "reboot_required": reboot_required()})


if __name__ == "__main__":
    main()
