#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cpr_restore
short_description: Bring VMs saved by cpr_save back, each exactly where it stopped
version_added: 0.1.0
description:
  - For every manifest in O(state_dir) (or the O(names) given), concurrently, starts a new QEMU with the recorded
    command line, the machine type pinned to the recorded versioned type (so a QEMU upgrade does not change the guest
    ABI), any C(-S) and old C(-incoming) removed and C(-incoming defer) added, then loads the state file with the
    same migration mode and capabilities as the save.
  - Guests the save suspended are woken; paused VMs stay paused; suspended ones stay suspended. Where the guest
    agent answered before the save, the module waits until it answers again.
  - Only when a VM is back in its old runstate are its state file and manifest removed (with O(keep_state), renamed),
    and the systemd service the save held (see O(hypervisor.cpr.cpr_save#module:hold_units)) released. On any failure
    they are kept, the error says why, and running the module again retries.
  - A running QEMU of a saved VM's name is taken for the VM only when it is the one a restore started (recorded in
    C(<state_dir>/<name>.restoring) before the restore waits for it) or the very one that was saved. Any other was
    started afresh by something else; the module fails for that VM, naming the process, and keeps its files.
  - A VM that M(hypervisor.cpr.boot_restore) brought back at this boot is found back (the pid it recorded proves the
    QEMU is the one it started), verified like any other (runstate, guest agent) and cleaned up; the result reports
    what the boot restore did (RV(boot_restore)) and the host's blackout across the reboot (RV(host_blackout)). A boot
    restore still at work is waited for, up to O(timeout), as it holds the state directory's lock.
  - The new QEMU is detached so it outlives the module. When systemd runs the host it is started under
    C(systemd-run) as a transient unit, so systemd supervises it; otherwise in a session of its own, with its output
    in C(<state_dir>/<name>.log).
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
extends_documentation_fragment:
  - hypervisor.cpr.attributes
  - hypervisor.cpr.state_dir
options:
  names:
    description: Restore only these VMs. An unknown name (no manifest, no running VM) is an error.
    type: list
    elements: str
  timeout:
    description: Seconds for each VM's restore, including the wait for its guest agent.
    type: float
    default: 300.0
  keep_state:
    description:
      - Keep the state file and manifest of each VM restored, for inspection.
      - They are renamed to C(<name>.state.restored) and C(<name>.json.restored) (replacing those an earlier restore
        kept; the mode stays C(0600)). Under their own names they would say the VM still waits for a restore, and a
        later M(hypervisor.cpr.cpr_save) would skip the running VM or refuse it.
    type: bool
    default: false
  verify_checksum:
    description:
      - Check each state file's size and checksum (one XXH3-128 or SHA-256 digest per chunk of the file, as the save
        recorded it) against its manifest. A truncated or corrupted file is refused, and kept.
      - A VM whose RAM was copied into its state file is loaded while the checksum is checked, with the guest held
        stopped; the guest runs only once the file passed, else the new QEMU is quit before the guest ran a single
        instruction. A VM whose RAM stayed in place is checked before its QEMU starts.
    type: bool
    default: true
  launch:
    description:
      - How to start the new QEMU.
      - V(argv) runs the recorded command line (under C(systemd-run) when systemd runs the host).
      - V(systemd) runs C(systemctl start) on the unit O(systemd_unit) instead, for VMs whose QEMU a unit of the
        operator's runs.
      - While C(<state_dir>/<name>.json) exists, that unit must start QEMU as V(argv) would, with the command line
        recorded in the manifest (its C(argv)), any C(-S) and old C(-incoming) removed, the machine type pinned to the
        manifest's versioned C(machine_type) (C(-machine pc-q35-10.0) appended) and C(-incoming defer) appended. The
        restore waits for that QEMU on the QMP socket recorded in the manifest (C(qmp_socket)) and loads the state
        there. A unit that boots its usual command line instead boots the guest afresh, which with RAM kept in place
        overwrites the saved guest memory.
      - The unit must be inactive once the save quit its QEMU (that QEMU exits with status 0, so use
        C(Restart=on-failure), not C(Restart=always)), else C(systemctl start) does nothing. A unit that started at boot
        and already waits for its state is used as it is.
      - The collection ships such a template unit with its start script in C(examples/systemd/)
        (C(qemu-cpr@.service), C(qemu-cpr-start)); use it with O(systemd_unit=qemu-cpr@{name}.service).
      - systemd holds the output of that QEMU. When it does not answer within O(timeout), the error names the unit; see
        C(systemctl status <unit>) and C(journalctl -u <unit>).
    type: str
    choices: [argv, systemd]
    default: argv
  systemd_unit:
    description: Unit started with O(launch=systemd); C({name}) is replaced by the VM's name.
    type: str
    default: qemu@{name}.service
requirements:
  - qemu.qmp (Python library) on the hypervisor
  - xxhash (Python library) on the hypervisor, to verify state files saved with an XXH3-128 checksum
attributes:
  check_mode:
    support: full
    details: Checks every manifest and state file and reports which VMs would be restored.
  diff_mode:
    support: none
notes:
  - Idempotent. A VM already running with no manifest is not touched; one that an interrupted run restored but did not
    clean up is checked and cleaned up.
seealso:
  - module: hypervisor.cpr.cpr_save
"""

EXAMPLES = r"""
- name: Restore every VM saved on this host
  hypervisor.cpr.cpr_restore:
    state_dir: /var/lib/qemu-cpr
  register: restored

