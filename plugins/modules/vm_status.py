#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_status
short_description: Report the QEMU VMs of a hypervisor and whether each is ready for cpr-reboot
version_added: 0.1.0
description:
  - Finds every QEMU process of the host from C(/proc) (those another manager runs, or that have no QMP socket, too),
    or takes an explicit list, and asks each it can drive over QMP for its runstate, QEMU version, versioned machine
    type, memory backends, VFIO devices and migration settings.
  - Tells for every memory backend whether a new QEMU can map it again and whether it survives a reboot
    (DAX/pmem or a disk file do; tmpfs, ramfs, hugetlbfs and anonymous memory do not).
  - Asks the guest agent of every running VM that has one whether it answers.
  - Gives a verdict for a cpr-reboot checkpoint with every reason a VM is not ready, for the planned O(reboot), and one
    for a cpr-transfer to a new QEMU (RV(vms[].transfer)), with every reason a VM cannot be transferred.
  - Reads only; it never changes a VM.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.vm_selection
options:
  reboot:
    description:
      - What will happen between save and restore, for the readiness verdict.
      - V(kexec) and V(reboot) need RAM kept in place to be on persistent memory; V(none) (a QEMU restart only) does not.
    type: str
    choices: [kexec, reboot, none]
    default: kexec
  ignore_shared:
    description:
      - Whether the save would keep shared RAM in place (QEMU capability C(x-ignore-shared)) instead of copying it into
        the state file, for the readiness verdict.
      - V(auto) keeps it in place when every shared memory backend is a file or device a new QEMU can map again.
    type: raw
    default: auto
  state_dir:
    description:
      - A state directory of M(hypervisor.cpr.cpr_save). When set, the module also lists the VMs it holds, saved and not
        yet restored (RV(saved)), and shut down by M(hypervisor.cpr.vm_power) and not yet started (RV(stopped)).
      - A name in O(names) that the directory holds is not an unknown name; such a VM is listed there, not in RV(vms).
      - A directory that does not exist holds nothing.
    type: path
attributes:
  check_mode:
    support: full
    details: Can run in check_mode and return the same result, since it never changes anything.
  diff_mode:
    support: none
notes:
  - A QMP socket serves one client at a time. A VM whose monitor is held by another client is reported with
    O(timeout) exceeded in RV(vms[].error). A VM libvirt, Proxmox VE or Ganeti runs is never asked over QMP at all.
  - VMs that cannot be reached are reported with RV(vms[].error) set and a warning; the module itself does not fail.
seealso:
  - name: QEMU CheckPoint and Restart (CPR)
    description: QEMU's documentation of the cpr-reboot migration mode.
    link: https://www.qemu.org/docs/master/devel/migration/CPR.html
"""

EXAMPLES = r"""
- name: List every VM of the hypervisor
  hypervisor.cpr.vm_status:
  register: status

- name: Show the VMs that could not be saved before a kexec, with the reasons
  ansible.builtin.debug:
    msg: "{{ status.vms | rejectattr('cpr.ready') | map(attribute='cpr.reasons') }}"

- name: Select VMs with VFIO devices that are ready
  hypervisor.cpr.vm_status:
    query: "[?cpr.ready && length(vfio) > `0`]"

- name: Check two VMs by name, for a restart of QEMU only
  hypervisor.cpr.vm_status:
    names: [web1, db1]
    reboot: none

- name: A VM whose command line does not tell its sockets
  hypervisor.cpr.vm_status:
    vms:
      - name: legacy1
        qmp_socket: /run/qemu/legacy1.qmp
        qga_socket: /run/qemu/legacy1.qga
