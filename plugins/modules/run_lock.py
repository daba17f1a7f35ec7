#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_lock
short_description: Take or release a hypervisor's run lock, so two runs never work on one host at once
version_added: 0.1.0
description:
  - With O(state=present), creates C(<state_dir>/.hypervisor-cpr.run), recording O(run_id), O(owner), the time and
    this process. Fails, naming the holder, when another run holds it.
  - The same O(run_id) takes a lock it already holds again, unchanged, so a run that was interrupted (between save and
    restore, say) can be run again with its run id and finish. O(force=true) takes the lock over from another run.
    Neither works while a process of the holder still works on the host (RV(lock.process)), since that run is not dead.
  - With O(state=absent), removes the lock when this O(run_id) holds it (or with O(force=true)).
  - The lock is a file, not a lock held by a process, because it must outlast the reboot in the middle of a run. Every
    change to it is made under the state directory's C(flock), so two runs never both find it free.
  - While a run holds the host, M(hypervisor.cpr.cpr_save), M(hypervisor.cpr.cpr_restore) and
    M(hypervisor.cpr.vm_power) act only when given its run id.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  state:
    description: V(present) takes the lock, V(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  state_dir:
    description:
      - The state directory of M(hypervisor.cpr.cpr_save); the lock lives there. Created with mode C(0700) if missing.
    type: path
    default: /var/lib/qemu-cpr
  run_id:
    description:
      - Identifies the run, for example the AWX job id or a time stamp taken once per playbook run.
    type: str
    required: true
  owner:
    description: Who runs it, for the message another run gets, such as V(alice@jumphost) or V(AWX job template 12).
    type: str
  details:
    description: Anything else to record in the lock, such as the playbook or the controller.
    type: dict
  force:
    description:
      - Take the lock from another run (O(state=present)), or remove it whoever holds it (O(state=absent)).
      - Only for a run that is known to be dead.
    type: bool
    default: false
attributes:
  check_mode:
    description: Tells whether the lock would be taken or released, and fails when another run holds it.
    support: full
  diff_mode:
    description: Has no diff to show.
    support: none
notes:
  - M(hypervisor.cpr.cpr_save) and M(hypervisor.cpr.cpr_restore) also hold a short lock of their own while they run;
    this one spans a whole run, reboot included.
  - The state directory is checked as for M(hypervisor.cpr.cpr_save), for taking and for releasing the lock.
seealso:
  - module: hypervisor.cpr.cpr_save
"""

EXAMPLES = r"""
- name: Take the host for this run
  hypervisor.cpr.run_lock:
    run_id: "{{ awx_job_id | default('manual') }}"
    owner: "{{ lookup('ansible.builtin.env', 'USER') }}"

- name: Give it back
  hypervisor.cpr.run_lock:
    state: absent
    run_id: "{{ awx_job_id | default('manual') }}"

- name: Take over the lock of a run that was killed
  hypervisor.cpr.run_lock:
    run_id: "{{ awx_job_id }}"
    force: true
"""

RETURN = r"""
lock_file:
  description: Path of the lock file.
  returned: always
  type: str
  sample: /var/lib/qemu-cpr/.hypervisor-cpr.run
lock:
  description: What the lock records now (V(null) after a release).
  returned: always
  type: dict
  contains:
    run_id:
      description: The run that holds the lock.
      type: str
    owner:
      description: Who runs it.
      type: str
    acquired_at:
      description: When it was taken, in seconds since the epoch.
      type: float
    host:
      description: Host name of the hypervisor.
      type: str
    process:
      description:
        - The process that last worked for the run on the host (the module that took the lock, then each
          M(hypervisor.cpr.cpr_save), M(hypervisor.cpr.cpr_restore) and M(hypervisor.cpr.vm_power) of the run).
        - While it still runs, nobody takes the lock, not even with the same O(run_id) or O(force).
      type: dict
      contains:
        pid:
          description: Its process id.
          type: int
        start_time:
          description: When it started, in clock ticks since boot (together with the pid, it tells the process apart).
          type: int
        boot_id:
          description: The boot it ran in.
          type: str
    details:
      description: The O(details) given.
      type: dict
previous:
  description: The holder the lock was taken over from, or released from; V(null) otherwise.
  returned: always
  type: dict
holder:
  description: What the lock of the run that holds the host records (as RV(lock)), when the module fails for it.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypervisor.cpr.plugins.module_utils._module import STATE_DIR_SPEC, run
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import acquire, release


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            STATE_DIR_SPEC,
            run_id=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            owner=dict(type="str"),
            details=dict(type="dict"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["state"] == "present":
        run(module, lambda: acquire(params["state_dir"], params["run_id"], owner=params["owner"], force=params["force"],
                                    details=params["details"], check_mode=module.check_mode))
    else:
        run(module, lambda: release(params["state_dir"], params["run_id"], force=params["force"],
                                    check_mode=module.check_mode))


if __name__ == "__main__":
    main()
