# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Options that select the VMs a module works on."""

    DOCUMENTATION = r"""
options:
  vms:
    description:
      - VMs given explicitly, for QEMU processes whose command line does not name their QMP socket.
      - When set, only these VMs are considered and discovery from C(/proc) is skipped.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the VM; it names the manifest and state file too, so it must be unique.
        type: str
        required: true
      qmp_socket:
        description: Path of the VM's QMP unix socket.
        type: path
        required: true
      qga_socket:
        description:
          - Path of the unix socket of the VM's guest agent channel (C(org.qemu.guest_agent.0)).
          - Taken from the QEMU command line when omitted and the process is found.
        type: path
  names:
    description:
      - Work only on the VMs with these names (their C(-name guest=...), or the file name of the QMP socket when there is none).
      - An unknown name is an error, raised before any VM is touched.
    type: list
    elements: str
  query:
    description:
      - A L(JMESPath,https://jmespath.org/) expression applied to the list of VMs, as returned by M(hypervisor.cpr.vm_status),
        after O(names) filtered it. It must return a list of VMs, for example V([?cpr.ready && !vfio]).
      - Needs the Python library C(jmespath) on the hypervisor.
    type: str
  timeout:
    description:
      - Seconds to wait for a QMP or guest agent socket to answer, per VM.
      - For M(hypervisor.cpr.qga_suspend) it also bounds the wait for each guest to reach V(suspended) after
        C(guest-suspend-ram), or V(running) after C(system_wakeup).
    type: float
    default: 10.0
requirements:
  - qemu.qmp (Python library) on the hypervisor
  - jmespath (Python library) on the hypervisor, for O(query)
"""