- name: Show the downtime of each VM
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.downtime_seconds | round(2) }} s"
  loop: "{{ restored.vms }}"
"""

RETURN = r"""
vms:
  description:
    - One entry per VM restored (or checked) by this call.
    - When some VMs fail, the module fails and this still lists the VMs that were restored.
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
    pid:
      description: Process id of the new QEMU.
      type: int
    runstate:
      description: Runstate after the restore.
      type: str
      sample: running
    restore_seconds:
      description: Seconds this VM's restore took, from its start (checksum, new QEMU) to its guest agent answering.
      type: float
    downtime_seconds:
      description:
        - Seconds from RV(hypervisor.cpr.cpr_save#module:vms[].paused_at) (the stop, or the suspend when the save
          suspended the guest) to the VM back in its old runstate (woken, when the save suspended it), across the
          reboot. The wait for the guest agent afterwards is not part of it.
        - For a VM that an interrupted earlier run brought back, until this run found it back.
      type: float
    state_kept:
      description: Whether the state file and manifest were kept, as C(<name>.state.restored) and C(<name>.json.restored).
      type: bool
    runstate_before:
      description:
        - Runstate before the save, as the manifest recorded it (V(suspended) when the save suspended the guest, which
          this module then woke, so RV(vms[].runstate) is V(running)).
      type: str
    suspended_by_us:
      description: Whether the save suspended the guest (and this module woke it).
      type: bool
    paused_at:
      description: When the VM stopped for the save, in seconds since the epoch.
      type: float
    back_at:
      description: When the VM was back in its old runstate, in seconds since the epoch; RV(vms[].downtime_seconds) ends there.
      type: float
    save_seconds:
      description: Seconds the save took, from QEMU's C(migrate) command to the state file synced and checksummed.
      type: float
    state_bytes:
      description: Size of the state file in bytes.
      type: int
    ram_in_place:
      description: Whether guest RAM stayed in place rather than being copied into the state file.
      type: bool
    restored_at_boot:
      description: Whether M(hypervisor.cpr.boot_restore) brought the VM back at boot (this call verified it).
      type: bool
    boot_restore_seconds:
      description: Seconds the boot restore took for this VM; V(null) when it was not restored at boot.
      type: float
boot_restore:
  description:
    - What M(hypervisor.cpr.boot_restore) did at this boot, V(null) when it did not run on this boot.
  returned: when not in check mode
  type: dict
  contains:
    run_id:
      description: The run whose VMs it restored.
      type: str
    kernel:
      description: The kernel it ran on.
      type: str
    started_at:
      description: When it started, in seconds since the epoch (the new kernel's userspace was up).
      type: float
    finished_at:
      description: When it was done with every VM; V(null) if it never finished.
      type: float
    vms:
      description: The VMs it brought back, each with C(name), C(pid), C(back_at) and C(seconds).
      type: list
      elements: dict
    failed:
      description: The VMs it could not bring back, each with C(name) and C(error); their files are kept.
      type: list
      elements: dict
host_blackout:
  description:
    - The host's blackout across its reboot, from the reboot command (the boot entry's mark, touched right before the
      kernel is left) or, without one, from the new kernel's start, to the last VM back. V(null) when no VM restored
      was saved before this boot.
  returned: when not in check mode
  type: dict
  contains:
    from:
      description: Where it starts, V(reboot command) or V(kernel start).
      type: str
    started_at:
      description: That moment, in seconds since the epoch.
      type: float
    kernel_started_at:
      description: When the running kernel started, in seconds since the epoch.
      type: float
    userspace_at:
      description: When the boot restore started, in seconds since the epoch; V(null) without a boot restore.
      type: float
    last_back_at:
      description: When the last VM was back, in seconds since the epoch.
      type: float
    seconds:
      description: The blackout, RV(host_blackout.last_back_at) minus RV(host_blackout.started_at).
      type: float
    to_userspace_seconds:
      description: The part of it until the new kernel's userspace ran the boot restore (shutdown, kexec, kernel boot).
      type: float
would_restore:
  description: Names of the VMs this call restores (or in check mode would restore).
  returned: always
  type: list
  elements: str
errors:
  description:
    - One entry per VM that could not be restored; its state file and manifest are kept.
  returned: when the module fails because some VMs could not be restored
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      type: str
    msg:
      description: Why, and what to do.
      type: str
  sample: [{"name": "web1", "msg": "VM web1: the new QEMU exited with status 1: ..."}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import LAUNCH_MODES, Launcher
from ansible_collections.hypervisor.cpr.plugins.module_utils._module import STATE_DIR_SPEC, run
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import RestoreOptions, restore


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            STATE_DIR_SPEC,
            names=dict(type="list", elements="str"),
            timeout=dict(type="float", default=300.0),
            keep_state=dict(type="bool", default=False),
            verify_checksum=dict(type="bool", default=True),
            launch=dict(type="str", choices=list(LAUNCH_MODES), default="argv"),
            systemd_unit=dict(type="str", default="qemu@{name}.service"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    options = RestoreOptions(timeout=params["timeout"], keep_state=params["keep_state"],
                             verify_checksum=params["verify_checksum"],
                             launcher=Launcher(params["launch"], params["systemd_unit"]))
    run(module, lambda: restore(params["state_dir"], params["names"], options, module.check_mode, params["run_id"]))


if __name__ == "__main__":
    main()
