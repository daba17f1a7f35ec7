#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cpr_save
short_description: Save QEMU VMs to state files with cpr-reboot, ready for a host reboot
version_added: 0.1.0
description:
  - Saves every selected VM concurrently with QEMU's C(cpr-reboot) migration mode, then quits its QEMU so the host can
    be rebooted, upgraded or kexec'd. M(hypervisor.cpr.cpr_restore) brings the VMs back afterwards.
  - Before anything is touched, every VM must be ready (see RV(hypervisor.cpr.vm_status#module:vms[].cpr)), the state
    directory must have room for the RAM that is copied, and, when O(reboot) is not V(none), it must be on storage that
    survives the reboot. A VM that is not ready fails the module with every reason, and no VM is touched.
  - Guests with VFIO devices (or all guests, see O(suspend)) are suspended to RAM through their guest agent first;
    the restore wakes them again.
  - Shared, file-backed guest RAM stays in place (C(x-ignore-shared)); other RAM is copied into the state file, with
    C(mapped-ram) and multifd when QEMU supports them and there is much to copy.
  - For each VM a manifest C(<state_dir>/<name>.json) records how to bring it back; it is written before QEMU quits,
    so a run that dies anywhere can be finished by running again.
  - If any VM fails to save, every VM of the call is resumed exactly as it was (running, paused or suspended) and its
    partial files removed (O(all_or_nothing)). No QEMU quits before every VM is saved.
  - A VM whose QEMU dies during its save (killed, crashed) loses its running state with it; no tool can bring that
    back. Its partial state file is removed and its command line recorded as C(<state_dir>/<name>.stopped), so that
    M(hypervisor.cpr.vm_power) with O(hypervisor.cpr.vm_power#module:state=started) boots it again (the
    P(hypervisor.cpr.kernel_update#role) role does so).
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.state_dir
  - hypervisor.cpr.vm_selection
options:
  reboot:
    description:
      - What happens between save and restore. V(kexec) and V(reboot) require RAM kept in place to be on persistent
        memory (DAX/pmem or a disk file) and the state directory on a disk; V(none) (QEMU restarted only) does not.
    type: str
    choices: [kexec, reboot, none]
    default: kexec
  ignore_shared:
    description:
      - Keep shared guest RAM in place (C(x-ignore-shared)) instead of copying it into the state file.
      - V(auto) keeps it in place when every shared memory backend is a file or device a new QEMU can map again.
      - V(false) copies all RAM, for example to survive a reboot when RAM is on tmpfs.
    type: raw
    default: auto
  mapped_ram:
    description:
      - How RAM copied into the state file is written. With QEMU's C(mapped-ram) and C(multifd) capabilities (QEMU 9.0
        and later) every page has a fixed place in the file and several threads write and load it.
      - V(auto) uses them when at least 256 MiB of a VM's RAM is copied; V(true) whenever RAM is copied (the save
        fails for a VM whose QEMU lacks them); V(false) never (one stream, as older QEMUs write it).
      - RAM kept in place is not copied, so this does not matter for it.
    type: raw
    default: auto
  suspend:
    description:
      - Which running guests to suspend to RAM through their guest agent before the save.
      - V(vfio) suspends guests with VFIO devices, which cpr-reboot requires; V(all) suspends every running guest
        (each needs a working guest agent); V(none) suspends none (a VFIO guest must then be suspended already).
    type: str
    choices: [vfio, all, none]
    default: vfio
  quit:
    description:
      - Quit each QEMU once every VM is saved. With V(false) the QEMUs stay in the V(postmigrate) runstate.
    type: bool
    default: true
  all_or_nothing:
    description:
      - When one VM fails to save, resume every VM of the call. With V(false) the VMs that saved stay saved (and quit)
        and only the failed ones are resumed; the module still fails.
    type: bool
    default: true
  timeout:
    description:
      - Seconds for each VM's save, including the suspend of its guest. Socket connections wait at most 10 seconds.
    type: float
    default: 300.0
  hold_units:
    description:
      - Keep the systemd service that runs each VM's QEMU (say C(qemu@web1.service)) from starting it afresh while it
        is saved, at boot or by C(Restart=always) when the save quits QEMU. A cold boot of a VM whose RAM stays in place
        writes over the guest memory its saved state needs.
      - The service gets a drop-in, C(/etc/systemd/system/<unit>.d/50-hypervisor-cpr-hold.conf), with
        C(ConditionPathExists=!<state_dir>/<name>.json), before any VM stops; M(hypervisor.cpr.cpr_restore) removes
        it once the VM is back (RV(vms[].held_unit) names it). Units a restore started and managers' scopes are not
        held.
      - Set to V(false) when the service itself brings the VM back from its manifest, as with
        O(hypervisor.cpr.cpr_restore#module:launch=systemd) and the example unit in C(examples/systemd/).
      - Where systemd does not run the host, nothing is held, and the module warns for each VM, naming what may start
        it (its parent process), when O(reboot) is not V(none).
    type: bool
    default: true
requirements:
  - xxhash (Python library) on the hypervisor, for the fast XXH3-128 checksum of state files; without it the
    checksum is SHA-256, about 8 times slower per core
attributes:
  check_mode:
    support: full
    details: Runs every check (readiness, free space, state directory) and reports which VMs would be saved.
  diff_mode:
    support: none
notes:
  - Idempotent. A VM whose manifest exists and whose QEMU is gone was saved by an earlier run and is reported unchanged.
    So is one whose new QEMU a restore started and did not finish (an interrupted run), when no reboot can end it
    after its state was loaded (the QEMU still waits for its state, or O(reboot=none)); M(hypervisor.cpr.cpr_restore)
    finishes it.
  - The blackout of a VM starts at RV(vms[].paused_at); M(hypervisor.cpr.cpr_restore) reports the whole downtime.
seealso:
  - module: hypervisor.cpr.cpr_restore
  - module: hypervisor.cpr.vm_status
  - name: QEMU CheckPoint and Restart (CPR)
    description: QEMU's documentation of the cpr-reboot migration mode.
    link: https://www.qemu.org/docs/master/devel/migration/CPR.html
"""

EXAMPLES = r"""
- name: Save every VM of the host before a kexec
  hypervisor.cpr.cpr_save:
    state_dir: /var/lib/qemu-cpr
  register: saved

- name: Save two VMs for a QEMU upgrade only, copying RAM that lives on tmpfs
  hypervisor.cpr.cpr_save:
    names: [web1, web2]
    reboot: none

- name: Save VMs whose RAM is on tmpfs across a reboot, by copying it
  hypervisor.cpr.cpr_save:
    ignore_shared: false
    reboot: reboot
"""

RETURN = r"""
vms:
  description: One entry per VM saved now or by an earlier run.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    changed:
      description: V(false) when an earlier run saved it.
      type: bool
    state_file:
      description: Path of its state file.
      type: str
      sample: /var/lib/qemu-cpr/web1.state
    state_bytes:
      description: Size of the state file in bytes.
      type: int
    ram_in_place:
      description: Whether guest RAM stayed in place rather than being copied into the state file.
      type: bool
    runstate_before:
      description: Runstate the VM will be restored to (V(suspended) when the module suspended it; the restore wakes it).
      type: str
    suspended_by_us:
      description: Whether the module suspended the guest.
      type: bool
    paused_at:
      description: When the VM stopped, in seconds since the epoch.
      type: float
    save_seconds:
      description:
        - Seconds from QEMU's C(migrate) command to the state file synced to disk and the manifest written.
        - The guest stopped earlier, at RV(vms[].paused_at); the suspend of a guest and the wait until every VM of the
          call is ready to stop are not part of it.
      type: float
    quit:
      description: Whether its QEMU has quit.
      type: bool
    held_unit:
      description: The systemd service kept from starting the VM afresh until it is restored (see O(hold_units)), or V(null).
      type: str
      sample: qemu@web1.service
would_save:
  description: Names of the VMs this call saves (or in check mode would save).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SUSPEND_CHOICES, SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import REBOOT_METHODS
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import (
    SELECTION_SPEC,
    STATE_DIR_SPEC,
    auto_or_bool,
    run,
    selection,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            SELECTION_SPEC,
            **STATE_DIR_SPEC,
            reboot=dict(type="str", choices=list(REBOOT_METHODS), default="kexec"),
            ignore_shared=dict(type="raw", default="auto"),
            mapped_ram=dict(type="raw", default="auto"),
            suspend=dict(type="str", choices=list(SUSPEND_CHOICES), default="vfio"),
            quit=dict(type="bool", default=True),
            all_or_nothing=dict(type="bool", default=True),
            timeout=dict(type="float", default=300.0),
            hold_units=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    options = SaveOptions(reboot=params["reboot"], ignore_shared=auto_or_bool(module, "ignore_shared"),
                          timeout=params["timeout"], quit_after=params["quit"], suspend=params["suspend"],
                          all_or_nothing=params["all_or_nothing"], mapped_ram=auto_or_bool(module, "mapped_ram"),
                          hold_units=params["hold_units"])
    run(module, lambda: save(selection(module), params["state_dir"], options, module.check_mode, params["run_id"]))


if __name__ == "__main__":
    main()