"""

RETURN = r"""
vms:
  description: The selected VMs, sorted by name when discovered.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
      sample: web1
    pid:
      description: Process id of its QEMU.
      type: int
      sample: 4242
    argv:
      description:
        - Command line of its QEMU, from C(/proc/<pid>/cmdline), with every secret replaced by C(********) (the
          C(data) of C(-object secret), every C(password=)).
      type: list
      elements: str
    exe:
      description: The binary its QEMU runs, from C(/proc/<pid>/exe); a restart runs this one, never C(argv[0]).
      type: str
      sample: /usr/bin/qemu-system-x86_64
    credentials:
      description: Who its QEMU runs as; a restart runs it as the same user, never with more rights.
      type: dict
      contains:
        uid:
          description: Effective user id.
          type: int
        gid:
          description: Effective group id.
          type: int
        groups:
          description: Supplementary groups.
          type: list
          elements: int
    managed_by:
      description:
        - Who runs this VM, V(libvirt), V(proxmox), V(ganeti), or V(none). hypervisor.cpr never drives a VM another
          manager runs; a reboot takes it down all the same, so the P(hypervisor.cpr.kernel_update#role) role refuses
          to reboot a host with one it does not cover.
      type: str
      sample: none
    recognised_by:
      description: The signs that told who manages it (its parent daemon, a monitor passed as a descriptor, its paths).
      type: list
      elements: str
    unit:
      description: The systemd unit (service or scope) its QEMU runs in, or V(null).
      type: str
      sample: qemu@web1.service
    problem:
      description:
        - Why hypervisor.cpr cannot drive this QEMU, or V(null). Another manager runs it, it has no QMP socket we can
          reach, the process at the other end of its QMP socket is not it, or its binary is not one only root could
          have put there. It is also the first of RV(vms[].cpr.reasons).
      type: str
    qmp_socket:
      description: Path of its QMP socket, or V(null) when it has none we can reach.
      type: str
      sample: /run/qemu/web1.qmp
    qga_socket:
      description: Path of its guest agent socket, or V(null).
      type: str
    source:
      description: V(discovered) from C(/proc), or V(explicit) from O(vms).
      type: str
    runstate:
      description: QEMU's runstate, such as V(running), V(paused) or V(suspended).
      type: str
      sample: running
    qemu_version:
      description: Version of the running QEMU.
      type: str
      sample: 10.0.2
    machine_type:
      description: The versioned machine type the VM runs, which a restore pins so the guest ABI does not change.
      type: str
      sample: pc-q35-10.0
    memory_backends:
      description: Every memory backend and where its memory lives.
      type: list
      elements: dict
      contains:
        id:
          description: Backend id.
          type: str
        type:
          description: QOM type, such as V(memory-backend-file).
          type: str
        size:
          description: Size in bytes.
          type: int
        share:
          description: Whether the memory is mapped shared.
          type: bool
        mem_path:
          description: The file or device behind a file backend.
          type: str
        kind:
          description: V(anonymous), V(file), V(directory), V(block-device), V(dax-device), V(char-device) or V(missing).
          type: str
        filesystem:
          description: Filesystem type of RV(vms[].memory_backends[].mem_path) as QEMU sees it, when it is a file.
          type: str
          sample: ext4
        dax:
          description: Whether the memory is on DAX/persistent memory.
          type: bool
        mappable:
          description: Whether a new QEMU can map the same memory again by its path.
          type: bool
        persistent:
          description: Whether the memory survives a reboot of the host.
          type: bool
        note:
          description: Why, in words.
          type: str
    vfio:
      description: VFIO devices of the VM; their guests must be suspended to RAM before a save.
      type: list
      elements: dict
      contains:
        id:
          description: Device id given with C(-device ...,id=), or QEMU's name for a device without one (such as C(device[0])).
          type: str
          sample: hostdev0
        type:
          description: QOM type of the device.
          type: str
          sample: vfio-pci
        path:
          description: QOM path of the device.
          type: str
          sample: /machine/peripheral/hostdev0
    s3_blocked:
      description:
        - Whether the guest cannot suspend to RAM again in this boot. On a q35 machine with SeaBIOS, the first resume
          from suspend leaves the ACPI power-management block unmapped, so the next suspend never reaches QEMU. A
          VFIO guest in that state is not ready (see RV(vms[].cpr.reasons)); reboot the guest once, or boot it with
          OVMF (UEFI) firmware.
      type: bool
      sample: false
    agent:
      description: The guest agent.
      type: dict
      contains:
        socket:
          description: Its socket path, or V(null).
          type: str
        answering:
          description: Whether it answered; V(null) when not asked (no socket, or the guest is not running).
          type: bool
        version:
          description: Version of the agent in the guest.
          type: str
        error:
          description: Why it did not answer.
          type: str
    migration:
      description: Migration settings that matter to cpr-reboot.
      type: dict
      contains:
        mode:
          description: Current migration mode.
          type: str
        status:
          description: Status of the last or current migration.
          type: str
        blocked_reasons:
          description: Why QEMU refuses to migrate, in QEMU's words.
          type: list
          elements: str
        capabilities:
          description: Migration capabilities that are on.
          type: list
          elements: str
    cpr:
      description: The verdict for a cpr-reboot save.
      type: dict
      contains:
        ready:
          description: Whether the VM can be saved for the planned O(reboot).
          type: bool
        reboot:
          description: The O(reboot) the verdict is for.
          type: str
        ram_in_place:
          description: Whether its shared RAM would stay in place (x-ignore-shared) rather than be copied.
          type: bool
        ram_copy_bytes:
          description: Bytes of guest RAM that would be copied into the state file.
          type: int
        reasons:
          description: Every reason it is not ready, each saying what to do.
          type: list
          elements: str
    aux_ram_share:
      description:
        - Whether its QEMU runs with C(-machine aux-ram-share=on) (its ROMs and video RAM in shared memory, as
          cpr-transfer needs); V(null) when QEMU does not know the property (before 10.0) or was not asked.
      type: bool
    transfer:
      description:
        - The verdict for a cpr-transfer to a new QEMU (M(hypervisor.cpr.qemu_update)), for a QEMU-only update without
          a reboot.
        - A VM is transferred when its QEMU is 10.0 or newer, it runs, every memory backend is shared (C(share=on),
          for example C(memory-backend-memfd)), it was started with C(-machine aux-ram-share=on), QEMU reports no
          migration blocker, no conflicting capability is on, it neither daemonizes nor writes a C(-pidfile), its
          VFIO devices (if any) have QEMU 10.1 or newer, and it does not run in an operator's systemd service.
        - QEMU reports the blockers of cpr-transfer mode only in that mode, which this read-only module does not set;
          M(hypervisor.cpr.qemu_update) asks again in that mode before it starts anything.
      type: dict
      contains:
        ready:
          description: Whether the VM can be transferred now.
          type: bool
        reasons:
          description: Every reason it cannot, each saying what it takes.
          type: list
          elements: str
    runs_replaced_code:
      description:
        - Whether its QEMU runs code deleted from disk since it started (an upgraded QEMU binary or library), read from
          C(/proc/<pid>/maps); a restart of QEMU picks up the new code. V(null) when it cannot be told.
      type: bool
    error:
      description: Why the VM could not be asked, or V(null).
      type: str
others:
  description:
    - Every other QEMU process of the host, the ones O(names), O(vms) or O(query) did not select, read from C(/proc)
      only (none is asked over QMP). A reboot takes them down as well.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Its VM's name (C(-name)), or C(qemu-<pid>) without one.
      type: str
    pid:
      description: Process id of its QEMU.
      type: int
    exe:
      description: The binary it runs.
      type: str
    managed_by:
      description: Who runs it, as RV(vms[].managed_by).
      type: str
    recognised_by:
      description: The signs that told, as RV(vms[].recognised_by).
      type: list
      elements: str
    unit:
      description: Its systemd unit, or V(null).
      type: str
    problem:
      description: Why hypervisor.cpr cannot drive it, or V(null), as RV(vms[].problem).
      type: str
saved:
  description: The VMs O(state_dir) holds saved and not yet restored, sorted by name; what their manifests record.
  returned: when O(state_dir) is set
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    runstate_before:
      description: Runstate the restore brings it back to (V(suspended) when the save suspended it; the restore wakes it).
      type: str
    suspended_by_us:
      description: Whether the save suspended the guest.
      type: bool
    agent_answered:
      description: Whether its guest agent answered before the save.
      type: bool
    ram_in_place:
      description: Whether its RAM stayed in place rather than being copied into the state file.
      type: bool
    state_bytes:
      description: Size of its state file in bytes.
      type: int
    paused_at:
      description: When it stopped, in seconds since the epoch.
      type: float
    saved_at:
      description: When its state file was complete, in seconds since the epoch.
      type: float
    save_seconds:
      description: Seconds from QEMU's C(migrate) command to the state file synced and checksummed.
      type: float
    reboot:
      description: The reboot it was saved for.
      type: str
    kernel:
      description: The kernel the host ran when it was saved.
      type: str
    boot_id:
      description: The boot id of the host when it was saved.
      type: str
    saved_this_boot:
      description: Whether it was saved in the host's current boot (V(false) once the host rebooted since).
      type: bool
libvirt_saved:
  description:
    - Names of the libvirt domains O(state_dir) holds saved by M(hypervisor.cpr.libvirt_save) and not yet restored,
      sorted; M(hypervisor.cpr.libvirt_status) reports what their records hold.
  returned: when O(state_dir) is set
  type: list
  elements: str
stopped:
  description: The VMs O(state_dir) holds shut down by M(hypervisor.cpr.vm_power) and not yet started, sorted by name.
  returned: when O(state_dir) is set
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    how:
      description: How it went down (V(guest-shutdown), V(system_powerdown) or V(qemu-died-during-save)).
      type: str
    stopped_at:
      description: When, in seconds since the epoch.
      type: float
    agent_answered:
      description: Whether its guest agent answered before.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import REBOOT_METHODS, FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import SELECTION_SPEC, auto_or_bool, run, selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            SELECTION_SPEC,
            reboot=dict(type="str", choices=list(REBOOT_METHODS), default="kexec"),
            ignore_shared=dict(type="raw", default="auto"),
            state_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    options = FactsOptions(timeout=params["timeout"], reboot=params["reboot"],
                           ignore_shared=auto_or_bool(module, "ignore_shared"))

    run(module, lambda: status(selection(module), options, params["state_dir"]))


if __name__ == "__main__":
    main()
