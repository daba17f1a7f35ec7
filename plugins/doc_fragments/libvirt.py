# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The libvirt daemon the libvirt modules talk to, and what they need on the host."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI of the host's QEMU driver.
      - A local URI may name the daemon's socket, as in V(qemu:///system?socket=/run/libvirt/libvirt-sock).
    type: str
    default: qemu:///system
requirements:
  - libvirt's daemon for QEMU (C(virtqemud) or C(libvirtd)) on the host.
  - The official Python bindings of libvirt (C(libvirt-python)) for the Python that runs the module. Installed with
    pip they are built against the host's libvirt (C(libvirt-dev), C(pkg-config) and a C compiler), so they know every
    flag of the host's libvirt. The P(hypervisor.cpr.kernel_update#role) role installs them with
    C(kernel_update_install_deps=true).
"""
