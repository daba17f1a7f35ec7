#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_save
short_description: Save a host's libvirt domains with libvirt's managed save, all at once, before a reboot
version_added: 0.2.0
description:
  - libvirt owns the monitor of every QEMU it runs, so hypervisor.cpr never drives those over QMP (see
    M(hypervisor.cpr.vm_status), which lists them with C(managed_by=libvirt)). This module saves them through libvirt's
    own API instead, concurrently. A managed save (C(virDomainManagedSave)) writes each domain's whole state to
    libvirt's image directory and shuts its QEMU down; libvirt starts the domain from that image next time.
  - Everything is checked before a domain is touched, namely the names, that each domain is running or paused and
    persistent with no stale image, the free space in libvirt's image directory (every domain's RAM) and, unless
    O(reboot=none), that the directory survives the reboot.
  - Per domain, before libvirt is asked, C(<state_dir>/<name>.libvirt) records what the restore needs (its old state,
    its autostart flag, whether its guest agent answered), and the domain's autostart is turned off, so that nothing
    starts it before M(hypervisor.cpr.libvirt_restore) checked its image. Once saved, the image's format, size and
    checksum (XXH3-128 per chunk, or SHA-256 without the C(xxhash) library) are recorded.
  - With O(all_or_nothing), when one domain fails to save, every domain of the call is brought back as it was (from
    its image, in its old state). libvirt resumes a domain whose own save failed; a partial image is removed.
  - Idempotent. A domain saved by an earlier run is reported unchanged; one whose save an interrupted run left
    unchecked is checked now.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.state_dir
  - hypervisor.cpr.libvirt
options:
  names:
    description:
      - The domains to save. Not given, every running or paused domain of the daemon.
      - An empty list is refused (an inventory variable that rendered empty must not mean every domain).
    type: list
    elements: str
  reboot:
    description: The reboot the save prepares for. With V(none) libvirt's image directory need not survive a reboot.
    type: str
    choices: [kexec, reboot, none]
    default: kexec
  timeout:
    description: Seconds to wait for libvirt's daemon to answer again when it went away during a save.
    type: float
    default: 300.0
  all_or_nothing:
    description: When one domain fails to save, bring every domain this call saved back as it was.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Runs every check and reports which domains would be saved; touches nothing.
  diff_mode:
    support: none
notes:
  - libvirt writes each image in the format of C(save_image_format) in C(qemu.conf), V(raw) by default, as big as the
    domain's RAM. With libvirt 11.2 or later, set C(save_image_format = "sparse") so that each page has a fixed place
    and unused RAM is skipped; M(hypervisor.cpr.libvirt_status) reports the format in use.
  - The save is a plain C(virDomainManagedSave). libvirt 11.2's C(virDomainSaveParams) could choose the format and
    several channels per call, but with libvirt 11.3 a managed save through it never returned on our test machines.
seealso:
  - module: hypervisor.cpr.libvirt_restore
  - module: hypervisor.cpr.libvirt_status
"""

EXAMPLES = r"""
- name: Save every running or paused libvirt domain before a kexec
  hypervisor.cpr.libvirt_save:
    state_dir: /var/lib/qemu-cpr
  register: saved

- name: Save two domains, for a restart of libvirt's QEMU only
  hypervisor.cpr.libvirt_save:
    names: [web1, db1]
    reboot: none
"""

RETURN = r"""
vms:
  description: One entry per domain saved by this call or by an earlier run, as its record holds it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The domain's name.
      type: str
    changed:
      description: Whether this call saved it.
      type: bool
    runstate_before:
      description: V(running) or V(paused); the restore brings it back so.
      type: str
    autostart_before:
      description: Whether its autostart was on (turned off while it is saved, put back by the restore).
      type: bool
    image:
      description: Its managed save image, as libvirt's daemon sees the path.
      type: str
    image_format:
      description: The image's format from its header (V(raw), V(sparse), ...).
      type: str
    image_bytes:
      description: The image's size.
      type: int
    image_allocated:
      description: The bytes the image takes on disk (less than RV(vms[].image_bytes) for a sparse image).
      type: int
    memory_bytes:
      description: The domain's RAM.
      type: int
    save_seconds:
      description: Seconds libvirt took to save it.
      type: float
    paused_at:
      description: When its save began, in seconds since the epoch; its downtime starts there.
      type: float
would_save:
  description: Names of the domains this call saves (or in check mode would save).
  returned: always
  type: list
  elements: str
libvirt_version:
  description: The version of the daemon's libvirt.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_save import (
    LibvirtSaveOptions,
    save,
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
            reboot=dict(type="str", choices=["kexec", "reboot", "none"], default="kexec"),
            timeout=dict(type="float", default=300.0),
            all_or_nothing=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    options = LibvirtSaveOptions(uri=params["uri"], reboot=params["reboot"], timeout=params["timeout"],
                                 all_or_nothing=params["all_or_nothing"])
    run(module, lambda: save(params["names"], params["state_dir"], options, module.check_mode, params["run_id"]))


if __name__ == "__main__":
    main()
