# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The state directory and the run that holds the host, for the modules that change VMs."""

    DOCUMENTATION = r"""
options:
  state_dir:
    description:
      - The state directory, where state files, manifests and the records of shut-down VMs are kept. Created with mode
        C(0700) when the module first writes to it. It must survive the reboot.
      - It holds guest memory and says what to run as root, so it is opened once and checked on the way down, and
        refused when it or any directory on its path is a symlink, or owned by or writable for another user than
        root (a sticky directory such as C(/tmp) is fine above it). It must be an absolute path below C(/).
    type: path
    default: /var/lib/qemu-cpr
  run_id:
    description:
      - The run that holds the host's run lock (M(hypervisor.cpr.run_lock)), for which this module acts.
      - While a run holds the host, the module refuses to act for any other run, or without a run id, and names
        the holder. Without a run lock on the host it acts for anyone.
      - The P(hypervisor.cpr.kernel_update#role) role sets it for every module it calls.
    type: str
notes:
  - The module works under the state directory's lock (C(.hypervisor-cpr.lock), a C(flock)), so two modules never
    change the VMs of one host at once.
"""
