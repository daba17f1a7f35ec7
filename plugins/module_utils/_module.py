# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The one place the engine meets AnsibleModule: shared options, their conversion, and error reporting.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import DEFAULT_URI
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection

DEFAULT_STATE_DIR = "/var/lib/qemu-cpr"

# Matches doc fragment hypervisor.cpr.vm_selection.
SELECTION_SPEC: Dict[str, Any] = dict(
    vms=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str", required=True),
            qmp_socket=dict(type="path", required=True),
            qga_socket=dict(type="path"),
        ),
    ),
    names=dict(type="list", elements="str"),
    query=dict(type="str"),
    timeout=dict(type="float", default=10.0),
)

# Matches doc fragment hypervisor.cpr.state_dir (run_lock documents its own run_id, which it requires).
STATE_DIR_SPEC: Dict[str, Any] = dict(state_dir=dict(type="path", default=DEFAULT_STATE_DIR), run_id=dict(type="str"))

# Matches doc fragment hypervisor.cpr.libvirt.
LIBVIRT_SPEC: Dict[str, Any] = dict(uri=dict(type="str", default=DEFAULT_URI))


def selection(module: AnsibleModule) -> Selection:
    """The VMs a module's options select."""
    params = module.params
    return Selection(vms=params["vms"], names=params["names"], query=params["query"])


def auto_or_bool(module: AnsibleModule, option: str) -> Optional[bool]:
    """An option that is auto, true or false: auto -> None, else a boolean (YAML may hand us either)."""
    value = module.params[option]
    if isinstance(value, str) and value.lower() == "auto":
        return None
    try:
        return boolean(value, strict=True)
    except TypeError:
        module.fail_json(msg=f"{option} must be auto, true or false, not {value!r}")
    return None


def run(module: AnsibleModule, action: Callable[[], Dict[str, Any]]) -> None:
    """Run one engine call and report its result, or its error with the VM it names; its warnings become Ansible's."""
    try:
        result = action()
    except CprError as exc:
        module.fail_json(msg=str(exc), vm=exc.vm, **exc.result)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)
